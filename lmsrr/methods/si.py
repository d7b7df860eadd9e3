"""si: synaptic intelligence (Zenke, Poole & Ganguli, ICML 2017).

    L = CE(f(x), y) + c * sum_i Omega_i (theta_i - theta*_i)^2               c = --si-c

During a task every step adds its share of the path integral of the loss,
    w_i += -g_i * (theta_i(after step) - theta_i(before step)),
g being the gradient the step used. At the task's end the importance grows by
    Omega_i += w_i / ((Delta theta_i)^2 + xi),     Delta theta = theta(end) - theta(start),
xi = --si-xi; then w is reset and theta* becomes the current parameters. All of it stays on the
device (no host syncs). Under DDP g is the already averaged gradient, identical on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmsrr.fields import check, option, validate
from lmsrr.methods.base import Batch, StepOutput
from lmsrr.methods.finetune import Finetune
from lmsrr.methods.registry import register_method


@dataclass
class SIOptions:
    c: float = option(5.0, "si: weight c of the penalty c * sum Omega (theta - theta*)^2; plain SGD "
                      "diverges once 2 * lr * c * max Omega exceeds 2")
    xi: float = option(1.0, "si: damping xi of the importance Omega = w / ((delta theta)^2 + xi)")

    def __post_init__(self):
        validate(self)
        check(self.c >= 0, f"si_c must be >= 0, got {self.c}")
        check(self.xi > 0, f"si_xi must be > 0, got {self.xi}")


@register_method("si")
class SI(Finetune):
    Options = SIOptions

    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self.c, self.xi = self.options.c, self.options.xi
        self._params = self.parameters()
        self.omega = [torch.zeros_like(p) for p in self._params]
        self.w = [torch.zeros_like(p) for p in self._params]
        self.anchor: list[torch.Tensor] | None = None  # theta* (None: no task finished yet)
        self.start: list[torch.Tensor] = []
        self.before: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        self.start = [p.detach().clone() for p in self._params]
        self.before = [p.detach().clone() for p in self._params]
        for w in self.w:
            w.zero_()

    def penalty(self) -> torch.Tensor:
        if self.anchor is None:
            return torch.zeros((), device=self.device)
        return sum((o * (p - a).square()).sum() for o, p, a in zip(self.omega, self._params, self.anchor))

    def loss(self, batch: Batch) -> StepOutput:
        out = super().loss(batch)
        if self.anchor is None:
            return out
        out.terms["loss/si"] = self.penalty()
        out.loss = out.loss + self.c * out.terms["loss/si"]
        return out

    @torch.no_grad()
    def after_backward(self, batch: Batch, out: StepOutput) -> None:
        # A non-finite gradient means the engine's fp16 scaler skips this step (delta = 0); zero
        # it so that inf * 0 does not poison w.
        self.grads = [torch.zeros_like(p) if p.grad is None
                      else torch.nan_to_num(p.grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
                      for p in self._params]

    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput) -> None:
        now = [p.detach() for p in self._params]
        delta = torch._foreach_sub(now, self.before)
        torch._foreach_mul_(delta, self.grads)
        torch._foreach_sub_(self.w, delta)  # w -= g * delta
        torch._foreach_copy_(self.before, now)

    @torch.no_grad()
    def end_task(self, task: int) -> None:
        for o, w, p, s in zip(self.omega, self.w, self._params, self.start):
            o.add_(w / ((p.detach() - s).square() + self.xi))
        self.anchor = [p.detach().clone() for p in self._params]

    def state_dict(self) -> dict:
        return {"omega": self.omega, "anchor": self.anchor, "w": self.w, "start": self.start,
                "before": self.before}

    def load_state_dict(self, state: dict) -> None:
        # Checkpoints load on the CPU; every list is this method's device-resident state.
        for k in ("omega", "anchor", "w", "start", "before"):
            v = state[k]
            setattr(self, k, None if v is None else [t.to(self.device) for t in v])
