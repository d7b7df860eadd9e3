"""What the baseline methods share: their parameters, one training forward for several input
groups, replay memories with clear start-up errors, feature encoding.

Every baseline runs on the same network as LMSRR (sources, MSIDF fusion, classifier), so a
comparison differs only in the method.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmsrr.buffer import ReservoirBuffer, make_buffer
from lmsrr.data.augment import to_float
from lmsrr.errors import ConfigError
from lmsrr.methods.base import ContinualMethod


def require_buffer(cfg, method: str) -> None:
    if cfg.method.buffer_size < 1:
        raise ConfigError(f"method {method!r} needs a replay memory: --buffer-size must be >= 1 "
                          f"(got {cfg.method.buffer_size})")


def replay_buffer(cfg, stream, device, method: str) -> ReservoirBuffer:
    """This rank's reservoir (``--buffer-size`` slots split across DDP ranks)."""
    require_buffer(cfg, method)
    return make_buffer(cfg.method.buffer_size, stream, device, method)


def require_class_il(stream, method: str) -> None:
    setting = getattr(stream, "setting", "class-il")
    if setting != "class-il":
        raise ConfigError(f"method {method!r} is defined for class-incremental streams only; "
                          f"stream {stream.name!r} is {setting}")


def soft_cross_entropy(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """-mean_b sum_c softmax(target/T)_c * log_softmax(logits/T)_c (KL plus a constant)."""
    target = torch.softmax(target_logits.float() / temperature, dim=1)
    return -(target * F.log_softmax(logits.float() / temperature, dim=1)).sum(1).mean()


@contextlib.contextmanager
def eval_mode(net: nn.Module):
    """Evaluation mode (fixed dropout / batch statistics) for task-end passes, then restored."""
    was = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was)


@torch.no_grad()
def encode(net, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused features (N, D) in float32 and labels (N,) of un-augmented ``(uint8 x, y)`` batches
    (e.g. ``stream.train_images(...)``), in eval mode."""
    feats, labels = [], []
    with eval_mode(net):
        for x, y in batches:
            feats.append(net.fused_features(to_float(x)).float())
            labels.append(y)
    if not feats:
        device = next(net.parameters()).device
        return (torch.zeros(0, net.classifier.in_features, device=device),
                torch.zeros(0, dtype=torch.long, device=device))
    return torch.cat(feats), torch.cat(labels)


class Baseline(ContinualMethod):
    """A method on LMSRR's network that trains its blocks, fusion and classifier."""
    def forward_groups(self, groups: list[torch.Tensor]) -> list[torch.Tensor]:
        """Training logits of each input group, through the engine's (compiled / DDP) top in one
        call. The groups share one forward when no trainable layer keeps batch statistics (the
        logits then equal separate forwards); otherwise each group gets its own statistics."""
        net = self.net
        if len(groups) > 1 and not net.has_batch_stats:
            ((_, logits),) = self.top(net.prefix(torch.cat(groups)))
            return list(logits.split([g.shape[0] for g in groups]))
        return [logits for _, logits in self.top(*[net.prefix(g) for g in groups])]


class ReplayMethod(Baseline):
    """A baseline with a reservoir memory (``--buffer-size`` slots, required), checkpointed with
    the run; subclasses decide what goes in and how it is replayed."""

    @classmethod
    def check_config(cls, cfg, stream) -> None:
        require_buffer(cfg, cls.name)

    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self.buffer = replay_buffer(cfg, stream, device, self.name)
        self.replay_batch = cfg.method.replay_batch_size

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
