"""A continual stream: a labelled dataset split into tasks, and the batches of each task.

Images live either in memory (:class:`~lmsrr.data.splits.TensorSplit`: uint8 (N, C, H, W) at native resolution:
digits, CIFAR, MNIST, TinyImageNet) or on disk (:class:`~lmsrr.data.splits.FileSplit`: ImageNet-R, CUB-200,
Cars-196), decoded per batch to a fixed ``size`` x ``size`` view. Either way a training batch is
``(x, x_aug, y)``: x the un-augmented uint8 images (what a replay buffer stores, fixed size),
x_aug the augmented float images in [0, 1] that the model takes (each source then resizes and
normalises them itself, :mod:`lmsrr.models.source`).

The stream decides *what* goes into each batch (:mod:`lmsrr.data.sampler`: seeded permutation per
epoch, sharding by rank, augmentation parameters drawn from the same generator); a loader
(:mod:`lmsrr.data.loaders`: torch or DALI) decides *how* it is produced. Both loaders therefore
give the same batches.
"""
from __future__ import annotations

import logging
from typing import Iterator

import torch

from lmsrr.data.augment import Augment, CropAugment, ResizedCropAugment, to_float
from lmsrr.data.loaders import make_loader
from lmsrr.data.sampler import eval_shard, num_shard_batches, shard_batches
from lmsrr.data.splits import BatchPlan, FileSplit, TaskData, TensorSplit

log = logging.getLogger("lmsrr.data")


def class_permutation(n_classes: int, class_order: str) -> torch.Tensor:
    """order[i] = original class that becomes label i. 'natural' keeps the dataset's order."""
    if class_order == "natural":
        return torch.arange(n_classes)
    seed = int(class_order.split(":", 1)[1])
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_classes, generator=g)


