"""LMSRR: CE + alpha * ARO-weighted multi-level distillation + beta * logit replay.

    L = CE(f(x), y)
      + alpha * sum_{s,l} p_{s,l} MSE(h_old_{s,l}(x), h_{s,l}(x)) / sum_{s,l} p_{s,l}   (task > 0)
      + beta  * MSE(f(x_buf), z_buf)                                                   (buffer non-empty)

The released code computes this with four forward passes (net for logits, net again for features,
the whole old net, net on the buffer). This computes the same loss with one pass of the frozen
prefixes (shared by the current and the old blocks), logits and features from one forward, and
stream and replay inputs in a single batch when no trainable layer keeps batch statistics.

With ``--aro-gate updates`` the switch's hard sample also gates the optimizer: block (s, l) is
updated on a step iff p_{s,l} = 1 (:meth:`LMSRR.update_groups`, :meth:`LMSRR.update_gates`; the
README gives the exact definition of the gate and its straight-through gradient).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels.distill
from lmsrr.buffer import make_buffer
from lmsrr.fields import check, option, validate
from lmsrr.methods.base import Batch, ContinualMethod, StepOutput
from lmsrr.methods.registry import register_method
from lmsrr.models.aro import SwitchVector


@dataclass
class LMSRROptions:
    alpha: float = option(0.3, "weight of the ARO-weighted multi-level distillation term", flag="--alpha")
    beta: float = option(0.5, "weight of the logit-replay (DER) term", flag="--beta")
    tau: float = option(0.1, "Gumbel-softmax temperature of the ARO switch vector", flag="--tau")
    hard_switch: bool = option(False, "use straight-through hard Gumbel samples for the switch vector",
                               flag="--hard-switch")
    aro_gate: str = option(
        "loss", "what the ARO switch controls: 'loss' (the released code: it weights the per-layer "
        "distillation only) or 'updates' (the paper's layerwise updating: from the second task on, "
        "each step's hard switch sample also decides which trainable blocks the optimizer updates; "
        "implies --hard-switch; needs --update-backend torch, triton or auto)",
        flag="--aro-gate", choices=("loss", "updates"))

    def __post_init__(self):
        validate(self)
        check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        # the switch learns only through the distillation weights: without them the gates would
        # stay random coin flips
        check(self.aro_gate == "loss" or self.alpha > 0,
              "--aro-gate updates needs --alpha > 0: the switch vector learns only through the "
              "distillation term")
        check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        check(self.tau > 0, f"tau must be > 0, got {self.tau}")
        # (theta + g) / tau must stay finite in float32 for the softmax over the two logits.
        check(1e-4 <= self.tau <= 1e4, f"tau must be in [1e-4, 1e4], got {self.tau}")


@register_method("lmsrr")
class LMSRR(ContinualMethod):
    Options = LMSRROptions

    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        opts = self.options
        # The ARO switch vector: one gate per (source, trainable level). It weights the
        # distillation, which the engine computes outside the compiled top, so it lives here and
        # not in the network. Drawn first, right after the network (its initial values depend on
        # the random stream's position).
        n_levels = [len(s.blocks) for s in net.sources]  # --trainable-blocks may differ per source
        self.gated = opts.aro_gate == "updates"
        self.switch = SwitchVector(len(net.sources), n_levels, tau=opts.tau,
                                   hard=opts.hard_switch or self.gated).to(device)
        self._gates = None
        if self.gated:
            # Every rank must draw the same gates, or their weights drift apart: the switch's
            # noise comes from a generator seeded alike on all ranks (the global one is seeded
            # per rank for augmentation and replay), saved with the method's state for resume.
            self.gate_noise = torch.Generator(device=device).manual_seed(cfg.runtime.seed)
            self._always_on = torch.ones(1, device=device)
        self.alpha, self.beta = opts.alpha, opts.beta
        self.replay_batch = cfg.method.replay_batch_size
        size = cfg.method.buffer_size
        self.buffer = make_buffer(size, stream, device, self.name) if size > 0 else None
        self.old_blocks = None

    def outside_parameters(self) -> list[nn.Parameter]:
        return list(self.switch.parameters())

    @classmethod
    def gated_updates(cls, cfg) -> str | None:
        return "--aro-gate updates" if cfg.method.options[cls.name].aro_gate == "updates" else None

    def update_groups(self) -> list[list[nn.Parameter]]:
        """Without gating, one group. With ``--aro-gate updates``: one group per (source,
        trainable block), in the switch's order, then everything that always updates (fusion,
        classifier, the switch). Called at every task start, after :meth:`begin_task`."""
        net = [p for p in self.net.parameters() if p.requires_grad]
        # The switch has a gradient only where the distillation is on (from the second task on).
        # torch.optim skips a parameter without a gradient; the masked update would apply weight
        # decay to it as to a zero gradient. Leaving it out of a task it cannot learn in keeps
        # every backend's step the same.
        switch = self.outside_parameters() if self.old_blocks is not None else []
        if not self.gated:
            return [net + switch]
        blocks = [[p for p in b.parameters() if p.requires_grad] for s in self.net.sources for b in s.blocks]
        gated = {id(p) for ps in blocks for p in ps}
        return blocks + [[p for p in net if id(p) not in gated] + switch]

    def update_gates(self) -> torch.Tensor | None:
        return self._gates

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        if task == 0 or self.alpha == 0:
            self.old_blocks = None
        elif self.old_blocks is None:
            # Only the trainable blocks can drift, so the old model is just their snapshot.
            self.old_blocks = self.net.snapshot_blocks()
        else:  # refresh in place: same modules, same memory, nothing to recompile
            for old, src in zip(self.old_blocks, self.net.sources):
                for b_old, b in zip(old, src.blocks):
                    b_old.load_state_dict(b.state_dict())

    def _replay_inputs(self):
        if self.buffer is None or self.buffer.is_empty() or self.beta == 0:
            return None
        x, _, z, _ = self.buffer.sample(self.replay_batch)
        return self.stream.augment(x), z

    def loss(self, batch: Batch, noise: torch.Tensor | None = None) -> StepOutput:
        """``noise``: Gumbel noise for the switch vector (sampled when None; tests pass it)."""
        net, x, y = self.net, batch.x_aug, batch.y
        self._gates = None  # every group updates unless the switch decides below
        replay = self._replay_inputs()
        n = x.shape[0]
        shared = replay is not None and not net.has_batch_stats
        zs = net.prefix(torch.cat([x, replay[0]]) if shared else x)
        groups = [zs] if replay is None or shared else [zs, net.prefix(replay[0])]
        outs = self.top(*groups)
        hs, logits_all = outs[0]
        logits = logits_all[:n]
        terms = {"loss/ce": F.cross_entropy(logits, y)}
        total = terms["loss/ce"]

        if self.old_blocks is not None:
            z_stream = [z[:n] for z in zs] if shared else zs
            with torch.no_grad():
                old_hs = net.top_hiddens(z_stream, self.old_blocks)
            if self.gated and noise is None:
                noise = self.switch.sample_noise(self.gate_noise)
            p = self.switch(noise).flatten()
            if self.gated:
                # hard sample (0/1): layer (s, l) updates this step iff p_{s,l} = 1; the
                # distillation uses the same p, whose straight-through gradient trains the switch
                self._gates = torch.cat([p.detach(), self._always_on])
            cur = [h[:n] if shared else h for hs_s in hs for h in hs_s]
            old = [h for hs_s in old_hs for h in hs_s]
            terms["loss/distill"] = kernels.distill.distill_loss(old, cur, p)
            terms["aro/p_mean"] = p.detach().mean()
            total = total + self.alpha * terms["loss/distill"]

        if replay is not None:
            buf_logits = logits_all[n:] if shared else outs[1][1]
            terms["loss/replay"] = F.mse_loss(buf_logits, replay[1])
            total = total + self.beta * terms["loss/replay"]
        return StepOutput(total, logits, terms)

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        if self.buffer is not None:
            self.buffer.add(batch.x, batch.y, out.logits.detach(), batch.task)

    def state_dict(self) -> dict:
        return {"switch": self.switch.state_dict(),
                "buffer": self.buffer.state_dict() if self.buffer else None,
                "old_blocks": self.old_blocks.state_dict() if self.old_blocks is not None else None,
                "gate_noise": self.gate_noise.get_state() if self.gated else None}

    def load_state_dict(self, state: dict) -> None:
        self.switch.load_state_dict(state["switch"])
        if self.gated and state.get("gate_noise") is not None:
            self.gate_noise.set_state(state["gate_noise"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        if state["old_blocks"] is None:
            self.old_blocks = None
        else:
            if self.old_blocks is None:
                self.old_blocks = self.net.snapshot_blocks()
            self.old_blocks.load_state_dict(state["old_blocks"])
