"""ARO-weighted distillation: ``distill_loss(h_old, h, p) -> scalar float32``.

    L = sum_l p_l * mean((h_old_l - h_l)^2) / sum_l p_l        (0 when sum_l p_l == 0)

Gradients flow to h and p, never to h_old. Backend: Triton (two launches forward, one backward,
float32 accumulation for bf16/fp16 inputs) for CUDA tensors, the PyTorch reference otherwise;
override with ``LMSRR_KERNEL_BACKEND`` or :func:`kernels.set_backend`. Both run through the
custom op ``torch.ops.lmsrr.distill`` (see :mod:`kernels.distill.op`).
"""
import torch

from kernels.dispatch import get_backend, resolve
from kernels.distill import op as _op  # noqa: F401  (registers torch.ops.lmsrr.distill)
from kernels.distill.reference import distill_loss as distill_loss_reference


def distill_loss(h_old, h, p):
    choice = resolve("distill", p, has_triton_impl=True)
    if choice == "triton" and p.device.type != "cuda":
        # forced Triton on CPU tensors (the interpreter): the op's CPU kernel is the reference,
        # so run the kernels directly. Imported lazily: `import kernels.distill` must work where
        # triton does not import.
        from kernels.distill.triton import distill_loss as distill_loss_triton

        return distill_loss_triton(h_old, h, p)
    if choice == "torch" and (p.device.type == "cuda" or get_backend() == "torch"):
        # The plain reference (autograd through torch ops): on CUDA when asked for, and whenever
        # the torch backend is forced (functorch transforms such as EWC's vmap(grad) need it).
        return distill_loss_reference(h_old, h, p)
    # the custom op: Triton on CUDA, the reference on CPU; one node under torch.compile
    return torch.ops.lmsrr.distill(list(h_old), list(h), p)[0]


__all__ = ["distill_loss", "distill_loss_reference"]
