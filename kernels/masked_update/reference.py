"""Masked optimizer steps, pure PyTorch (the truth): a per-parameter loop over the flat layout.

Both functions update the flat buffers in place and share the Triton implementation's signature:

    fn(layout, params, grads, *state, steps, hp, gates=None, grad_scale=None, found_inf=None)
        -> found_inf (0-dim float32 tensor) or None

``layout`` is a :class:`~kernels.masked_update.layout.FlatLayout`; ``params``, ``grads`` and the
state buffers are its flat 1-D buffers; ``steps`` (G,) float32 counts the steps each param group
has taken; ``hp`` (G, 8) float32 holds each group's hyperparameters (see below).

A group g is *active* this step when ``gates[layer(g)] != 0`` (no ``gates``: all active) and the
step is not skipped. An inactive group's parameters, state and step count are left untouched.

Gradient scaling: with ``grad_scale`` the gradient used is ``grad / grad_scale`` (the stored
``.grad`` is not rewritten). ``found_inf`` (nonzero = skip) skips the whole step; when it is not
given but ``grad_scale`` is, it is computed here: 1 if any gradient of an active group is
non-finite after unscaling, else 0, and returned. No host synchronisation anywhere.

AdamW, per group (hp row: lr, weight_decay, beta1, beta2, eps), t = step + 1, as torch.optim.AdamW:

    p <- p * (1 - lr * wd)
    m <- m + (1 - beta1) * (g - m)
    v <- beta2 * v + (1 - beta2) * g^2
    p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

SGD, per group (hp row: lr, weight_decay, momentum, dampening, nesterov), as torch.optim.SGD:

    d <- g + wd * p
    if momentum != 0:
        b <- d                                   on the group's first step (step == 0)
        b <- momentum * b + (1 - dampening) * d  afterwards
        d <- d + momentum * b  if nesterov else  b
    p <- p - lr * d
"""
from __future__ import annotations

from typing import Optional

import torch

from kernels.masked_update.layout import FlatLayout

HP_COLS = 8
ADAMW_HP = ("lr", "weight_decay", "beta1", "beta2", "eps")
SGD_HP = ("lr", "weight_decay", "momentum", "dampening", "nesterov")


def _active_groups(layout: FlatLayout, gates: Optional[torch.Tensor], device) -> torch.Tensor:
    if gates is None:
        return torch.ones(layout.n_groups, dtype=torch.bool, device=device)
    layers = torch.as_tensor(layout.group_layer, dtype=torch.long, device=gates.device)
    return (gates.reshape(-1)[layers] != 0).to(device)


def _found_inf(layout, grads, active, grad_scale) -> torch.Tensor:
    bad = torch.zeros((), dtype=torch.bool, device=grads.device)
    for g, start, n in layout.param_slices():
        grad = grads[start : start + n].float() / grad_scale
        bad = bad | (active[g] & ~torch.isfinite(grad).all())
    return bad.float()


def _prepare(layout, grads, gates, grad_scale, found_inf):
    active = _active_groups(layout, gates, grads.device)
    if grad_scale is not None and found_inf is None:
        found_inf = _found_inf(layout, grads, active, grad_scale)
    if found_inf is not None:
        active = active & (found_inf.reshape(()) == 0)
    return active, found_inf


def masked_adamw_step(
    layout: FlatLayout,
    params: torch.Tensor,
    grads: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    steps: torch.Tensor,
    hp: torch.Tensor,
    gates: Optional[torch.Tensor] = None,
    grad_scale: Optional[torch.Tensor] = None,
    found_inf: Optional[torch.Tensor] = None,
) -> Optional[torch.Tensor]:
    """Masked AdamW step (reference); formulas in the module docstring."""
    active, found_inf = _prepare(layout, grads, gates, grad_scale, found_inf)
    for g, start, n in layout.param_slices():
        lr, wd, beta1, beta2, eps = hp[g, :5].unbind()
        t = steps[g] + 1
        bc1 = 1 - beta1**t
        bc2 = 1 - beta2**t
        sl = slice(start, start + n)
        p, m, v = params[sl], exp_avg[sl], exp_avg_sq[sl]
        grad = grads[sl].float()
        if grad_scale is not None:
            grad = grad / grad_scale
        p_new = p.float() * (1 - lr * wd)
        m_new = m.float().lerp(grad, 1 - beta1)
        v_new = v.float() * beta2 + (1 - beta2) * grad * grad
        denom = v_new.sqrt() / bc2.sqrt() + eps
        p_new = p_new - (lr / bc1) * m_new / denom
        on = active[g]
        p.copy_(torch.where(on, p_new, p.float()))
        m.copy_(torch.where(on, m_new, m.float()))
        v.copy_(torch.where(on, v_new, v.float()))
    steps.add_(active.to(steps.dtype))
    return found_inf


def masked_sgd_step(
    layout: FlatLayout,
    params: torch.Tensor,
    grads: torch.Tensor,
    momentum_buffer: torch.Tensor,
    steps: torch.Tensor,
    hp: torch.Tensor,
    gates: Optional[torch.Tensor] = None,
    grad_scale: Optional[torch.Tensor] = None,
    found_inf: Optional[torch.Tensor] = None,
) -> Optional[torch.Tensor]:
    """Masked SGD (momentum, dampening, Nesterov, L2 weight decay) step (reference)."""
    active, found_inf = _prepare(layout, grads, gates, grad_scale, found_inf)
    for g, start, n in layout.param_slices():
        lr, wd, mom, damp, nesterov = hp[g, :5].unbind()
        sl = slice(start, start + n)
        p, buf = params[sl], momentum_buffer[sl]
        d = grads[sl].float()
        if grad_scale is not None:
            d = d / grad_scale
        d = d + wd * p.float()
        buf_new = torch.where(steps[g] == 0, d, mom * buf.float() + (1 - damp) * d)
        d_mom = torch.where(nesterov != 0, d + mom * buf_new, buf_new)
        has_mom = mom != 0
        d = torch.where(has_mom, d_mom, d)
        on = active[g]
        p.copy_(torch.where(on, p.float() - lr * d, p.float()))
        # without momentum torch keeps no buffer: leave ours untouched
        buf.copy_(torch.where(on & has_mom, buf_new, buf.float()))
    steps.add_(active.to(steps.dtype))
    return found_inf
