"""Batched, on-device training augmentation for uint8 image tensors.

Applied to the stream batch and, again, to replayed buffer samples (which are stored
un-augmented), so both see fresh augmentations every step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return x.float().div_(255.0)


@dataclass
class Augment:
    """Random crop of the original size after zero padding by ``pad``; optional horizontal flip."""

    pad: int = 0
    flip: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_float(x)
        b, _, h, w = x.shape
        if self.pad > 0:
            x = random_crop(x, self.pad, generator)
        if self.flip:
            flip = torch.rand(b, 1, 1, 1, device=x.device, generator=generator) < 0.5
            x = torch.where(flip, x.flip(-1), x)
        return x


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random (H, W) crop of x zero-padded by ``pad`` on each side, in one gather."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # b,1,h,1
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # b,1,1,w
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows, cols]
