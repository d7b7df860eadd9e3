"""Accuracy on every task seen so far, class-IL and task-IL, in one pass per test set.

Class-IL: argmax over every class seen so far. Task-IL: argmax over the task's own classes.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from lmsrr.data.augment import to_float


@torch.no_grad()
def evaluate_seen_tasks(predict, stream, last_task: int, device, batch_size: int = 256,
                        progress: bool = True) -> tuple[list[float], list[float]]:
    """Return (class-IL accuracies, task-IL accuracies) in %, one per task 0..last_task."""
    n_seen = stream.seen_classes(last_task)
    cil, til = [], []
    for t in range(last_task + 1):
        lo, hi = stream.task_class_range(t)
        correct_c = torch.zeros((), dtype=torch.long, device=device)
        correct_t = torch.zeros((), dtype=torch.long, device=device)
        n = torch.zeros((), dtype=torch.long, device=device)
        for x, y in tqdm(stream.test_batches(t, batch_size, device), desc=f"eval task {t + 1}",
                         leave=False, disable=not progress):
            logits = predict(to_float(x))
            correct_c += (logits[:, :n_seen].argmax(1) == y).sum()
            correct_t += (logits[:, lo:hi].argmax(1) + lo == y).sum()
            n += y.numel()
        # One host sync per task, outside any training loop.
        n = n.item()
        cil.append(100.0 * correct_c.item() / n)
        til.append(100.0 * correct_t.item() / n)
    return cil, til
