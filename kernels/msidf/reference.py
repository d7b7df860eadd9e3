"""MSIDF fusion, pure PyTorch: the truth every other implementation is tested against.

Given stacked source features x (B, S, D), branch weights W_i (S, k_i) with odd k_i, branch
biases b (n,), and mixing logits m (M,), M >= n:

    branch_i[b, d] = b_i + sum_s sum_j W_i[s, j] * x[b, s, d + j - (k_i - 1) / 2]   (zero padded)
    w = softmax(m)                      (over all M entries)
    out[b, d] = sum_{i < n} w_i * branch_i[b, d]

i.e. Conv1d with the S sources as input channels, one output channel per branch, "same" padding.
M > n reproduces the released code, whose mixing vector has 3 entries of which 2 are used.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def msidf(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: torch.Tensor,
    mix_logits: torch.Tensor,
) -> torch.Tensor:
    """Fuse (B, S, D) source features into (B, D); see the module docstring for the formula."""
    mix = torch.softmax(mix_logits, dim=0)
    out = None
    for i, w in enumerate(weights):
        k = w.shape[-1]
        branch = F.conv1d(x, w.unsqueeze(0), biases[i : i + 1], padding=(k - 1) // 2).squeeze(1)
        term = mix[i] * branch
        out = term if out is None else out + term
    return out
