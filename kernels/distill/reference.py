"""ARO-weighted multi-level distillation loss, pure PyTorch (the truth).

    L = sum_l p_l * mean((h_old_l - h_l)^2) / sum_l p_l      (0 when sum_l p_l == 0)

over all (source, layer) pairs l. h_old is a constant target (no gradient); gradients flow to h
and p. Accumulates in float32 whatever the input dtype (in float64 when every input is float64,
so that ``gradcheck`` can check the reference in double precision).
"""
from __future__ import annotations

from typing import Sequence

import torch


def _acc_dtype(h_old, h, p) -> torch.dtype:
    if p.dtype == torch.float64 and all(t.dtype == torch.float64 for t in (*h_old, *h)):
        return torch.float64
    return torch.float32


def distill_terms(h_old, h, p):
    """``(L, mse)``: the loss and the per-pair means it weighs (the backward needs both)."""
    if len(h_old) != len(h) or len(h) != p.numel():
        raise ValueError(
            f"distill_loss needs one weight per layer pair: got {len(h_old)} old, {len(h)} new, "
            f"{p.numel()} weights"
        )
    acc = _acc_dtype(h_old, h, p)
    mses = torch.stack(
        [(a.detach().to(acc) - b.to(acc)).pow(2).mean() for a, b in zip(h_old, h)]
    )
    p = p.to(acc)
    total = p.sum()
    # The released code skips the term when no layer is selected (possible with hard gates).
    loss = torch.where(total > 0, (p * mses).sum() / total.clamp_min(1e-30), torch.zeros_like(total))
    return loss, mses


def distill_loss(
    h_old: Sequence[torch.Tensor], h: Sequence[torch.Tensor], p: torch.Tensor
) -> torch.Tensor:
    return distill_terms(h_old, h, p)[0]


def distill_backward(grad, h_old, h, p, mse, loss, need_h, need_dp: bool):
    """The gradients of :func:`distill_loss` in closed form: ``(dp or None, [dh_l or None])``.

        dh_l = g p_l / P * 2 (h_l - h_old_l) / n_l,   dp_k = g (m_k - L) / P    (0 when P <= 0)

    Used as the CPU backward of ``torch.ops.lmsrr.distill``.
    """
    acc = _acc_dtype(h_old, h, p)
    g = grad.to(acc)
    pa = p.to(acc)
    total = pa.sum()
    inv = torch.where(total > 0, 1.0 / total.clamp_min(1e-30), torch.zeros_like(total))
    dh = []
    for l, (a, b, need) in enumerate(zip(h_old, h, need_h)):
        if not need:
            dh.append(None)
            continue
        coef = g * pa[l] * inv * 2.0 / b.numel()
        dh.append((coef * (b.to(acc) - a.detach().to(acc))).to(b.dtype))
    dp = (g * (mse.to(acc) - loss.to(acc)) * inv).to(p.dtype) if need_dp else None
    return dp, dh
