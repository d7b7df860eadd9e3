"""der: dark experience replay (Buzzega et al., NeurIPS 2020).

    L = CE(f(x), y) + alpha * MSE(f(x_buf), z_buf)          alpha = --der-alpha

The reservoir stores each stream input (un-augmented) with the logits the network produced for it
in the step that inserted it (before that step's update); replayed inputs are augmented again.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from lmsrr.fields import check, option, validate
from lmsrr.methods.base import Batch, StepOutput
from lmsrr.methods.common import ReplayMethod
from lmsrr.methods.registry import register_method


@dataclass
class DEROptions:
    alpha: float = option(0.5, "der: weight of the logit-replay MSE (the DER paper's alpha)")

    def __post_init__(self):
        validate(self)
        check(self.alpha >= 0, f"der_alpha must be >= 0, got {self.alpha}")


@register_method("der")
class DER(ReplayMethod):
    Options = DEROptions

    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self.alpha = self.options.alpha

    def loss(self, batch: Batch) -> StepOutput:
        if self.buffer.is_empty():
            (logits,) = self.forward_groups([batch.x_aug])
            ce = F.cross_entropy(logits, batch.y)
            return StepOutput(ce, logits, {"loss/ce": ce})
        bx, _, bz, _ = self.buffer.sample(self.replay_batch)
        logits, buf_logits = self.forward_groups([batch.x_aug, self.stream.augment(bx)])
        terms = {"loss/ce": F.cross_entropy(logits, batch.y),
                 "loss/replay_logits": F.mse_loss(buf_logits.float(), bz)}
        return StepOutput(terms["loss/ce"] + self.alpha * terms["loss/replay_logits"], logits, terms)

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        # out.logits come from this step's forward: the logits "seen at insertion".
        self.buffer.add(batch.x, batch.y, out.logits.detach(), batch.task)
