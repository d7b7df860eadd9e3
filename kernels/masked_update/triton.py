"""Masked multi-tensor optimizer steps in Triton: the whole step is one launch.

Same signatures and formulas as :mod:`kernels.masked_update.reference`. One program per block of
the flat layout: it reads its group, the group's layer gate and (when given) the skip flag; a
program whose group is inactive returns without touching memory, so a gated-off layer costs no
bandwidth. Active programs stream p, g and the state once (AdamW: 16 bytes read and 12 written per
float32 element; SGD with momentum: 12 read, 8 written). Step counts: every program reads its
group's count; the last program to finish (atomic ticket) advances the counts of the active
groups, so no program ever sees a half-updated count.

With ``grad_scale`` and no ``found_inf`` a first launch (``_nonfinite_kernel``) computes the skip
flag on the device (one pass over the active gradients; its per-block flags are reduced by its
last program), and the update launch reads it: still no host synchronisation.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import _util
from kernels._util import Launch, aligned, interpret_mode, launch_guard, next_pow2
from kernels.masked_update.layout import FlatLayout
from kernels.masked_update.reference import HP_COLS


@triton.jit
def _group_active(grp, grp_layer_ptr, gates_ptr, inf_ptr, HAS_GATES: tl.constexpr, HAS_INF: tl.constexpr):
    on = grp >= 0
    if HAS_GATES:
        layer = tl.load(grp_layer_ptr + grp)
        on = on & (tl.load(gates_ptr + layer).to(tl.float32) != 0)
    if HAS_INF:
        # (integer product: the interpreter cannot broadcast a bool `&` with a loaded scalar)
        on = (on.to(tl.int32) * (tl.load(inf_ptr).to(tl.float32) == 0).to(tl.int32)) != 0
    return on


@triton.jit
def _block_stop(grp_stop_ptr, grp):
    # Group ends are stored rounded up to VEC elements (the rounded-over gap is zero in every
    # buffer and stays zero), so the tail mask is constant over each run of VEC elements and the
    # compiler can keep 128-bit loads and stores.
    return tl.multiple_of(tl.load(grp_stop_ptr + grp), 16)


@triton.jit
def _masked_adamw_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr,
    blk_group_ptr, grp_layer_ptr, grp_stop_ptr, hp_ptr, step_ptr,
    gates_ptr, scale_ptr, inf_ptr,
    HAS_GATES: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr, HP: tl.constexpr,
):
    pid = tl.program_id(0)
    grp = tl.load(blk_group_ptr + pid)
    on = _group_active(grp, grp_layer_ptr, gates_ptr, inf_ptr, HAS_GATES, HAS_INF)
    if on:
        lr = tl.load(hp_ptr + grp * HP + 0)
        wd = tl.load(hp_ptr + grp * HP + 1)
        beta1 = tl.load(hp_ptr + grp * HP + 2)
        beta2 = tl.load(hp_ptr + grp * HP + 3)
        eps = tl.load(hp_ptr + grp * HP + 4)
        # the count is advanced by a separate launch after this one (_advance_steps_kernel), so
        # every program of the step reads the same value
        t = tl.load(step_ptr + grp) + 1.0
        bc1 = 1.0 - tl.exp2(t * tl.log2(beta1))
        bc2_sqrt = tl.sqrt(1.0 - tl.exp2(t * tl.log2(beta2)))
        if HAS_SCALE:
            scale = tl.load(scale_ptr).to(tl.float32)
        end = _block_stop(grp_stop_ptr, grp)
        base = pid.to(tl.int64) * BLOCK
        # CHUNK elements per iteration (4 per thread at 8 warps: one 128-bit access per stream)
        # keep the live registers low enough for four 8-warp blocks per SM
        for c in range(0, BLOCK, CHUNK):
            offs = base + c + tl.arange(0, CHUNK)
            mask = offs < end
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_SCALE:
                g = g / scale  # a division, as in the reference: bitwise equal
            p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            p = p * (1.0 - lr * wd)
            m = m + (1.0 - beta1) * (g - m)
            v = v * beta2 + (1.0 - beta2) * g * g
            denom = tl.sqrt(v) / bc2_sqrt + eps
            p = p - (lr / bc1) * (m / denom)
            tl.store(p_ptr + offs, p, mask=mask)
            tl.store(m_ptr + offs, m, mask=mask)
            tl.store(v_ptr + offs, v, mask=mask)


@triton.jit
def _masked_sgd_kernel(
    p_ptr, g_ptr, buf_ptr,
    blk_group_ptr, grp_layer_ptr, grp_stop_ptr, hp_ptr, step_ptr,
    gates_ptr, scale_ptr, inf_ptr,
    HAS_GATES: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr, HP: tl.constexpr,
):
    pid = tl.program_id(0)
    grp = tl.load(blk_group_ptr + pid)
    on = _group_active(grp, grp_layer_ptr, gates_ptr, inf_ptr, HAS_GATES, HAS_INF)
    if on:
        lr = tl.load(hp_ptr + grp * HP + 0)
        wd = tl.load(hp_ptr + grp * HP + 1)
        mom = tl.load(hp_ptr + grp * HP + 2)
        damp = tl.load(hp_ptr + grp * HP + 3)
        nesterov = tl.load(hp_ptr + grp * HP + 4)
        first = tl.load(step_ptr + grp) == 0.0
        if HAS_SCALE:
            scale = tl.load(scale_ptr).to(tl.float32)
        end = _block_stop(grp_stop_ptr, grp)
        base = pid.to(tl.int64) * BLOCK
        for c in range(0, BLOCK, CHUNK):
            offs = base + c + tl.arange(0, CHUNK)
            mask = offs < end
            d = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_SCALE:
                d = d / scale
            p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            d = d + wd * p
            if mom != 0.0:
                # the momentum buffer is only read and written for groups that use momentum
                b = tl.load(buf_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                b = tl.where(first, d, mom * b + (1.0 - damp) * d)
                tl.store(buf_ptr + offs, b, mask=mask)
                d = tl.where(nesterov != 0.0, d + mom * b, b)
            tl.store(p_ptr + offs, p - lr * d, mask=mask)


@triton.jit
def _advance_steps_kernel(step_ptr, grp_layer_ptr, gates_ptr, inf_ptr, G,
                          HAS_GATES: tl.constexpr, HAS_INF: tl.constexpr, G_PAD: tl.constexpr):
    # one program, launched after the update on the same stream: stream order replaces the
    # cross-program ticket, so there is no persistent counter to leave dirty
    gi = tl.arange(0, G_PAD)
    gm = gi < G
    on = gm
    if HAS_GATES:
        layer = tl.load(grp_layer_ptr + gi, mask=gm, other=0)
        on = on & (tl.load(gates_ptr + layer, mask=gm, other=0).to(tl.float32) != 0)
    if HAS_INF:
        on = (on.to(tl.int32) * (tl.load(inf_ptr).to(tl.float32) == 0).to(tl.int32)) != 0
    st = tl.load(step_ptr + gi, mask=gm, other=0.0)
    tl.store(step_ptr + gi, st + on.to(tl.float32), mask=gm)


@triton.jit
def _nonfinite_kernel(
    g_ptr, blk_group_ptr, grp_layer_ptr, grp_stop_ptr, gates_ptr, scale_ptr, partial_ptr,
    HAS_GATES: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    grp = tl.load(blk_group_ptr + pid)
    on = _group_active(grp, grp_layer_ptr, gates_ptr, gates_ptr, HAS_GATES, False)
    bad = tl.zeros([CHUNK], tl.int32)
    if on:
        scale = tl.load(scale_ptr).to(tl.float32)
        end = _block_stop(grp_stop_ptr, grp)
        base = pid.to(tl.int64) * BLOCK
        for c in range(0, BLOCK, CHUNK):
            offs = base + c + tl.arange(0, CHUNK)
            g = tl.load(g_ptr + offs, mask=offs < end, other=0.0).to(tl.float32) / scale
            # |g| < inf is false for +-inf and NaN
            bad = tl.maximum(bad, tl.where(tl.abs(g) < float("inf"), 0, 1))
    tl.store(partial_ptr + pid, tl.max(bad, axis=0))


@triton.jit
def _any_kernel(partial_ptr, n, out_ptr, RED: tl.constexpr):
    # second launch of the non-finite check: one program folds the per-block flags
    rows = tl.arange(0, RED)
    acc = tl.zeros([RED], tl.int32)
    for q0 in range(0, n, RED):
        q = q0 + rows
        acc = tl.maximum(acc, tl.load(partial_ptr + q, mask=q < n, other=0))
    tl.store(out_ptr, tl.max(acc, axis=0).to(tl.float32))


_NUM_WARPS = 8


def _common(layout: FlatLayout, flat: torch.Tensor, gates, grad_scale, found_inf):
    if flat.device.type != "cuda" and not interpret_mode():
        raise RuntimeError(
            "the Triton masked update needs CUDA tensors, or TRITON_INTERPRET=1 set before triton "
            "is imported to run on CPU tensors"
        )
    tables = layout.tables
    dummy = tables["group_stop"]
    if gates is not None:
        if gates.numel() < layout.n_layers:
            raise ValueError(f"gates has {gates.numel()} entries, the layout has {layout.n_layers} layers")
        gates = gates.reshape(-1)
        if gates.dtype == torch.bool:
            gates = gates.view(torch.uint8)  # same bytes; loads as an integer on every backend
    return tables, dummy, gates


# 1024 elements per loop iteration: 4 per thread at 8 warps, one 128-bit access per stream
_CHUNK = 1024


def _nonfinite(layout, grads, gates, grad_scale, tables, dummy) -> torch.Tensor:
    # two launches, no persistent state: per-block flags into a fresh buffer (every program
    # writes its slot, so no memset), then one program folds them
    out = torch.empty((), dtype=torch.float32, device=grads.device)
    partial = _util.scratch(layout.n_blocks, torch.int32, grads.device)
    _nonfinite_kernel[(layout.n_blocks,)](
        grads, tables["block_group"], tables["group_layer"], tables["group_stop"],
        gates if gates is not None else dummy, grad_scale, partial,
        HAS_GATES=gates is not None, BLOCK=layout.block, CHUNK=min(_CHUNK, layout.block),
        num_warps=_NUM_WARPS,
    )
    _any_kernel[(1,)](partial, layout.n_blocks, out, RED=1024, num_warps=4)
    return out


def _launch(kernel, layout, bufs, steps, hp, gates, grad_scale, found_inf):
    grads = bufs[1]
    tables, dummy, gates = _common(layout, grads, gates, grad_scale, found_inf)
    with launch_guard(grads):
        if grad_scale is not None and not isinstance(grad_scale, torch.Tensor):
            grad_scale = torch.full((), float(grad_scale), device=grads.device)
        if grad_scale is not None and found_inf is None:
            found_inf = _nonfinite(layout, grads, gates, grad_scale, tables, dummy)
        flags = dict(HAS_GATES=gates is not None, HAS_INF=found_inf is not None)
        gates_arg = gates if gates is not None else dummy
        inf_arg = found_inf if found_inf is not None else dummy
        kernel[(layout.n_blocks,)](
            *bufs, tables["block_group"], tables["group_layer"], tables["group_stop"], hp, steps,
            gates_arg, grad_scale if grad_scale is not None else dummy, inf_arg,
            HAS_SCALE=grad_scale is not None, BLOCK=layout.block, CHUNK=min(_CHUNK, layout.block),
            HP=HP_COLS, num_warps=_NUM_WARPS, **flags,
        )
        # stream order: the counts advance only after every program of the update has read them
        _advance_steps_kernel[(1,)](
            steps, tables["group_layer"], gates_arg, inf_arg, layout.n_groups,
            G_PAD=next_pow2(max(layout.n_groups, 1)), num_warps=4, **flags,
        )
    return found_inf


def masked_adamw_step(
    layout: FlatLayout, params, grads, exp_avg, exp_avg_sq, steps, hp,
    gates: Optional[torch.Tensor] = None, grad_scale=None, found_inf=None,
):
    """Masked AdamW step in one launch (two with ``grad_scale`` and no ``found_inf``)."""
    return _launch(_masked_adamw_kernel, layout, (params, grads, exp_avg, exp_avg_sq), steps, hp,
                   gates, grad_scale, found_inf)


def masked_sgd_step(
    layout: FlatLayout, params, grads, momentum_buffer, steps, hp,
    gates: Optional[torch.Tensor] = None, grad_scale=None, found_inf=None,
):
    """Masked SGD step in one launch (two with ``grad_scale`` and no ``found_inf``)."""
    return _launch(_masked_sgd_kernel, layout, (params, grads, momentum_buffer), steps, hp,
                   gates, grad_scale, found_inf)


# One ViT-B/16 block's trainable tensors (LayerNorms, qkv, proj, MLP): the update's real workload
# is 2 sources x 3 blocks of these (42.5M parameters), one gate per block.
VIT_B_BLOCK_SHAPES = ((768,), (768,), (2304, 768), (2304,), (768, 768), (768,), (768,), (768,),
                      (3072, 768), (3072,), (768, 3072), (768,))


def launch_cases(sms: int = 132):
    """The launches of one step over the real trainable set (2 x 3 ViT-B/16 blocks, float32
    flat buffers, gated, with and without AMP's grad_scale), argument for argument as
    :func:`_launch` makes them (for :mod:`kernels.resources`)."""
    layout = FlatLayout.build([VIT_B_BLOCK_SHAPES] * 6, list(range(6)), torch.device("cpu"))
    f32, i32, i64, u8 = (aligned(t) for t in (torch.float32, torch.int32, torch.int64, torch.uint8))
    n, G = layout.n_blocks, layout.n_groups
    chunk = min(_CHUNK, layout.block)
    cfg = f"{layout.numel / 1e6:.1f}M fp32, {n} blocks of {layout.block}"
    cases = []
    for amp in (False, True):
        flags = dict(HAS_GATES=True, HAS_INF=amp)
        tables = (i32, i32, i64, f32, f32, f32, f32 if amp else i64, f32 if amp else i64)
        const = dict(HAS_SCALE=amp, BLOCK=layout.block, CHUNK=chunk, HP=HP_COLS,
                     num_warps=_NUM_WARPS, **flags)
        c = cfg + (", gated, grad_scale" if amp else ", gated")
        cases.append(Launch("masked_adamw", c, _masked_adamw_kernel, (n,), (f32,) * 4 + tables, const))
        cases.append(Launch("masked_sgd", c, _masked_sgd_kernel, (n,), (f32,) * 3 + tables, const))
    cases.append(Launch("masked_advance_steps", f"{G} groups", _advance_steps_kernel, (1,),
                        (f32, i32, f32, f32, G),
                        dict(HAS_GATES=True, HAS_INF=True, G_PAD=next_pow2(G), num_warps=4)))
    cases.append(Launch("masked_nonfinite", cfg, _nonfinite_kernel, (n,),
                        (f32, i32, i32, i64, f32, f32, i32),
                        dict(HAS_GATES=True, BLOCK=layout.block, CHUNK=chunk, num_warps=_NUM_WARPS)))
    cases.append(Launch("masked_nonfinite_any", f"{n} flags", _any_kernel, (1,), (i32, n, f32),
                        dict(RED=1024, num_warps=4)))
    return cases
