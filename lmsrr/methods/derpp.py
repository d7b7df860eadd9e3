"""derpp: DER++ (Buzzega et al., NeurIPS 2020): DER plus replayed labels.

    L = CE(f(x), y) + alpha * MSE(f(x'), z') + beta * CE(f(x''), y'')
    alpha = --derpp-alpha, beta = --derpp-beta

(x', z') and (x'', y'') are two independent draws from the same reservoir, which stores each input
with its label and the logits of the step that inserted it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from lmsrr.fields import check, option, validate
from lmsrr.methods.base import Batch, StepOutput
from lmsrr.methods.der import DER
from lmsrr.methods.registry import register_method


@dataclass
class DERppOptions:
    alpha: float = option(0.5, "derpp: weight of the logit-replay MSE (the DER++ paper's alpha)")
    beta: float = option(0.5, "derpp: weight of the label-replay cross-entropy (the DER++ paper's beta)")

    def __post_init__(self):
        validate(self)
        check(self.alpha >= 0, f"derpp_alpha must be >= 0, got {self.alpha}")
        check(self.beta >= 0, f"derpp_beta must be >= 0, got {self.beta}")


@register_method("derpp")
class DERpp(DER):
    Options = DERppOptions

    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self.alpha, self.beta = self.options.alpha, self.options.beta

    def loss(self, batch: Batch) -> StepOutput:
        if self.buffer.is_empty():
            return super().loss(batch)
        x1, _, z1, _ = self.buffer.sample(self.replay_batch)
        x2, y2, _, _ = self.buffer.sample(self.replay_batch)
        aug = self.stream.augment
        logits, logits1, logits2 = self.forward_groups([batch.x_aug, aug(x1), aug(x2)])
        terms = {"loss/ce": F.cross_entropy(logits, batch.y),
                 "loss/replay_logits": F.mse_loss(logits1.float(), z1),
                 "loss/replay_labels": F.cross_entropy(logits2, y2)}
        total = (terms["loss/ce"] + self.alpha * terms["loss/replay_logits"]
                 + self.beta * terms["loss/replay_labels"])
        return StepOutput(total, logits, terms)