class ContinualStream:
    """Class-incremental stream. Labels are remapped so that task t owns labels
    t*c .. (t+1)*c - 1 in the chosen class order; the classifier grows left to right, as in the
    released code. Construct with tensors (in-memory) or with :class:`FileSplit` s via
    :meth:`from_splits`."""

    setting = "class-il"

    def __init__(self, name: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, n_tasks: int, classes_per_task: int, augment,
                 class_order: str = "natural", loader: str = "torch", workers: int = 0):
        self._setup(name, TensorSplit(train_x, train_y), TensorSplit(test_x, test_y), n_tasks,
                    classes_per_task, augment, class_order, loader, workers)

    @classmethod
    def from_splits(cls, name: str, train, test, n_tasks: int, classes_per_task: int, augment,
                    class_order: str = "natural", loader: str = "torch", workers: int = 0):
        self = cls.__new__(cls)
        self._setup(name, train, test, n_tasks, classes_per_task, augment, class_order, loader, workers)
        return self

    def _setup(self, name, train, test, n_tasks, classes_per_task, augment, class_order, loader, workers):
        n_classes = n_tasks * classes_per_task
        found = int(train.y.max()) + 1 if len(train) else 0
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
        train.y, test.y = label_of[train.y.long()], label_of[test.y.long()]
        self._train, self._test = train, test
        self.loader = make_loader(loader, workers)
        self.skipped_files: list[str] = []  # unreadable images left out (file datasets)
        # The sources' input stage under --pipeline released (lmsrr.inputs); None: each source's own.
        self.input_transform = None

    # ------------------------------------------------------------------ task bookkeeping
    @property
    def image_shape(self) -> tuple[int, int, int]:
        if isinstance(self._train, FileSplit):
            return (3, self._train.size, self._train.size)
        return tuple(self._train.x.shape[1:])

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

    def _check_task(self, t: int) -> None:
        if not 0 <= t < self.n_tasks:
            raise IndexError(f"{self.name} has tasks 0..{self.n_tasks - 1}, asked for {t}")

    def train_split(self, t: int):
        """(split, positions of task t's samples in it)."""
        self._check_task(t)
        return self._train, self._positions(self._train.y, t)

    def test_split(self, t: int):
        self._check_task(t)
        return self._test, self._positions(self._test.y, t)

    def _positions(self, y: torch.Tensor, t: int) -> torch.Tensor:
        lo, hi = self.task_class_range(t)
        return torch.nonzero((y >= lo) & (y < hi)).flatten()

    def task(self, t: int) -> TaskData:
        """Task t's in-memory data (in-memory streams only)."""
        (tr, ptr), (te, pte) = self.train_split(t), self.test_split(t)
        if isinstance(tr, FileSplit):
            raise TypeError(f"{self.name} reads images from disk; use train_batches / test_batches")
        return TaskData(task=t, classes=self.task_classes(t), train_x=tr.x[ptr], train_y=tr.y[ptr],
                        test_x=te.x[pte], test_y=te.y[pte])

    # ------------------------------------------------------------------ batches
    # Every batch is drawn from a (split, positions) pair: one task's training or test samples
    # (train_split / test_split), the union of several tasks' (union_train_split: joint) or a
    # task's samples plus stored exemplars (iCaRL). In-memory and file streams work the same way.
    def union_train_split(self, tasks) -> tuple[object, torch.Tensor]:
        """(split, positions) of the training samples of all ``tasks`` together."""
        tasks = list(tasks)
        splits = [self.train_split(t) for t in tasks]
        return splits[0][0], torch.cat([pos for _, pos in splits])

    def epoch_plan(self, split, pos: torch.Tensor, batch_size: int, generator: torch.Generator,
                   shard_id: int = 0, num_shards: int = 1) -> list[BatchPlan]:
        """This rank's batches for one epoch over ``pos``. The permutation and every sample's
        augmentation parameters are drawn for all of ``pos`` (the same draws on every rank), so a
        sample's augmentation does not depend on the number of ranks."""
        perm = torch.randperm(pos.shape[0], generator=generator)
        order = pos[perm]
        crops, flips = self._draw_augmentation(split, order, generator)
        plans = []
        for b in shard_batches(torch.arange(order.shape[0]), batch_size, shard_id, num_shards):
            plans.append(BatchPlan(order[b], None if crops is None else crops[b],
                                   None if flips is None else flips[b]))
        return plans

    def _draw_augmentation(self, split, order, generator):
        aug = self.augment
        if isinstance(split, FileSplit):
            if isinstance(aug, (ResizedCropAugment, CropAugment)) and aug.enabled:
                return aug.sample_windows(split.hw[order], generator)
            if isinstance(aug, Augment) and aug.enabled:  # flips only (Cars-196 under --pipeline released)
                return aug.sample(order.shape[0], generator)
            return None, None  # no augmentation: the loaders give x_aug = x
        if isinstance(aug, Augment) and aug.enabled:
            return aug.sample(order.shape[0], generator)
        return None, None

    def batches_over(self, split, pos: torch.Tensor, batch_size: int, generator: torch.Generator,
                     device: torch.device, shard_id: int = 0, num_shards: int = 1
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One shuffled training epoch over the samples ``pos`` of ``split``: (x, x_aug, y)
        batches on ``device`` (see :meth:`train_batches`)."""
        plans = self.epoch_plan(split, pos, batch_size, generator, shard_id, num_shards)
        for x, x_aug, y in self.loader.train(split, plans, self.augment, torch.device(device)):
            yield x, to_float(x_aug), y

    def train_batches(self, t: int, batch_size: int, generator: torch.Generator,
                      device: torch.device, shard_id: int = 0, num_shards: int = 1
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch of task t's training data: shuffled (x, x_aug, y) batches on ``device``.

        x: un-augmented uint8 images (what a replay buffer stores); x_aug: augmented float images
        in [0, 1]. With ``num_shards`` > 1 (DDP) this rank gets its share of one permutation: every
        sample exactly once per epoch across ranks, the same number of steps on every rank.
        """
        split, pos = self.train_split(t)
        yield from self.batches_over(split, pos, batch_size, generator, device, shard_id, num_shards)

    def num_train_batches(self, t: int, batch_size: int, num_shards: int = 1) -> int:
        _, pos = self.train_split(t)
        return num_shard_batches(pos.shape[0], batch_size, num_shards)

    def images(self, split, pos: torch.Tensor, batch_size: int, device: torch.device,
               shard_id: int = 0, num_shards: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The samples ``pos`` of ``split`` in order, without augmentation: (uint8 x, y) batches on
        ``device`` (file images at the fixed centre view; unreadable files are left out). With
        ``num_shards`` > 1 this rank's every num_shards-th sample (no padding: counts summed over
        ranks cover each sample exactly once)."""
        pos = pos[eval_shard(pos.shape[0], shard_id, num_shards)]
        plans = [BatchPlan(pos[s:s + batch_size]) for s in range(0, pos.shape[0], batch_size)]
        yield from self.loader.test(split, plans, torch.device(device))

    def train_images(self, t: int, batch_size: int, device: torch.device, shard_id: int = 0,
                     num_shards: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Task t's training samples in order, un-augmented (what task-end passes such as class
        means, herding or a Fisher estimate read); sharded as :meth:`images`."""
        split, pos = self.train_split(t)
        yield from self.images(split, pos, batch_size, device, shard_id, num_shards)

    def test_batches(self, t: int, batch_size: int, device: torch.device, shard_id: int = 0,
                     num_shards: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Task t's test split in order, without augmentation: (uint8 x, y) batches on ``device``,
        sharded as :meth:`images`."""
        split, pos = self.test_split(t)
        yield from self.images(split, pos, batch_size, device, shard_id, num_shards)


class DomainStream(ContinualStream):
    """Domain-incremental stream: every task has all classes, under a task-specific input
    transformation (``transform(t, x_uint8)``, applied to the whole split once per task).

    Class-IL accuracy is the argmax over all classes; task-IL is not meaningful (every task has
    the same label set), so ``task_class_range`` is the full range and task-IL equals class-IL.
    """

    setting = "domain-il"

    def __init__(self, name: str, train_x, train_y, test_x, test_y, n_tasks: int, n_classes: int,
                 transform, augment, loader: str = "torch", workers: int = 0):
        self._setup(name, TensorSplit(train_x, train_y), TensorSplit(test_x, test_y), 1, n_classes,
                    augment, "natural", loader, workers)
        self.n_tasks = n_tasks
        self.transform = transform
        self._cache: dict[tuple[str, int], TensorSplit] = {}

    def task_class_range(self, t: int) -> tuple[int, int]:
        return 0, self.n_classes

    def seen_classes(self, t: int) -> int:
        return self.n_classes

    def _split_for(self, which: str, base: TensorSplit, t: int) -> TensorSplit:
        self._check_task(t)
        key = (which, t)
        if key not in self._cache:
            # Keep the current task's training split and the test splits of recent tasks only.
            if which == "train":
                self._cache = {k: v for k, v in self._cache.items() if k[0] != "train"}
            elif len(self._cache) > 4:
                self._cache.pop(next(k for k in self._cache if k[0] == "test"))
            self._cache[key] = TensorSplit(self.transform(t, base.x), base.y)
        return self._cache[key]

    def train_split(self, t: int):
        split = self._split_for("train", self._train, t)
        return split, torch.arange(len(split))

    def test_split(self, t: int):
        split = self._split_for("test", self._test, t)
        return split, torch.arange(len(split))

    def union_train_split(self, tasks) -> tuple[object, torch.Tensor]:
        """Every task has its own transformed split, so a union of several is materialised."""
        tasks = list(tasks)
        if len(tasks) == 1:
            return self.train_split(tasks[0])
        splits = [self.train_split(t)[0] for t in tasks]  # the cache keeps only the last one
        union = TensorSplit(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))
        return union, torch.arange(len(union))
