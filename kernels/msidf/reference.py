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


def msidf_backward(grad, x, weights, biases, mix_logits, need_dx: bool = True):
    """The gradients of :func:`msidf` in closed form, pure PyTorch: ``(dx or None, db, dm, [dW_i])``.

    With w = softmax(m), p_i = (k_i - 1) / 2 and g = dL/dout:
        dbranch_i = w_i g;  dx = sum_i conv1d_input(dbranch_i, W_i);  dW_i = conv1d_weight(x, dbranch_i)
        db_i = sum(dbranch_i);  dL/dw_i = sum(g * branch_i);  dm = w * (dL/dw - sum_i w_i dL/dw_i)
    (dL/dw_k = 0 for the unused logits k >= n). Used as the CPU backward of ``torch.ops.lmsrr.msidf``.
    """
    mix = torch.softmax(mix_logits, dim=0)
    g1 = grad.unsqueeze(1)
    dx = torch.zeros_like(x) if need_dx else None
    dws, dbs = [], []
    dmix = []
    for i, w in enumerate(weights):
        k = w.shape[-1]
        pad = (k - 1) // 2
        w3 = w.unsqueeze(0)
        dbranch = (mix[i] * g1).to(x.dtype)
        if need_dx:
            dx = dx + torch.nn.grad.conv1d_input(x.shape, w3, dbranch, padding=pad)
        dws.append(torch.nn.grad.conv1d_weight(x, w3.shape, dbranch, padding=pad).squeeze(0).to(w.dtype))
        dbs.append(dbranch.sum())
        branch = F.conv1d(x, w3, biases[i : i + 1], padding=pad)
        dmix.append((g1 * branch).sum().to(mix.dtype))
    dmix = torch.cat([torch.stack(dmix), mix.new_zeros(mix.numel() - len(dmix))])
    dm = mix * (dmix - (mix * dmix).sum())
    return dx, torch.stack(dbs).to(biases.dtype), dm.to(mix_logits.dtype), dws
