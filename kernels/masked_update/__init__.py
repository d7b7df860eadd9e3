"""Masked multi-tensor optimizer step with a per-layer gate (the ARO/MLRO switch).

``MaskedSGD`` / ``MaskedAdamW`` are ``torch.optim.Optimizer`` subclasses whose ``step(gates=...)``
updates only the layers whose gate is nonzero, in a single kernel launch over a flat parameter
layout (Triton for CUDA tensors, the per-parameter PyTorch reference otherwise; override with
``LMSRR_KERNEL_BACKEND`` or :func:`kernels.set_backend`). Formulas:
:mod:`kernels.masked_update.reference`; layout: :mod:`kernels.masked_update.layout`.

The functional steps (``masked_adamw_step``, ``masked_sgd_step``) take the flat layout directly
and dispatch the same way.
"""
from kernels.dispatch import resolve
from kernels.masked_update import reference
from kernels.masked_update.layout import FlatLayout
from kernels.masked_update.optim import MaskedAdamW, MaskedSGD
from kernels.masked_update.reference import masked_adamw_step as masked_adamw_step_reference
from kernels.masked_update.reference import masked_sgd_step as masked_sgd_step_reference


def _impl(choice: str):
    if choice == "triton":
        # imported lazily: `import kernels.masked_update` must work where triton does not import
        from kernels.masked_update import triton as impl

        return impl
    return reference


def masked_adamw_step(layout, params, grads, exp_avg, exp_avg_sq, steps, hp, gates=None,
                      grad_scale=None, found_inf=None):
    impl = _impl(resolve("masked_update", params, has_triton_impl=True))
    return impl.masked_adamw_step(layout, params, grads, exp_avg, exp_avg_sq, steps, hp, gates,
                                  grad_scale, found_inf)


def masked_sgd_step(layout, params, grads, momentum_buffer, steps, hp, gates=None, grad_scale=None,
                    found_inf=None):
    impl = _impl(resolve("masked_update", params, has_triton_impl=True))
    return impl.masked_sgd_step(layout, params, grads, momentum_buffer, steps, hp, gates,
                                grad_scale, found_inf)


__all__ = [
    "FlatLayout", "MaskedAdamW", "MaskedSGD", "masked_adamw_step", "masked_sgd_step",
    "masked_adamw_step_reference", "masked_sgd_step_reference",
]
