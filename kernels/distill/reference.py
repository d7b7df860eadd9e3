"""ARO-weighted multi-level distillation loss, pure PyTorch (the truth).

    L = sum_l p_l * mean((h_old_l - h_l)^2) / sum_l p_l      (0 when sum_l p_l == 0)

over all (source, layer) pairs l. h_old is a constant target (no gradient); gradients flow to h
and p. Accumulates in float32 whatever the input dtype (in float64 when every input is float64,
so that ``gradcheck`` can check the reference in double precision).
"""
from __future__ import annotations

from typing import Sequence

import torch


def distill_loss(
    h_old: Sequence[torch.Tensor], h: Sequence[torch.Tensor], p: torch.Tensor
) -> torch.Tensor:
    if len(h_old) != len(h) or len(h) != p.numel():
        raise ValueError(
            f"distill_loss needs one weight per layer pair: got {len(h_old)} old, {len(h)} new, "
            f"{p.numel()} weights"
        )
    acc = torch.float32
    if p.dtype == torch.float64 and all(t.dtype == torch.float64 for t in (*h_old, *h)):
        acc = torch.float64
    mses = torch.stack(
        [(a.detach().to(acc) - b.to(acc)).pow(2).mean() for a, b in zip(h_old, h)]
    )
    p = p.to(acc)
    total = p.sum()
    # The released code skips the term when no layer is selected (possible with hard gates).
    return torch.where(total > 0, (p * mses).sum() / total.clamp_min(1e-30), torch.zeros_like(total))
