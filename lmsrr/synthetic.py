"""A synthetic in-memory stream of random images: for benchmarks and the GPU check, where timing
and resource use matter and the data's content does not."""
from __future__ import annotations

import os

import torch

from lmsrr.data.augment import Augment
from lmsrr.data.stream import ContinualStream


def synthetic_stream(n_classes: int = 100, n_tasks: int = 10, per_class: int = 4, size: int = 32,
                     loader: str = "torch", name: str = "synthetic") -> ContinualStream:
    """``per_class`` random uint8 ``size`` x ``size`` RGB images per class (the same images serve
    as the test split), split into ``n_tasks`` tasks, with CIFAR's crop-and-flip augmentation."""
    g = torch.Generator().manual_seed(0)
    n = n_classes * per_class
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return ContinualStream(name, x, y, x, y, n_tasks, n_classes // n_tasks, Augment(pad=4, flip=True),
                           loader=loader, workers=os.cpu_count() or 1)
