"""ARO-weighted multi-level distillation loss in Triton: one launch forward, one backward.

    m_l = mean((h_old_l - h_l)^2)            over the n_l elements of pair l
    P   = sum_l p_l
    L   = sum_l p_l m_l / P                  (0 when P <= 0)

Backward (g = dL/dL_out, upstream scalar):

    dh_l = g * p_l / P * 2 (h_l - h_old_l) / n_l        (0 when P <= 0; h_old gets none)
    dp_k = g * (m_k - L) / P                            (0 when P <= 0)

All L pairs go to one launch: the tensors travel as tuples of pointers, every program
grid-strides over every pair, reads each element once and accumulates (h_old - h)^2 in float32
whatever the storage dtype. Per-program, per-pair partial sums go to a fresh scratch buffer and a
second one-program launch reduces them in a fixed order, so the loss is bit-identical run to run
and no state is kept between calls. The backward reads h_old and h once and writes dh once.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from torch.library import wrap_triton

from kernels import _util
from kernels._util import Launch, aligned, interpret_mode, launch_guard, next_pow2, num_sms


@triton.jit
def _distill_fwd_kernel(
    o0, o1, o2, o3, o4, o5, o6, o7, n0, n1, n2, n3, n4, n5, n6, n7, numels, partial_ptr, col0,
    L: tl.constexpr, L_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    # one chunk of at most MAX_PAIRS pairs: pair l of the chunk is column col0 + l of the partials
    old_ptrs = (o0, o1, o2, o3, o4, o5, o6, o7)
    new_ptrs = (n0, n1, n2, n3, n4, n5, n6, n7)
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    lidx = tl.arange(0, 8)
    sums = tl.zeros([8], tl.float32)
    for l in tl.static_range(L):
        acc = tl.zeros([BLOCK], tl.float32)
        # int64 offsets: the last block of a tensor near 2^31 elements must not wrap
        for start in range(pid.to(tl.int64) * BLOCK, numels[l], nprog * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < numels[l]
            a = tl.load(old_ptrs[l] + offs, mask=mask, other=0.0).to(tl.float32)
            b = tl.load(new_ptrs[l] + offs, mask=mask, other=0.0).to(tl.float32)
            diff = a - b
            acc += diff * diff
        sums += tl.where(lidx == l, tl.sum(acc, axis=0), 0.0)
    # this program's row of a fresh buffer; _distill_reduce_kernel folds the rows in order
    tl.store(partial_ptr + pid * L_PAD + col0 + lidx, sums, mask=lidx < L)


@triton.jit
def _distill_reduce_kernel(
    partial_ptr, NPROG, numels, p_ptr, loss_ptr, mse_ptr,
    L: tl.constexpr, L_PAD: tl.constexpr, RED: tl.constexpr,
):
    # one program, launched after _distill_fwd_kernel on the same stream: the per-program
    # partials are summed in a fixed order, so the loss is bit-identical run to run
    lidx = tl.arange(0, L_PAD)
    rows = tl.arange(0, RED)
    tot = tl.zeros([L_PAD], tl.float32)
    for q0 in range(0, NPROG, RED):
        q = q0 + rows
        part = tl.load(partial_ptr + q[:, None] * L_PAD + lidx[None, :], mask=q[:, None] < NPROG,
                       other=0.0)
        tot += tl.sum(part, axis=0)
    n = tl.zeros([L_PAD], tl.float32)
    for l in tl.static_range(L):
        n += tl.where(lidx == l, (numels[l] * 1.0), 0.0)
    mse = tot / tl.where(lidx < L, n, 1.0)
    p = tl.load(p_ptr + lidx, mask=lidx < L, other=0.0).to(tl.float32)
    psum = tl.sum(p, axis=0)
    weighted = tl.sum(tl.where(lidx < L, p * mse, 0.0), axis=0)
    loss = tl.where(psum > 0, weighted / tl.maximum(psum, 1e-30), 0.0)
    tl.store(loss_ptr, loss)
    tl.store(mse_ptr + lidx, mse, mask=lidx < L)


@triton.jit
def _distill_bwd_kernel(
    o0, o1, o2, o3, o4, o5, o6, o7, n0, n1, n2, n3, n4, n5, n6, n7,
    d0, d1, d2, d3, d4, d5, d6, d7, numels, col0, p_ptr, mse_ptr, loss_ptr, gout_ptr, dp_ptr,
    L: tl.constexpr, L_ALL: tl.constexpr, L_PAD: tl.constexpr, BLOCK: tl.constexpr,
    NEED: tl.constexpr, NEED_DP: tl.constexpr,
):
    # one chunk of at most MAX_PAIRS pairs (pairs col0 .. col0 + L - 1 of all L_ALL)
    old_ptrs = (o0, o1, o2, o3, o4, o5, o6, o7)
    new_ptrs = (n0, n1, n2, n3, n4, n5, n6, n7)
    grad_ptrs = (d0, d1, d2, d3, d4, d5, d6, d7)
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    lidx = tl.arange(0, L_PAD)
    gout = tl.load(gout_ptr).to(tl.float32)
    p = tl.load(p_ptr + lidx, mask=lidx < L_ALL, other=0.0).to(tl.float32)
    psum = tl.sum(p, axis=0)
    inv_p = tl.where(psum > 0, 1.0 / tl.maximum(psum, 1e-30), 0.0)
    for l in tl.static_range(L):
        if NEED[l]:
            p_l = tl.sum(tl.where(lidx == col0 + l, p, 0.0), axis=0)
            coef = gout * p_l * inv_p * 2.0 / (numels[l] * 1.0)
            for start in range(pid.to(tl.int64) * BLOCK, numels[l], nprog * BLOCK):
                offs = start + tl.arange(0, BLOCK)
                mask = offs < numels[l]
                a = tl.load(old_ptrs[l] + offs, mask=mask, other=0.0).to(tl.float32)
                b = tl.load(new_ptrs[l] + offs, mask=mask, other=0.0).to(tl.float32)
                tl.store(grad_ptrs[l] + offs, coef * (b - a), mask=mask)
    if NEED_DP:
        if pid == 0:
            mse = tl.load(mse_ptr + lidx, mask=lidx < L_ALL, other=0.0)
            loss = tl.load(loss_ptr)
            tl.store(dp_ptr + lidx, gout * (mse - loss) * inv_p, mask=lidx < L_ALL)


def _grid(numels: Sequence[int], block: int, sms: int) -> int:
    # about 4 programs per SM, then evened out so every program makes the same number of passes
    # over the biggest pair (528 programs over a (32,197,768) pair left 126 with one extra pass)
    most = max(triton.cdiv(max(numels), block), 1)
    passes = triton.cdiv(most, 4 * sms)
    return triton.cdiv(most, passes)


_BLOCK = 4096


# pointer slots per launch: torch's triton-op tracing cannot carry tuples of tensors, so each
# tensor is its own kernel argument; more pairs are processed in chunks of MAX_PAIRS
MAX_PAIRS = 8


def _slots(ts):
    return tuple(ts) + (ts[0],) * (MAX_PAIRS - len(ts))


def _chunks(n: int):
    return [(c, min(MAX_PAIRS, n - c)) for c in range(0, n, MAX_PAIRS)]


def forward(h_old, h, p):
    """Triton forward: ``(loss, mse)`` (float32 scalar and per-pair means). One launch per
    MAX_PAIRS pairs writing per-program partials, then one program reducing them in a fixed
    order. Also the body of ``torch.ops.lmsrr.distill`` on CUDA (launches via ``wrap_triton``)."""
    check_args(h_old, h, p)
    h_old = tuple(t.detach().contiguous() for t in h_old)
    h = tuple(t.contiguous() for t in h)
    device = p.device
    numels = tuple(int(t.numel()) for t in h)
    L = len(h)
    L_PAD = next_pow2(L)
    nprog = _grid(numels, _BLOCK, num_sms(device))
    # every program writes its row: a fresh buffer, no memset, no state kept between calls
    partial = _util.scratch((nprog, L_PAD), torch.float32, device)
    loss = torch.empty((), dtype=torch.float32, device=device)
    mse = torch.empty((L,), dtype=torch.float32, device=device)
    p_c = p.contiguous()
    with launch_guard(p_c):
        for c0, lc in _chunks(L):
            wrap_triton(_distill_fwd_kernel)[(nprog,)](
                *_slots(h_old[c0:c0 + lc]), *_slots(h[c0:c0 + lc]), numels[c0:c0 + lc], partial,
                c0, L=lc, L_PAD=L_PAD, BLOCK=_BLOCK, num_warps=8,
            )
        wrap_triton(_distill_reduce_kernel)[(1,)](
            partial, nprog, numels, p_c, loss, mse, L=L, L_PAD=L_PAD, RED=64, num_warps=4,
        )
    return loss, mse


def backward(gout, h_old, h, p, mse, loss, need_h, need_dp: bool):
    """Triton backward: ``(dp or None, [dh_l or None])``, dh read-once write-once per pair.
    Also the body of ``torch.ops.lmsrr.distill_backward`` on CUDA."""
    h_old = tuple(t.detach().contiguous() for t in h_old)
    h = tuple(t.contiguous() for t in h)
    L = len(h)
    numels = tuple(int(t.numel()) for t in h)
    need = tuple(bool(x) for x in need_h)
    grads = [torch.empty_like(t) if n else t for t, n in zip(h, need)]
    dp = torch.empty((L,), dtype=torch.float32, device=p.device)
    nprog = _grid(numels, _BLOCK, num_sms(p.device))
    p_c, g = p.contiguous(), gout.contiguous()
    with launch_guard(p_c):
        for k, (c0, lc) in enumerate(_chunks(L)):
            sl = slice(c0, c0 + lc)
            wrap_triton(_distill_bwd_kernel)[(nprog,)](
                *_slots(h_old[sl]), *_slots(h[sl]), *_slots(grads[sl]), numels[sl], c0, p_c, mse,
                loss, g, dp, L=lc, L_ALL=L, L_PAD=next_pow2(L), BLOCK=_BLOCK, NEED=need[sl],
                NEED_DP=need_dp and k == 0, num_warps=8,
            )
    dh = [t if n else None for t, n in zip(grads, need)]
    return (dp.to(p.dtype) if need_dp else None), dh


class _DistillFunction(torch.autograd.Function):
    """The Triton kernels under autograd without the custom op: the path of a forced ``triton``
    backend on CPU tensors (the interpreter), where the op's CPU kernel is the reference."""

    @staticmethod
    def forward(ctx, p, n_pairs, *tensors):
        h_old, h = tensors[:n_pairs], tensors[n_pairs:]
        loss, mse = forward(h_old, h, p)
        ctx.save_for_backward(p, mse, loss, *h_old, *h)
        ctx.n_pairs = n_pairs
        return loss

    @staticmethod
    def backward(ctx, gout):
        p, mse, loss, *rest = ctx.saved_tensors
        L = ctx.n_pairs
        need = ctx.needs_input_grad[2 + L:]
        dp, dh = backward(gout, rest[:L], rest[L:], p, mse, loss, need, bool(ctx.needs_input_grad[0]))
        return (dp, None, *([None] * L), *dh)


