"""MSIDF fusion in Triton: one launch forward, one launch backward.

Formula (see ``reference.py``): with w = softmax(m) over all M logits and p_i = (k_i - 1) / 2,

    out[b, d] = sum_{i<n} w_i * (b_i + sum_s sum_j W_i[s, j] * x[b, s, d + j - p_i])

Because every branch is a "same"-padded convolution of the same input, the n branches collapse
into one effective kernel of half-width P = max_i p_i:

    K[t, s] = sum_i w_i * W_i[s, t - P + p_i]      (zero where t - P + p_i is outside [0, k_i))
    c       = sum_i w_i * b_i
    out[b, d] = c + sum_s sum_{t=0}^{2P} K[t, s] * x[b, s, d + t - P]

Each program rebuilds K from the (tiny) weights and streams its rows of x once.

Backward, with g = dL/dout and the shift correlations C[t, s] = sum_{b,d} g[b, d] x[b, s, d + t - P],
G = sum_{b,d} g[b, d]:

    dx[b, s, e] = sum_t K[t, s] * g[b, e - (t - P)]
    dW_i[s, j]  = w_i * C[j - p_i + P, s]
    db_i        = w_i * G
    dL/dw_i     = sum_{s,j} W_i[s, j] C[j - p_i + P, s] + b_i G         (= sum_{b,d} g * branch_i)
    dm_k        = w_k * (dL/dw_k - sum_i w_i dL/dw_i)                    (softmax backward; 0 for k >= n)

The backward is two launches: the first computes dx for its rows and writes its partial C and G
to its own row of a fresh scratch buffer; the second (one program) sums the rows in program
order and turns the totals into dW, db and dm. No atomics and no state kept between calls, so
the gradients are bit-identical run to run and safe under CUDA graphs, streams and devices.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from torch.library import wrap_triton

from kernels import _util
from kernels._util import Launch, aligned, interpret_mode, launch_guard, next_pow2, num_sms

# pointer slots for the branch weights: torch's triton-op tracing cannot carry tuples of tensors,
# so each weight is its own kernel argument
MAX_BRANCHES = 4


@triton.jit
def _msidf_fwd_kernel(
    x_ptr, w0, w1, w2, w3, b_ptr, m_ptr, out_ptr,
    D, M,
    S: tl.constexpr, S_PAD: tl.constexpr, KS: tl.constexpr, N: tl.constexpr, P: tl.constexpr,
    T_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
):
    w_ptrs = (w0, w1, w2, w3)
    pid_d = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)

    # softmax over all M mixing logits (only the first N are used)
    mo = tl.arange(0, M_PAD)
    ml = tl.load(m_ptr + mo, mask=mo < M, other=float("-inf")).to(tl.float32)
    e = tl.where(mo < M, tl.exp(ml - tl.max(ml, axis=0)), 0.0)
    mix = e / tl.sum(e, axis=0)
    bias = tl.load(b_ptr + mo, mask=mo < N, other=0.0).to(tl.float32)
    beff = tl.sum(tl.where(mo < N, mix * bias, 0.0), axis=0)

    # effective kernel K[t, s] (t = shift + P)
    t2 = tl.arange(0, T_PAD)[:, None]
    s2 = tl.arange(0, S_PAD)[None, :]
    keff = tl.zeros([T_PAD, S_PAD], tl.float32)
    for i in tl.static_range(N):
        wi = tl.sum(tl.where(mo == i, mix, 0.0), axis=0)
        j = t2 - P + (KS[i] - 1) // 2
        msk = (j >= 0) & (j < KS[i]) & (s2 < S)
        keff += wi * tl.load(w_ptrs[i] + s2 * KS[i] + j, mask=msk, other=0.0).to(tl.float32)

    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    s1 = tl.arange(0, S_PAD)
    xrow = x_ptr + row * S * D
    acc = tl.zeros([S_PAD, BLOCK_D], tl.float32)
    for tt in tl.static_range(2 * P + 1):
        col = tl.sum(tl.where(t2 == tt, keff, 0.0), axis=0)
        src = d + (tt - P)
        xm = (s1[:, None] < S) & (src[None, :] >= 0) & (src[None, :] < D)
        xv = tl.load(xrow + s1[:, None] * D + src[None, :], mask=xm, other=0.0).to(tl.float32)
        acc += col[:, None] * xv
    out = tl.sum(acc, axis=0) + beff
    tl.store(out_ptr + row * D + d, out, mask=d < D)


@triton.jit
def _msidf_bwd_kernel(
    x_ptr, g_ptr, w0, w1, w2, w3, b_ptr, m_ptr,
    dx_ptr, part_ptr,
    B, D, M, ROWS,
    S: tl.constexpr, S_PAD: tl.constexpr, KS: tl.constexpr, N: tl.constexpr, P: tl.constexpr,
    T_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_D: tl.constexpr, NEED_DX: tl.constexpr,
):
    w_ptrs = (w0, w1, w2, w3)
    pid = tl.program_id(0)

    mo = tl.arange(0, M_PAD)
    ml = tl.load(m_ptr + mo, mask=mo < M, other=float("-inf")).to(tl.float32)
    e = tl.where(mo < M, tl.exp(ml - tl.max(ml, axis=0)), 0.0)
    mix = e / tl.sum(e, axis=0)

    t2 = tl.arange(0, T_PAD)[:, None]
    s2 = tl.arange(0, S_PAD)[None, :]
    keff = tl.zeros([T_PAD, S_PAD], tl.float32)
    for i in tl.static_range(N):
        wi = tl.sum(tl.where(mo == i, mix, 0.0), axis=0)
        j = t2 - P + (KS[i] - 1) // 2
        msk = (j >= 0) & (j < KS[i]) & (s2 < S)
        keff += wi * tl.load(w_ptrs[i] + s2 * KS[i] + j, mask=msk, other=0.0).to(tl.float32)

    s1 = tl.arange(0, S_PAD)
    acc_c = tl.zeros([T_PAD, S_PAD], tl.float32)
    acc_g = tl.zeros([BLOCK_D], tl.float32)
    for r in range(0, ROWS):
        row = pid * ROWS + r
        row_ok = row < B
        row64 = row.to(tl.int64)
        xrow = x_ptr + row64 * S * D
        grow = g_ptr + row64 * D
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            gv = tl.load(grow + d, mask=(d < D) & row_ok, other=0.0).to(tl.float32)
            acc_g += gv
            dxacc = tl.zeros([S_PAD, BLOCK_D], tl.float32)
            for tt in tl.static_range(2 * P + 1):
                col = tl.sum(tl.where(t2 == tt, keff, 0.0), axis=0)
                # dx[s, e] += K[t, s] * g[e - shift]
                gi = d - (tt - P)
                gs = tl.load(grow + gi, mask=(gi >= 0) & (gi < D) & row_ok, other=0.0).to(tl.float32)
                dxacc += col[:, None] * gs[None, :]
                # C[t, s] += sum_d g[d] * x[s, d + shift]
                xi = d + (tt - P)
                xm = (s1[:, None] < S) & (xi[None, :] >= 0) & (xi[None, :] < D) & row_ok
                xv = tl.load(xrow + s1[:, None] * D + xi[None, :], mask=xm, other=0.0).to(tl.float32)
                part = tl.sum(xv * gv[None, :], axis=1)
                acc_c += tl.where(t2 == tt, part[None, :], 0.0)
            if NEED_DX:
                dmask = (s1[:, None] < S) & (d[None, :] < D) & row_ok
                tl.store(dx_ptr + row64 * S * D + s1[:, None] * D + d[None, :], dxacc, mask=dmask)

    # this program's partial shift correlations and gradient sum, in its own row of a fresh
    # buffer: no atomics, and the reduction order is fixed by _msidf_bwd_reduce_kernel
    # (layout: NPROG tiles of T_PAD x S_PAD, then NPROG gradient sums)
    cmask = (t2 < 2 * P + 1) & (s2 < S)
    tl.store(part_ptr + pid * (T_PAD * S_PAD) + t2 * S_PAD + s2, tl.where(cmask, acc_c, 0.0))
    tl.store(part_ptr + tl.num_programs(0) * (T_PAD * S_PAD) + pid, tl.sum(acc_g, axis=0))


@triton.jit
def _msidf_bwd_reduce_kernel(
    part_ptr, w0, w1, w2, w3, b_ptr, m_ptr, dw0, dw1, dw2, dw3, db_ptr, dm_ptr, NPROG, M,
    S: tl.constexpr, S_PAD: tl.constexpr, KS: tl.constexpr, N: tl.constexpr, P: tl.constexpr,
    T_PAD: tl.constexpr, M_PAD: tl.constexpr, RED: tl.constexpr,
):
    # one program, launched after _msidf_bwd_kernel on the same stream: sums the partials in
    # program order (bit-identical run to run) and turns the totals into dW, db and dm
    w_ptrs = (w0, w1, w2, w3)
    dw_ptrs = (dw0, dw1, dw2, dw3)
    mo = tl.arange(0, M_PAD)
    ml = tl.load(m_ptr + mo, mask=mo < M, other=float("-inf")).to(tl.float32)
    e = tl.where(mo < M, tl.exp(ml - tl.max(ml, axis=0)), 0.0)
    mix = e / tl.sum(e, axis=0)
    t2 = tl.arange(0, T_PAD)[:, None]
    s2 = tl.arange(0, S_PAD)[None, :]
    cmask = (t2 < 2 * P + 1) & (s2 < S)
    # RED partials per iteration, summed as a tile: a fixed reduction tree, few dependent loads
    q1 = tl.arange(0, RED)
    q3 = q1[:, None, None]
    tile = (t2 * S_PAD + s2)[None, :, :]
    c = tl.zeros([T_PAD, S_PAD], tl.float32)
    gsum = tl.zeros([RED], tl.float32)
    for q0 in range(0, NPROG, RED):
        rows = q0 + q3
        c += tl.sum(tl.load(part_ptr + rows * (T_PAD * S_PAD) + tile, mask=rows < NPROG, other=0.0),
                    axis=0)
        gsum += tl.load(part_ptr + NPROG * (T_PAD * S_PAD) + q0 + q1, mask=q0 + q1 < NPROG, other=0.0)
    gsum = tl.sum(gsum, axis=0)
    c = tl.where(cmask, c, 0.0)
    dwvec = tl.zeros([M_PAD], tl.float32)
    for i in tl.static_range(N):
        wi = tl.sum(tl.where(mo == i, mix, 0.0), axis=0)
        j = t2 - P + (KS[i] - 1) // 2
        msk = (j >= 0) & (j < KS[i]) & (s2 < S)
        w_i = tl.load(w_ptrs[i] + s2 * KS[i] + j, mask=msk, other=0.0).to(tl.float32)
        tl.store(dw_ptrs[i] + s2 * KS[i] + j, wi * c, mask=msk)
        dwvec += tl.where(mo == i, tl.sum(tl.sum(w_i * c, axis=1), axis=0), 0.0)
    bias = tl.load(b_ptr + mo, mask=mo < N, other=0.0).to(tl.float32)
    dwvec += bias * gsum
    dm = mix * (dwvec - tl.sum(mix * dwvec, axis=0))
    tl.store(dm_ptr + mo, dm, mask=mo < M)
    tl.store(db_ptr + mo, mix * gsum, mask=mo < N)


def _check_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not interpret_mode():
        raise RuntimeError(
            "the Triton msidf kernel needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is "
            "imported to run on CPU tensors"
        )


def _meta(x: torch.Tensor, weights: Sequence[torch.Tensor], mix_logits: torch.Tensor) -> dict:
    _, S, D = x.shape
    ks = tuple(int(w.shape[-1]) for w in weights)
    for w, k in zip(weights, ks):
        if w.shape != (S, k) or k % 2 == 0:
            raise ValueError(f"msidf weights must be (S={S}, odd k); got {tuple(w.shape)}")
    return _meta_from(S, ks, mix_logits.numel())


def _meta_from(S: int, ks: tuple, M: int) -> dict:
    P = max(ks) // 2
    return dict(S=S, S_PAD=next_pow2(S), KS=ks, N=len(ks), P=P, T_PAD=next_pow2(2 * P + 1),
                M_PAD=next_pow2(M))


# partial rows the reduce launch sums per iteration
_RED = 32


def _fwd_block_d(D: int, meta: dict) -> int:
    return min(1024, next_pow2(D), max(64, 4096 // meta["S_PAD"]))


def _bwd_plan(B: int, D: int, meta: dict, sms: int):
    """(BLOCK_D, programs, rows per program) of the backward: a few programs per SM, whole rows
    each, so the partials to reduce stay few."""
    block_d = min(512, next_pow2(D), max(64, 2048 // meta["S_PAD"]))
    progs = min(B, 4 * sms)
    rows = triton.cdiv(B, progs)
    return block_d, triton.cdiv(B, rows), rows


def _slots(ts):
    # the kernels take MAX_BRANCHES pointer slots; unused ones repeat the first (never read)
    return tuple(ts) + (ts[0],) * (MAX_BRANCHES - len(ts))


def forward(x, weights, biases, mix_logits):
    """Triton forward: ``out (B, D)``; one launch. Also the body of ``torch.ops.lmsrr.msidf`` on
    CUDA, so launches go through ``wrap_triton`` (traceable by torch.compile)."""
    _check_device(x)
    x_c = x.contiguous()
    ws = tuple(w.contiguous() for w in weights)
    b_c, m_c = biases.contiguous(), mix_logits.contiguous()
    B, S, D = x_c.shape
    meta = _meta(x_c, ws, m_c)
    out = torch.empty((B, D), device=x.device, dtype=torch.promote_types(x.dtype, ws[0].dtype))
    if B > 0 and D > 0:
        block_d = _fwd_block_d(D, meta)
        with launch_guard(x_c):
            wrap_triton(_msidf_fwd_kernel)[(triton.cdiv(D, block_d), B)](
                x_c, *_slots(ws), b_c, m_c, out, D, m_c.numel(), BLOCK_D=block_d, num_warps=4,
                **meta,
            )
    return out


def backward(gout, x, weights, biases, mix_logits, need_dx: bool = True):
    """Triton backward: ``(dx or None, db, dm, [dW_i])``; two launches (partials, then one
    program reducing them in a fixed order). Also the body of ``torch.ops.lmsrr.msidf_backward``."""
    _check_device(x)
    x = x.contiguous()
    ws = tuple(w.contiguous() for w in weights)
    b, m = biases.contiguous(), mix_logits.contiguous()
    meta = _meta(x, ws, m)
    B, S, D = x.shape
    g = gout.contiguous()
    dx = torch.empty_like(x) if need_dx else None
    dws = [torch.empty_like(w) for w in ws]
    db = torch.empty_like(b)
    dm = torch.empty_like(m)
    if B == 0 or D == 0:
        for t in (dx, db, dm, *dws):
            if t is not None:
                t.zero_()
        return dx, db, dm, dws
    block_d, progs, rows = _bwd_plan(B, D, meta, num_sms(x.device))
    # every program writes its whole row: a fresh buffer, no memset, no persistent state
    part = _util.scratch(progs * (meta["T_PAD"] * meta["S_PAD"] + 1), torch.float32, x.device)
    with launch_guard(x):
        wrap_triton(_msidf_bwd_kernel)[(progs,)](
            x, g, *_slots(ws), b, m, dx if need_dx else x, part, B, D, m.numel(), rows,
            BLOCK_D=block_d, NEED_DX=need_dx, num_warps=4, **meta,
        )
        wrap_triton(_msidf_bwd_reduce_kernel)[(1,)](
            part, *_slots(ws), b, m, *_slots(dws), db, dm, progs, m.numel(), RED=_RED, num_warps=4,
            **meta,
        )
    return dx, db, dm, dws


class _MSIDFFunction(torch.autograd.Function):
    """The Triton kernels under autograd without the custom op: the path of a forced ``triton``
    backend on CPU tensors (the interpreter), where the op's CPU kernel is the reference."""

    @staticmethod
    def forward(ctx, x, biases, mix_logits, *weights):
        ctx.save_for_backward(x, biases, mix_logits, *weights)
        return forward(x, weights, biases, mix_logits)

    @staticmethod
    def backward(ctx, gout):
        x, b, m, *ws = ctx.saved_tensors
        dx, db, dm, dws = backward(gout, x, ws, b, m, bool(ctx.needs_input_grad[0]))
        return (dx, db, dm, *dws)


