"""agem: averaged gradient episodic memory (Chaudhry et al., ICLR 2019).

    g     = grad CE(f(x), y)                                  (the engine's backward)
    g_ref = grad CE(f(x_mem), y_mem)                          (a batch from the memory)
    g'    = g - (g . g_ref / g_ref . g_ref) g_ref   if g . g_ref < 0,   else g

The update never increases the memory loss to first order. The memory holds only earlier tasks,
as in the paper: at a task's end its (un-augmented) training data passes through a reservoir of
--buffer-size slots (so every earlier sample is kept with the same probability); the reference
batch (--replay-batch-size, augmented again) is drawn from it. Under DDP the reference gradient is
averaged over the ranks like g itself, so every rank applies the same projection.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmsrr import distributed
from lmsrr.methods.base import Batch, StepOutput
from lmsrr.methods.common import ReplayMethod
from lmsrr.methods.finetune import Finetune
from lmsrr.methods.registry import register_method


def project(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> list[torch.Tensor]:
    """A-GEM's projection of the gradient ``grads`` against ``ref`` (lists of matching tensors),
    computed on the device without a host sync."""
    dot = sum((g.float() * r.float()).sum() for g, r in zip(grads, ref))
    ref_sq = sum(r.float().square().sum() for r in ref)
    coef = torch.where(dot < 0, dot / ref_sq.clamp_min(torch.finfo(torch.float32).tiny),
                       torch.zeros_like(dot))
    return [g - (coef * r.float()).to(g.dtype) for g, r in zip(grads, ref)]


@register_method("agem")
class AGEM(ReplayMethod, Finetune):  # finetune's loss; the memory only steers the gradient
    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self._params = self.parameters()

    def reference_gradient(self) -> list[torch.Tensor]:
        x, y, _, _ = self.buffer.sample(self.replay_batch)
        # The network directly, not the engine's DDP wrapper: this backward must not trigger
        # DDP's gradient reduction (the gradients of the step are already reduced).
        loss = F.cross_entropy(self.net(self.stream.augment(x)), y)
        ref = torch.autograd.grad(loss, self._params, allow_unused=True)
        ref = [torch.zeros_like(p) if r is None else r for p, r in zip(self._params, ref)]
        if distributed.is_initialized():
            for r in ref:
                distributed.all_reduce_sum_(r).div_(distributed.world_size())
        return ref

    def after_backward(self, batch: Batch, out: StepOutput) -> None:
        if self.buffer.is_empty():
            return
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self._params]
        for p, g in zip(self._params, project(grads, self.reference_gradient())):
            p.grad = g

    def end_task(self, task: int) -> None:
        # Under DDP each rank's reservoir takes its own share of the task (as the stream shards).
        for x, y in self.stream.train_images(task, self.cfg.data.eval_batch_size, self.device,
                                             distributed.rank(), distributed.world_size()):
            self.buffer.add(x, y, task=task)