def check_args(h_old, h, p):
    if len(h_old) != len(h) or len(h) != p.numel():
        raise ValueError(
            f"distill_loss needs one weight per layer pair: got {len(h_old)} old, {len(h)} new, "
            f"{p.numel()} weights"
        )
    for a, b in zip(h_old, h):
        if a.shape != b.shape:
            raise ValueError(f"distill_loss pair shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.device != p.device or b.device != p.device:
            raise ValueError("distill_loss: h_old, h and p must be on one device")
    if p.device.type != "cuda" and not interpret_mode():
        raise RuntimeError(
            "the Triton distill kernel needs CUDA tensors, or TRITON_INTERPRET=1 set before triton "
            "is imported to run on CPU tensors"
        )


def distill_loss(h_old, h, p):
    """Triton distillation loss, same contract as :func:`kernels.distill.reference.distill_loss`."""
    check_args(h_old, h, p)
    return _DistillFunction.apply(p, len(h), *h_old, *h)


def launch_cases(sms: int = 132):
    """The launches of one forward and backward at the trainer's real size, argument for argument
    as the wrappers above make them (for :mod:`kernels.resources`): 2 sources x 3 ViT-B/16 layers,
    six (32, 197, 768) bf16 pairs, on a GPU with ``sms`` multiprocessors (H100 SXM: 132)."""
    L, dt = 6, torch.bfloat16
    numels = (32 * 197 * 768,) * L
    olds = tuple(aligned(dt) for _ in range(L))
    news = tuple(aligned(dt) for _ in range(L))
    f32 = aligned(torch.float32)
    nprog = _grid(numels, _BLOCK, sms)
    cfg = f"6 x (32,197,768) bf16, {nprog} programs"
    return [
        Launch("distill_fwd", cfg, _distill_fwd_kernel, (nprog,),
               (*_slots(olds), *_slots(news), numels, f32, 0),
               dict(L=L, L_PAD=8, BLOCK=_BLOCK, num_warps=8)),
        Launch("distill_reduce", cfg, _distill_reduce_kernel, (1,),
               (f32, nprog, numels, f32, f32, f32), dict(L=L, L_PAD=8, RED=64, num_warps=4)),
        Launch("distill_bwd", cfg, _distill_bwd_kernel, (nprog,),
               (*_slots(olds), *_slots(news), *_slots(news), numels, 0, f32, f32, f32, f32, f32),
               dict(L=L, L_ALL=L, L_PAD=8, BLOCK=_BLOCK, NEED=(True,) * L, NEED_DP=True,
                    num_warps=8)),
    ]
