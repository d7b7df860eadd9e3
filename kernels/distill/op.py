"""``torch.ops.lmsrr.distill`` and ``torch.ops.lmsrr.distill_backward`` as PyTorch custom ops.

``distill(h_old, h, p) -> (loss, mse)``: the loss and the per-pair means (the backward needs
them; ``mse`` carries no gradient). Defined with ``torch.library.triton_op``: on CUDA tensors the
body launches the Triton kernels through ``wrap_triton`` (seen by ``torch.compile`` as kernels,
no graph break); the CPU kernel is the pure-PyTorch reference, and the backward op's CPU kernel
the closed-form reference gradient. Triton is imported only when a CUDA tensor arrives.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from kernels.dispatch import triton_available
from kernels.distill import reference


def _use_triton(p: Tensor) -> bool:
    return p.device.type == "cuda" and triton_available()


@torch.library.triton_op("lmsrr::distill", mutates_args=())
def distill(h_old: List[Tensor], h: List[Tensor], p: Tensor) -> Tuple[Tensor, Tensor]:
    if _use_triton(p):
        from kernels.distill import triton as impl

        return impl.forward(h_old, h, p)
    # also what torch.compile traces for non-CUDA tensors (the triton op is decomposed there)
    return reference.distill_terms(h_old, h, p)


@distill.register_kernel("cpu")
def _distill_cpu(h_old, h, p):
    return reference.distill_terms(h_old, h, p)


def _acc(h_old, h, p):
    return reference._acc_dtype(h_old, h, p) if p.device.type != "cuda" else torch.float32


@distill.register_fake
def _distill_fake(h_old, h, p):
    acc = _acc(h_old, h, p)
    return p.new_empty((), dtype=acc), p.new_empty((len(h),), dtype=acc)


def _backward_list(dp, dh, h, p):
    # ops return a flat Tensor[]: (dp, dh_0, ...); an empty tensor for a gradient not needed
    empty = p.new_empty(0)
    return [dp if dp is not None else empty, *(d if d is not None else empty for d in dh)]


@torch.library.triton_op("lmsrr::distill_backward", mutates_args=())
def distill_backward(grad: Tensor, h_old: List[Tensor], h: List[Tensor], p: Tensor, mse: Tensor,
                     loss: Tensor, need_h: List[bool], need_dp: bool) -> List[Tensor]:
    if _use_triton(p):
        from kernels.distill import triton as impl

        return _backward_list(*impl.backward(grad, h_old, h, p, mse, loss, need_h, need_dp), h, p)
    return _backward_list(*reference.distill_backward(grad, h_old, h, p, mse, loss, need_h, need_dp),
                          h, p)


@distill_backward.register_kernel("cpu")
def _distill_backward_cpu(grad, h_old, h, p, mse, loss, need_h, need_dp):
    return _backward_list(*reference.distill_backward(grad, h_old, h, p, mse, loss, need_h, need_dp),
                          h, p)


@distill_backward.register_fake
def _distill_backward_fake(grad, h_old, h, p, mse, loss, need_h, need_dp):
    empty = p.new_empty(0)
    return [torch.empty_like(p) if need_dp else empty,
            *(torch.empty_like(t) if n else empty for t, n in zip(h, need_h))]


def _setup_context(ctx, inputs, output):
    h_old, h, p = inputs
    loss, mse = output
    ctx.mark_non_differentiable(mse)
    ctx.n_pairs = len(h)
    # which inputs want a gradient, known here from the real inputs (a list argument has one
    # needs_input_grad entry for the whole list)
    ctx.need_h = [bool(t.requires_grad) for t in h]
    ctx.save_for_backward(p, mse, loss, *h_old, *h)


def _backward(ctx, grad_loss, grad_mse):
    p, mse, loss, *rest = ctx.saved_tensors
    L = ctx.n_pairs
    h_old, h = rest[:L], rest[L:]
    need_dp = bool(ctx.needs_input_grad[2])
    dp, *dh = torch.ops.lmsrr.distill_backward(grad_loss, h_old, h, p, mse, loss, ctx.need_h, need_dp)
    return [None] * L, [d if n else None for d, n in zip(dh, ctx.need_h)], (dp if need_dp else None)


distill.register_autograd(_backward, setup_context=_setup_context)
