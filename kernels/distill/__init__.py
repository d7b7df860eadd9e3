"""ARO-weighted distillation: ``distill_loss(h_old, h, p) -> scalar float32``.

    L = sum_l p_l * mean((h_old_l - h_l)^2) / sum_l p_l        (0 when sum_l p_l == 0)

Gradients flow to h and p, never to h_old. Backend: Triton (one launch forward, one backward,
float32 accumulation for bf16/fp16 inputs) for CUDA tensors, the PyTorch reference otherwise;
override with ``LMSRR_KERNEL_BACKEND`` or :func:`kernels.set_backend`.
"""
from kernels.dispatch import resolve
from kernels.distill.reference import distill_loss as distill_loss_reference


def distill_loss(h_old, h, p):
    if resolve("distill", p, has_triton_impl=True) == "triton":
        # imported lazily: `import kernels.distill` must work where triton does not import
        from kernels.distill.triton import distill_loss as distill_loss_triton

        return distill_loss_triton(h_old, h, p)
    return distill_loss_reference(h_old, h, p)


__all__ = ["distill_loss", "distill_loss_reference"]
