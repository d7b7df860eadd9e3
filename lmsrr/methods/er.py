"""er: experience replay with a reservoir memory of (input, label) pairs.

    L = CE(f([x; x_buf]), [y; y_buf])

The stream batch and a batch drawn from the reservoir form one combined batch (one forward, one
mean cross-entropy), as in the ER baselines of the DER paper (Buzzega et al., NeurIPS 2020). The
memory stores un-augmented inputs; replayed inputs are augmented again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmsrr.methods.base import Batch, StepOutput
from lmsrr.methods.common import ReplayMethod
from lmsrr.methods.registry import register_method


@register_method("er")
class ER(ReplayMethod):
    def loss(self, batch: Batch) -> StepOutput:
        x, y, n = batch.x_aug, batch.y, batch.y.shape[0]
        if not self.buffer.is_empty():
            bx, by, _, _ = self.buffer.sample(self.replay_batch)
            x, y = torch.cat([x, self.stream.augment(bx)]), torch.cat([y, by])
        # The combined batch is the algorithm, so it is one group even with batch statistics.
        (logits,) = self.forward_groups([x])
        ce = F.cross_entropy(logits, y)
        return StepOutput(ce, logits[:n], {"loss/ce": ce})

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        self.buffer.add(batch.x, batch.y, task=batch.task)