def check_args(weights, biases, mix_logits):
    if len(weights) == 0:
        raise ValueError("msidf needs at least one branch")
    if len(weights) > MAX_BRANCHES:
        raise ValueError(f"the Triton msidf takes at most {MAX_BRANCHES} branches, got {len(weights)}")
    if mix_logits.numel() < len(weights):
        raise ValueError(f"need at least {len(weights)} mixing logits, got {mix_logits.numel()}")
    if biases.numel() != len(weights):
        raise ValueError(f"need one bias per branch: {biases.numel()} biases, {len(weights)} branches")


def msidf(x, weights, biases, mix_logits):
    """Triton MSIDF fusion, same contract as :func:`kernels.msidf.reference.msidf`."""
    check_args(weights, biases, mix_logits)
    return _MSIDFFunction.apply(x, biases, mix_logits, *weights)


def launch_cases(sms: int = 132):
    """The launches of one forward and backward at the trainer's real sizes, argument for argument
    as the wrappers above make them (for :mod:`kernels.resources`): x (B, 2, 768) bf16 with
    B = 32 and 256, branches k = 3, 5, three mixing logits, on a GPU with ``sms`` multiprocessors."""
    S, D, ks, M, dt = 2, 768, (3, 5), 3, torch.bfloat16
    x = aligned(dt)
    ws = tuple(aligned(dt) for _ in ks)
    b, m, f32 = aligned(dt), aligned(dt), aligned(torch.float32)
    meta = _meta_from(S, ks, M)
    cases = []
    for B in (32, 256):
        cfg = f"B={B} S={S} D={D} k={ks} bf16"
        cases.append(Launch("msidf_fwd", cfg, _msidf_fwd_kernel,
                            (triton.cdiv(D, _fwd_block_d(D, meta)), B), (x, *_slots(ws), b, m, x, D, M),
                            dict(BLOCK_D=_fwd_block_d(D, meta), num_warps=4, **meta)))
        block_d, progs, rows = _bwd_plan(B, D, meta, sms)
        cases.append(Launch("msidf_bwd", cfg + f", {progs} programs", _msidf_bwd_kernel, (progs,),
                            (x, x, *_slots(ws), b, m, x, f32, B, D, M, rows),
                            dict(BLOCK_D=block_d, NEED_DX=True, num_warps=4, **meta)))
        cases.append(Launch("msidf_bwd_reduce", cfg, _msidf_bwd_reduce_kernel, (1,),
                            (f32, *_slots(ws), b, m, *_slots(ws), b, m, progs, M),
                            dict(RED=_RED, num_warps=4, **meta)))
    return cases
