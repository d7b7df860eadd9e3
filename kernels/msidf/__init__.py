"""MSIDF multi-scale fusion: ``msidf(x, weights, biases, mix_logits) -> (B, D)``."""
from kernels.dispatch import resolve
from kernels.msidf.reference import msidf as msidf_reference


def msidf(x, weights, biases, mix_logits):
    resolve("msidf", x, has_triton_impl=False)
    return msidf_reference(x, weights, biases, mix_logits)


__all__ = ["msidf", "msidf_reference"]
