"""MSIDF multi-scale fusion: ``msidf(x, weights, biases, mix_logits) -> (B, D)``.

    out[b, d] = sum_{i<n} softmax(m)_i * (b_i + sum_s sum_j W_i[s, j] x[b, s, d + j - (k_i - 1)/2])

x (B, S, D); weights: n tensors (S, k_i) with odd k_i; biases (n,); mix_logits (M,), M >= n.
Backend: Triton (one launch forward, one backward) for CUDA tensors, the PyTorch reference
otherwise; override with ``LMSRR_KERNEL_BACKEND`` or :func:`kernels.set_backend`.
"""
from kernels.dispatch import resolve
from kernels.msidf.reference import msidf as msidf_reference


def msidf(x, weights, biases, mix_logits):
    if resolve("msidf", x, has_triton_impl=True) == "triton":
        # imported lazily: `import kernels.msidf` must work where triton does not import
        from kernels.msidf.triton import msidf as msidf_triton

        return msidf_triton(x, weights, biases, mix_logits)
    return msidf_reference(x, weights, biases, mix_logits)


__all__ = ["msidf", "msidf_reference"]
