"""Accuracy on every task seen so far, class-IL and task-IL, with an optional prefix cache.

Class-IL: argmax over every class seen so far. Task-IL: argmax over the task's own classes
(``stream.task_class_range``). The frozen prefixes' outputs on a test set never change, so
:class:`PrefixCache` keeps them (within a memory budget) and later evaluations run only the
trainable top. Under DDP each rank evaluates its shard and the counts are summed.
"""
from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from lmsrr import distributed
from lmsrr.data.augment import to_float
from lmsrr.methods.base import ContinualMethod

log = logging.getLogger("lmsrr")


class PrefixCache:
    """Per-task lists of (prefix outputs, labels) kept on the device, up to ``budget_mb``."""

    def __init__(self, budget_mb: int):
        self.budget = budget_mb * 2**20
        self.used = 0
        self.tasks: dict[int, list] = {}
        self.refused: set[int] = set()

    def offer(self, task: int, batches: list) -> None:
        size = sum(z.numel() * z.element_size() for zs, _ in batches for z in zs)
        if self.used + size > self.budget:
            self.refused.add(task)
            log.info("eval cache: task %d's prefix outputs (%.0f MiB) exceed the remaining budget; "
                     "it will be recomputed each evaluation", task + 1, size / 2**20)
            return
        self.tasks[task] = batches
        self.used += size


@torch.no_grad()
def evaluate_seen_tasks(method, stream, last_task: int, device, batch_size: int = 256,
                        progress: bool = True, cache: PrefixCache | None = None
                        ) -> tuple[list[float], list[float]]:
    """Return (class-IL accuracies, task-IL accuracies) in %, one per task 0..last_task."""
    # A method that overrides predict() may not be a function of the prefix outputs.
    if type(method).predict is not ContinualMethod.predict:
        cache = None
    n_seen = stream.seen_classes(last_task)
    shard, shards = distributed.rank(), distributed.world_size()
    cil, til = [], []
    for t in range(last_task + 1):
        lo, hi = stream.task_class_range(t)
        counts = torch.zeros(3, dtype=torch.long, device=device)  # class-IL, task-IL, total
        cached = cache is not None and t in cache.tasks
        fill = cache is not None and not cached and t not in cache.refused
        fresh = []
        batches = cache.tasks[t] if cached else stream.test_batches(t, batch_size, device, shard, shards)
        for item in tqdm(batches, desc=f"eval task {t + 1}", leave=False, disable=not progress):
            if cached:
                zs, y = item
                logits = method.predict_from_prefix(zs)
            elif cache is not None:
                x, y = item
                zs = method.net.prefix(to_float(x))
                if fill:
                    fresh.append((zs, y))
                logits = method.predict_from_prefix(zs)
            else:
                x, y = item
                logits = method.predict(to_float(x))
            counts[0] += (logits[:, :n_seen].argmax(1) == y).sum()
            counts[1] += (logits[:, lo:hi].argmax(1) + lo == y).sum()
            counts[2] += y.numel()
        if fill:
            cache.offer(t, fresh)
        distributed.all_reduce_sum_(counts)
        c, k, n = counts.tolist()  # one host sync per task, outside any training loop
        cil.append(100.0 * c / n)
        til.append(100.0 * k / n)
    return cil, til
