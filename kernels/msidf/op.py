"""``torch.ops.lmsrr.msidf`` and ``torch.ops.lmsrr.msidf_backward``: MSIDF as PyTorch custom ops.

Defined with ``torch.library.triton_op``: on CUDA tensors the body launches the Triton kernels
through ``wrap_triton``, so ``torch.compile`` sees the kernels themselves (no graph break, and
Inductor can schedule them); the CPU kernel is the pure-PyTorch reference. The backward is its
own op (Triton on CUDA, the closed-form reference gradient on CPU), attached with
``register_autograd``. Triton is imported only when a CUDA tensor arrives, so registering the
ops works where triton does not import (the reference then serves every device).
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from kernels.dispatch import triton_available
from kernels.msidf import reference


def _use_triton(x: Tensor) -> bool:
    return x.device.type == "cuda" and triton_available()


@torch.library.triton_op("lmsrr::msidf", mutates_args=())
def msidf(x: Tensor, weights: List[Tensor], biases: Tensor, mix_logits: Tensor) -> Tensor:
    if _use_triton(x):
        from kernels.msidf import triton as impl

        impl.check_args(weights, biases, mix_logits)
        return impl.forward(x, weights, biases, mix_logits)
    # also what torch.compile traces for non-CUDA tensors (the triton op is decomposed there)
    return reference.msidf(x, weights, biases, mix_logits)


@msidf.register_kernel("cpu")
def _msidf_cpu(x, weights, biases, mix_logits):
    return reference.msidf(x, weights, biases, mix_logits)


@msidf.register_fake
def _msidf_fake(x, weights, biases, mix_logits):
    B, _, D = x.shape
    return x.new_empty((B, D), dtype=torch.promote_types(x.dtype, weights[0].dtype))


def _backward_list(dx, db, dm, dws, x):
    # ops return a flat Tensor[]: (dx, db, dm, dW_0, ...); an empty dx when it is not needed
    return [dx if dx is not None else x.new_empty(0), db, dm, *dws]


@torch.library.triton_op("lmsrr::msidf_backward", mutates_args=())
def msidf_backward(grad: Tensor, x: Tensor, weights: List[Tensor], biases: Tensor,
                   mix_logits: Tensor, need_dx: bool) -> List[Tensor]:
    if _use_triton(x):
        from kernels.msidf import triton as impl

        return _backward_list(*impl.backward(grad, x, weights, biases, mix_logits, need_dx), x)
    return _backward_list(*reference.msidf_backward(grad, x, weights, biases, mix_logits, need_dx), x)


@msidf_backward.register_kernel("cpu")
def _msidf_backward_cpu(grad, x, weights, biases, mix_logits, need_dx):
    return _backward_list(*reference.msidf_backward(grad, x, weights, biases, mix_logits, need_dx), x)


@msidf_backward.register_fake
def _msidf_backward_fake(grad, x, weights, biases, mix_logits, need_dx):
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    return [dx, torch.empty_like(biases), torch.empty_like(mix_logits),
            *(torch.empty_like(w) for w in weights)]


def _setup_context(ctx, inputs, output):
    x, weights, biases, mix_logits = inputs
    ctx.save_for_backward(x, biases, mix_logits, *weights)


def _backward(ctx, grad):
    x, biases, mix_logits, *weights = ctx.saved_tensors
    need_dx = bool(ctx.needs_input_grad[0])
    dx, db, dm, *dws = torch.ops.lmsrr.msidf_backward(grad, x, weights, biases, mix_logits, need_dx)
    return (dx if need_dx else None), list(dws), db, dm


msidf.register_autograd(_backward, setup_context=_setup_context)
