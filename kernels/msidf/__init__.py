"""MSIDF multi-scale fusion: ``msidf(x, weights, biases, mix_logits) -> (B, D)``.

    out[b, d] = sum_{i<n} softmax(m)_i * (b_i + sum_s sum_j W_i[s, j] x[b, s, d + j - (k_i - 1)/2])

x (B, S, D); weights: n tensors (S, k_i) with odd k_i; biases (n,); mix_logits (M,), M >= n.
Backend: Triton (one launch forward, two backward) for CUDA tensors, the PyTorch reference
otherwise; override with ``LMSRR_KERNEL_BACKEND`` or :func:`kernels.set_backend`. Both run
through the custom op ``torch.ops.lmsrr.msidf`` (see :mod:`kernels.msidf.op`).
"""
import torch

from kernels.dispatch import get_backend, resolve
from kernels.msidf import op as _op  # noqa: F401  (registers torch.ops.lmsrr.msidf)
from kernels.msidf.reference import msidf as msidf_reference


def msidf(x, weights, biases, mix_logits):
    choice = resolve("msidf", x, has_triton_impl=True)
    if choice == "triton" and x.device.type != "cuda":
        # forced Triton on CPU tensors (the interpreter): the op's CPU kernel is the reference,
        # so run the kernels directly. Imported lazily: `import kernels.msidf` must work where
        # triton does not import.
        from kernels.msidf.triton import msidf as msidf_triton

        return msidf_triton(x, weights, biases, mix_logits)
    if choice == "torch" and (x.device.type == "cuda" or get_backend() == "torch"):
        # The plain reference (autograd through torch ops): on CUDA when asked for, and whenever
        # the torch backend is forced (functorch transforms such as EWC's vmap(grad) need it).
        return msidf_reference(x, weights, biases, mix_logits)
    # the custom op: Triton on CUDA, the reference on CPU; one node under torch.compile
    return torch.ops.lmsrr.msidf(x, list(weights), biases, mix_logits)


__all__ = ["msidf", "msidf_reference"]
