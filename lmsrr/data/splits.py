"""The data a stream hands to its loaders: splits (in memory or on disk) and batch plans.

These types sit below both the stream (which decides what goes into each batch) and the loaders
(which produce the batches), so neither has to import the other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmsrr.data.augment import center_geometry


@dataclass
class TaskData:
    task: int
    classes: list[int]  # the (remapped) labels of this task
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass
class TensorSplit:
    """Images held in memory: uint8 (N, C, H, W) and int64 labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.y.shape[0]


@dataclass
class FileSplit:
    """Images on disk, decoded per batch: paths, int64 labels, original (height, width) per file
    (read by the scan, so crop geometry is known before decoding) and the view size."""

    paths: list[str]
    y: torch.Tensor
    hw: torch.Tensor  # (N, 2) int64
    size: int
    # --pipeline released: the released dataset class's view (lmsrr.data.released_views.ReleasedView);
    # None: the shorter side resized to ``size`` and centre-cropped.
    view: object = None

    def __len__(self) -> int:
        return self.y.shape[0]

    def geometry(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, 4) int64: resized height, resized width, crop top, crop left of the view."""
        if self.view is not None:
            return torch.tensor([self.view.geometry(int(h), int(w)) for h, w in self.hw[idx].tolist()],
                                dtype=torch.long).reshape(-1, 4)
        return center_geometry(self.hw[idx, 0], self.hw[idx, 1], self.size)


@dataclass
class BatchPlan:
    """One batch: positions into a split and the augmentation parameters of each sample
    (in-memory: crop anchors (n, 2); files: crop windows (n, 4)), all on the CPU."""

    idx: torch.Tensor
    crops: torch.Tensor | None = None
    flips: torch.Tensor | None = None
