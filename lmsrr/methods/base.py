"""The method interface the engine drives.

Per task: ``begin_task`` -> for each batch: ``loss`` (the engine backpropagates it and steps the
optimizer) -> ``after_step`` -> ... -> ``end_task``. ``predict`` gives logits for evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from lmsrr import distributed
from lmsrr.data.sampler import num_shard_batches
from lmsrr.models.net import TrainableTop


@dataclass
class Batch:
    x: torch.Tensor  # un-augmented uint8 inputs (what a replay buffer stores)
    x_aug: torch.Tensor  # augmented float inputs in [0, 1]
    y: torch.Tensor
    task: int


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor  # stream-batch logits (detached use only)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # namespaced, for logging


class ContinualMethod:
    name = "base"

    def __init__(self, cfg, net: nn.Module, stream, device: torch.device):
        self.cfg = cfg
        self.options = cfg.method.options.get(self.name)  # this method's Options (None: none)
        self.net = net
        self.stream = stream
        self.device = device
        self.task = 0
        # Training forwards through the trainable blocks, fusion and head go through
        # self.top(*groups) (see TrainableTop). The engine binds its compiled / DDP-wrapped
        # version once (bind_top), so gradients are synchronised across ranks; until then (tests,
        # tools) the plain module serves. Evaluation may use self.net.
        self.top = TrainableTop(net)
        type(self).check_config(cfg, stream)

    def bind_top(self, top: nn.Module) -> None:
        """The module the training forwards go through from now on (called once by the engine)."""
        self.top = top

    @classmethod
    def check_config(cls, cfg, stream) -> None:
        """Raise :class:`lmsrr.errors.ConfigError` (naming the flag) for a configuration or
        stream this method cannot run with. Runs in the constructor, before any training, and
        ``lmsrr-compare`` runs it for every method before the first one trains."""

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates: the network's trainable ones, then the method's own."""
        return [p for p in self.net.parameters() if p.requires_grad] + self.outside_parameters()

    @classmethod
    def gated_updates(cls, cfg) -> str | None:
        """The option that makes this configuration gate its updates per step (see
        :meth:`update_gates`), for messages, or None when it does not. The engine asks before any
        work, to refuse an update backend that cannot apply gates."""
        return None

    def update_groups(self) -> list[list[nn.Parameter]]:
        """:meth:`parameters` in the groups :meth:`update_gates` switches: group i is updated on
        a step iff gate i is nonzero. Default: one group."""
        return [self.parameters()]

    def update_gates(self) -> torch.Tensor | None:
        """Gates of the step whose :meth:`loss` was just computed: a tensor on the training
        device with one entry per :meth:`update_groups` group (0 = that group's parameters and
        optimizer state stay untouched this step), or None (every group updates). Read on the
        device by the optimizer: no host sync."""
        return None

    def outside_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters the method owns outside the network, used outside the engine's
        compiled / DDP-wrapped forward. The engine averages their gradients across ranks itself
        (DDP's reducer cannot see them) and checkpoints them with the method's state."""
        return []

    def begin_task(self, task: int) -> None:
        self.task = task

    def training_split(self, task: int):
        """(split, positions) of the samples one epoch of ``task`` trains on: the task's own by
        default; override to train on other data (joint: the union of the tasks so far; iCaRL:
        the task plus its exemplars)."""
        return self.stream.train_split(task)

    def train_batches(self, task: int, batch_size: int, generator: torch.Generator):
        """The batches of one epoch of ``task``: shuffled, augmented, this rank's share."""
        split, pos = self.training_split(task)
        return self.stream.batches_over(split, pos, batch_size, generator, self.device,
                                        distributed.rank(), distributed.world_size())

    def num_train_batches(self, task: int, batch_size: int) -> int:
        return num_shard_batches(self.training_split(task)[1].shape[0], batch_size,
                                 distributed.world_size())

    def loss(self, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def after_backward(self, batch: Batch, out: StepOutput) -> None:
        """Called between backward and the optimizer step (e.g. to project gradients)."""

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        pass

    def end_task(self, task: int) -> None:
        pass

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation. Override :meth:`predict_from_prefix` instead where possible:
        evaluation then reuses cached prefix outputs."""
        return self.predict_from_prefix(self.net.prefix(x))

    @torch.no_grad()
    def predict_from_prefix(self, zs: list[torch.Tensor]) -> torch.Tensor:
        return self.net.top(zs)[1]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
