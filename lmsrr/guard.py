"""Non-finite loss and gradient detection without a host sync per step.

Every step records, on the device, whether the loss terms and the gradients are finite; the host
looks only at log steps, before every checkpoint and at the end of each task. In fp32/bf16 the
first non-finite step stops the run (naming task, step and the offending loss term), and no
checkpoint is written after it, so the newest checkpoint on disk is the last good one. Under the
fp16 scaler a non-finite step is skipped by the scaler; only ``limit`` consecutive skips stop the
run. Before a checkpoint, :func:`first_nonfinite` also checks the state itself (a finite loss can
still leave inf weights after an optimizer step), with one host sync.
"""
from __future__ import annotations

from typing import Callable

import torch

NEVER = 2**62


class NonFiniteError(RuntimeError):
    """Training produced NaN or inf where it must not."""


class NumericsGuard:
    def __init__(self, device: torch.device, scaled: bool, limit: int, precision: str = "fp32"):
        self.device = device
        self.precision = precision
        self.scaled = scaled  # fp16 with a GradScaler: non-finite steps are skipped, not fatal
        self.limit = limit
        self.first_step = torch.full((), NEVER, dtype=torch.long, device=device)
        self.first_task = torch.zeros((), dtype=torch.long, device=device)
        self.bad_terms: dict[str, torch.Tensor] = {}
        self.consecutive = torch.zeros((), dtype=torch.long, device=device)
        self.max_consecutive = torch.zeros((), dtype=torch.long, device=device)

    def record(self, step: int, task: int, terms: dict[str, torch.Tensor], grads: list[torch.Tensor]):
        flags = {k: ~torch.isfinite(v.detach()).all() for k, v in terms.items() if v.is_floating_point()}
        if grads:
            norms = torch._foreach_norm(grads)
            flags["gradients"] = ~torch.isfinite(torch.stack(norms)).all()
        bad = torch.stack(list(flags.values())).any()
        if self.scaled:
            self.consecutive = torch.where(bad, self.consecutive + 1, torch.zeros_like(self.consecutive))
            self.max_consecutive = torch.maximum(self.max_consecutive, self.consecutive)
            return
        first = bad & (self.first_step == NEVER)
        self.first_step = torch.where(first, torch.full_like(self.first_step, step), self.first_step)
        self.first_task = torch.where(first, torch.full_like(self.first_task, task), self.first_task)
        for k, f in flags.items():
            prev = self.bad_terms.get(k, torch.zeros((), dtype=torch.bool, device=self.device))
            self.bad_terms[k] = torch.where(first, f, prev)

    def advice(self) -> str:
        """What to try after a non-finite value, fitting this run's precision."""
        if self.precision == "fp32":
            return "Lower --lr, or check the data."
        return "Lower --lr, use --precision fp32, or check the data."

    def check(self, where: str = "", newest: Callable[[], str] | None = None) -> None:
        """Host sync: raise :class:`NonFiniteError` if the run must stop. ``newest()`` describes
        the newest checkpoint on disk (asked only when there is an error to report)."""
        if self.scaled:
            n = int(self.max_consecutive)
            if n >= self.limit:
                raise NonFiniteError(
                    f"{n} consecutive fp16 steps had non-finite gradients or loss (limit "
                    f"--max-nonfinite-steps {self.limit}){where}; the scaler could not recover. "
                    f"Try --precision bf16 or a lower --lr."
                )
            return
        step = int(self.first_step)
        if step == NEVER:
            return
        terms = [k for k, f in self.bad_terms.items() if bool(f)] or ["unknown"]
        on_disk = f"; {newest()}" if newest is not None else ""
        raise NonFiniteError(
            f"non-finite value in {', '.join(terms)} at task {int(self.first_task) + 1}, step {step}"
            f"{where}. Training stopped{on_disk}. {self.advice()}"
        )


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding inf or NaN, or None. One flag per tensor is computed
    on its device and the flags are read back together: one host sync per device."""
    flags: dict[torch.device, list[torch.Tensor]] = {}
    order: dict[torch.device, list[str]] = {}
    for name, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            flags.setdefault(t.device, []).append(~torch.isfinite(t.detach()).all())
            order.setdefault(t.device, []).append(name)
    bad = []
    for device, fs in flags.items():
        hits = torch.stack(fs).cpu()  # the host sync
        bad += [order[device][i] for i in hits.nonzero().flatten().tolist()]
    if not bad:
        return None
    names = list(tensors)
    return min(bad, key=names.index)
