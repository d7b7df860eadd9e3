"""A continual stream: whole-dataset tensors split into tasks by class.

Images are kept as uint8 tensors (N, C, H, W) at their native resolution; each source resizes and
normalises them itself (:mod:`lmsrr.models.source`), so the replay buffer stores small native
images and augmentation runs batched on the training device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from lmsrr.data.augment import Augment


@dataclass
class TaskData:
    task: int
    classes: list[int]  # the (remapped) labels of this task
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor


def class_permutation(n_classes: int, class_order: str) -> torch.Tensor:
    """order[i] = original class that becomes label i. 'natural' keeps the dataset's order."""
    if class_order == "natural":
        return torch.arange(n_classes)
    seed = int(class_order.split(":", 1)[1])
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_classes, generator=g)


class ContinualStream:
    """Class-incremental stream over in-memory tensors.

    Labels are remapped so that task t owns labels t*c .. (t+1)*c - 1 in the chosen class order;
    the classifier therefore grows left to right, as in the released code.
    """

    setting = "class-il"

    def __init__(
        self,
        name: str,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        test_x: torch.Tensor,
        test_y: torch.Tensor,
        n_tasks: int,
        classes_per_task: int,
        augment: Augment,
        class_order: str = "natural",
    ):
        n_classes = n_tasks * classes_per_task
        found = int(train_y.max()) + 1
        if found != n_classes:
            raise ValueError(f"{name}: expected {n_classes} classes, the data has {found}")
        self.name = name
        self.n_tasks = n_tasks
        self.classes_per_task = classes_per_task
        self.n_classes = n_classes
        self.augment = augment
        self.order = class_permutation(n_classes, class_order)
        # label_of[original] = new label
        label_of = torch.empty(n_classes, dtype=torch.long)
        label_of[self.order] = torch.arange(n_classes)
        self._train = (train_x, label_of[train_y.long()])
        self._test = (test_x, label_of[test_y.long()])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._train[0].shape[1:])

    def task_classes(self, t: int) -> list[int]:
        lo, hi = self.task_class_range(t)
        return list(range(lo, hi))

    def task_class_range(self, t: int) -> tuple[int, int]:
        """[lo, hi): the labels a task-IL prediction for task t chooses among."""
        c = self.classes_per_task
        return t * c, (t + 1) * c

    def seen_classes(self, t: int) -> int:
        """Number of labels seen after training task t (the class-IL output range)."""
        return (t + 1) * self.classes_per_task

    def task(self, t: int) -> TaskData:
        if not 0 <= t < self.n_tasks:
            raise IndexError(f"{self.name} has tasks 0..{self.n_tasks - 1}, asked for {t}")
        lo, hi = t * self.classes_per_task, (t + 1) * self.classes_per_task
        tr = (self._train[1] >= lo) & (self._train[1] < hi)
        te = (self._test[1] >= lo) & (self._test[1] < hi)
        return TaskData(
            task=t,
            classes=list(range(lo, hi)),
            train_x=self._train[0][tr],
            train_y=self._train[1][tr],
            test_x=self._test[0][te],
            test_y=self._test[1][te],
        )

    def train_batches(self, t: int, batch_size: int, generator: torch.Generator,
                      device: torch.device, shard_id: int = 0, num_shards: int = 1
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch of task t's training data: shuffled (x, x_aug, y) batches on ``device``.

        x: un-augmented uint8 images (what a replay buffer stores); x_aug: ``augment(x)``.
        With ``num_shards`` > 1 (DDP) every rank draws the same permutation (same generator
        state) and takes every num_shards-th sample; the permutation is padded by wrapping around
        so all ranks run the same number of steps (as torch's DistributedSampler does).
        """
        data = self.task(t)
        x, y = data.train_x.to(device), data.train_y.to(device)
        perm = shard_indices(torch.randperm(x.shape[0], generator=generator), shard_id, num_shards)
        perm = perm.to(device)
        for s in range(0, perm.shape[0], batch_size):
            idx = perm[s : s + batch_size]
            xb = x[idx]
            yield xb, self.augment(xb), y[idx]

    def num_train_batches(self, t: int, batch_size: int, num_shards: int = 1) -> int:
        n = int((self._train[1] // self.classes_per_task == t).sum())
        return -(-(-(-n // num_shards)) // batch_size)

    def test_batches(self, t: int, batch_size: int, device: torch.device, shard_id: int = 0,
                     num_shards: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Task t's test split in order (this shard's every num_shards-th sample, no padding, so
        counts summed over shards cover each test sample exactly once)."""
        data = self.task(t)
        tx, ty = data.test_x[shard_id::num_shards], data.test_y[shard_id::num_shards]
        for s in range(0, tx.shape[0], batch_size):
            yield (tx[s : s + batch_size].to(device, non_blocking=True),
                   ty[s : s + batch_size].to(device, non_blocking=True))


def shard_indices(perm: torch.Tensor, shard_id: int, num_shards: int) -> torch.Tensor:
    """This shard's part of a permutation, padded by wrap-around to equal length on every shard."""
    if num_shards == 1:
        return perm
    per_shard = -(-perm.shape[0] // num_shards)
    padded = perm.repeat(-(-per_shard * num_shards // perm.shape[0]))[: per_shard * num_shards]
    return padded[shard_id::num_shards]
