"""nmc: nearest class mean on the frozen network's fused features; nothing is trained.

At each task's end the mean fused feature of each of its classes is computed over the class's
(un-augmented) training images; prediction is the class whose mean is nearest in Euclidean
distance. The sources, the fusion and the classifier keep their initial (pre-trained) weights,
so no task can interfere with another: this is the simple pre-trained baseline (Janson et al.,
2022: 83.7% on 10-task Split CIFAR-100 with one ViT-B/16). Training flags (--epochs, --lr,
--buffer-size, ...) do not apply; the engine runs no steps for it.
"""
from __future__ import annotations

import torch

from lmsrr import distributed
from lmsrr.methods.common import Baseline, encode
from lmsrr.methods.registry import register_method


@register_method("nmc")
class NMC(Baseline):
    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self.eval_batch = cfg.data.eval_batch_size
        dim = net.classifier.in_features
        self.sums = torch.zeros(stream.n_classes, dim, dtype=torch.float64, device=device)
        self.counts = torch.zeros(stream.n_classes, dtype=torch.float64, device=device)
        self.means: torch.Tensor | None = None
        self.has_mean = torch.zeros(stream.n_classes, dtype=torch.bool, device=device)

    def train_batches(self, task: int, batch_size: int, generator: torch.Generator):
        return iter(())

    def num_train_batches(self, task: int, batch_size: int) -> int:
        return 0

    def end_task(self, task: int) -> None:
        # Each DDP rank encodes its share of the task; the sums are added up across ranks.
        images = self.stream.train_images(task, self.eval_batch, self.device, distributed.rank(),
                                          distributed.world_size())
        feats, y = encode(self.net, images)
        feats = feats.double()
        sums = torch.zeros_like(self.sums).index_add_(0, y, feats)
        counts = torch.zeros_like(self.counts).index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        self.sums += distributed.all_reduce_sum_(sums)
        self.counts += distributed.all_reduce_sum_(counts)
        self.has_mean = self.counts > 0
        self.means = (self.sums / self.counts.clamp_min(1).unsqueeze(1)).float()

    @torch.no_grad()
    def predict_from_prefix(self, zs: list[torch.Tensor]) -> torch.Tensor:
        """Minus the squared Euclidean distance to each class mean; -inf for classes not seen."""
        f = self.net.fused(self.net.top_hiddens(zs)).float()
        if self.means is None:
            return torch.full((f.shape[0], self.stream.n_classes), float("-inf"), device=f.device)
        d = torch.cdist(f, self.means).square()
        return (-d).masked_fill(~self.has_mean, float("-inf"))

    def state_dict(self) -> dict:
        return {"sums": self.sums, "counts": self.counts}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.counts.copy_(state["counts"])
        self.has_mean = self.counts > 0
        self.means = (self.sums / self.counts.clamp_min(1).unsqueeze(1)).float()
