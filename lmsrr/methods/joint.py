"""joint: the upper bound. At task t it trains on the union of the training data of tasks 0..t.

"Joint" here means cumulative training: after each task the model has trained on everything seen
so far (continuing from its current weights, ``--epochs`` epochs over the union per task), so it
has an accuracy after every task like the other methods, and its last row is a model trained on
all tasks' data at once. Loss as finetune: L = CE(f(x), y). It costs (T + 1) / 2 times finetune's
steps over T tasks.
"""
from __future__ import annotations

import torch

from lmsrr.methods.common import num_union_batches, require_in_memory, union_batches
from lmsrr.methods.finetune import Finetune
from lmsrr.methods.registry import register_method


@register_method("joint")
class Joint(Finetune):
    @classmethod
    def check_config(cls, cfg, stream) -> None:
        require_in_memory(stream, cls.name)

    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self._union: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def union(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of tasks 0..task (built once per task, kept on the host)."""
        if self._union is None or self._union[0] != task:
            parts = [self.stream.task(k) for k in range(task + 1)]
            self._union = (task, torch.cat([p.train_x for p in parts]), torch.cat([p.train_y for p in parts]))
        return self._union[1], self._union[2]

    def train_batches(self, task: int, batch_size: int, generator: torch.Generator):
        x, y = self.union(task)
        return union_batches(x, y, batch_size, generator, self.device, self.stream.augment)

    def num_train_batches(self, task: int, batch_size: int) -> int:
        return num_union_batches(self.union(task)[0].shape[0], batch_size)
