"""finetune: cross-entropy on the current task's data only; the lower bound of a comparison.

    L = CE(f(x), y)

Nothing protects earlier tasks, so in the class-IL setting it forgets almost all of them.
"""
from __future__ import annotations

import torch.nn.functional as F

from lmsrr.methods.base import Batch, StepOutput
from lmsrr.methods.common import Baseline
from lmsrr.methods.registry import register_method


@register_method("finetune")
class Finetune(Baseline):
    def loss(self, batch: Batch) -> StepOutput:
        (logits,) = self.forward_groups([batch.x_aug])
        ce = F.cross_entropy(logits, batch.y)
        return StepOutput(ce, logits, {"loss/ce": ce})
