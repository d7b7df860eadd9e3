"""ARO-weighted distillation: ``distill_loss(h_old, h, p) -> scalar``."""
from kernels.dispatch import resolve
from kernels.distill.reference import distill_loss as distill_loss_reference


def distill_loss(h_old, h, p):
    resolve("distill", p, has_triton_impl=False)
    return distill_loss_reference(h_old, h, p)


__all__ = ["distill_loss", "distill_loss_reference"]
