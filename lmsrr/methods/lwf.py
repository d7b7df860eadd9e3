"""lwf: learning without forgetting (Li & Hoiem, ECCV 2016), in the class-IL form of Mammoth.

    L = CE(f(x)[C_t], y) + alpha * T-softened CE( softmax(f_old(x)[C_old] / T), f(x)[C_old] / T )
    alpha = --lwf-alpha, T = --lwf-temperature

C_t: the current task's classes; C_old: the classes of earlier tasks; f_old: the network as it
was when the task began (a frozen copy of the blocks, fusion and classifier; the frozen prefixes
are shared, so the old outputs cost one extra pass of the top only). The targets are the previous
model's outputs on the same augmented inputs. No warm-up of the new head, no stored data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmsrr.fields import check, option, validate
from lmsrr.methods.base import Batch, StepOutput
from lmsrr.methods.common import Baseline, soft_cross_entropy
from lmsrr.methods.registry import register_method


@dataclass
class LwFOptions:
    alpha: float = option(1.0, "lwf: weight of the distillation from the previous model's outputs")
    temperature: float = option(2.0, "lwf: softmax temperature of the distillation")

    def __post_init__(self):
        validate(self)
        check(self.alpha >= 0, f"lwf_alpha must be >= 0, got {self.alpha}")
        check(self.temperature > 0, f"lwf_temperature must be > 0, got {self.temperature}")


@register_method("lwf")
class LwF(Baseline):
    Options = LwFOptions

    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self.alpha, self.temperature = self.options.alpha, self.options.temperature
        self.old = None

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        self.old = self.net.snapshot_top() if task > 0 and self.alpha > 0 else None

    @torch.no_grad()
    def old_logits(self, zs: list[torch.Tensor]) -> torch.Tensor:
        """The previous model's logits on prefix outputs zs (the distillation target)."""
        return self.net.logits_with(zs, self.old)

    def loss(self, batch: Batch) -> StepOutput:
        zs = self.net.prefix(batch.x_aug)
        ((_, logits),) = self.top(zs)
        lo, hi = self.stream.task_class_range(batch.task)
        terms = {"loss/ce": F.cross_entropy(logits[:, lo:hi], batch.y - lo)}
        total = terms["loss/ce"]
        if self.old is not None:
            n_old = self.stream.seen_classes(batch.task - 1)
            target = self.old_logits(zs)[:, :n_old]
            terms["loss/distill"] = soft_cross_entropy(target, logits[:, :n_old], self.temperature)
            total = total + self.alpha * terms["loss/distill"]
        return StepOutput(total, logits, terms)

    def state_dict(self) -> dict:
        return {"old": self.old.state_dict() if self.old is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.old = None
        if state["old"] is not None:
            self.old = self.net.snapshot_top()
            self.old.load_state_dict(state["old"])
