"""How the optimizer step runs (``--update-backend``): which implementation, why, and building it.

Backends of the SGD (momentum, weight decay) and AdamW step:

    torch   torch.optim (torch's default foreach / per-tensor loop); when the method gates updates
            per step, the pure-PyTorch reference of the masked update instead (the gates stay on
            the device)
    fused   torch.optim with ``fused=True``
    triton  ``kernels.masked_update`` (MaskedSGD / MaskedAdamW): one launch over a flat buffer
            holding every trainable parameter, gates honoured on the device
    apex    NVIDIA apex's ``FusedSGD`` / ``FusedAdam`` (adam_w_mode), when ``apex.optimizers``
            imports with its CUDA extensions
    auto    triton on CUDA (when triton imports), torch elsewhere

The choice is made once per run, before any work: a backend that cannot run here, or that cannot
honour per-step gates when the method asks for them, is a :class:`ConfigError` (exit 2) saying
why and what to do instead.

Optimizer state stays in torch's ``state_dict`` format for every backend (the masked optimizers
expose per-parameter views of their flat buffers), so checkpoints and exact resume work the same.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

import kernels.dispatch
from kernels.masked_update import MaskedAdamW, MaskedSGD
from lmsrr.errors import ConfigError

log = logging.getLogger("lmsrr")

UPDATE_BACKENDS = ("auto", "torch", "fused", "triton", "apex")
# Backends whose step can leave a parameter group untouched on a device-side flag, without a sync.
GATED_BACKENDS = ("torch", "triton")

APEX_HOWTO = (
    "NVIDIA apex must be built from NVIDIA's source with its CUDA extensions "
    "(git clone https://github.com/NVIDIA/apex && cd apex && pip install -v --no-build-isolation "
    "--config-settings '--build-option=--cpp_ext' --config-settings '--build-option=--cuda_ext' .); "
    "the registry's package named 'apex' is an unrelated project and must not be installed. "
    "Without apex, --update-backend fused (torch's fused optimizers) or triton do the same job"
)


@dataclass(frozen=True)
class UpdateBackend:
    """The resolved backend: ``name`` (torch, fused, triton or apex), why it was chosen, and
    whether the method gates updates per step (then the optimizer is a masked one)."""

    requested: str
    name: str
    reason: str
    gated: bool

    @property
    def masked(self) -> bool:
        """Whether steps run through ``kernels.masked_update`` (and accept gates)."""
        return self.name == "triton" or (self.name == "torch" and self.gated)

    @property
    def implementation(self) -> str:
        if self.name == "triton":
            return "kernels.masked_update (Triton)"
        if self.name == "torch":
            return "kernels.masked_update reference (PyTorch)" if self.gated else "torch.optim"
        if self.name == "fused":
            return "torch.optim (fused=True)"
        return "apex.optimizers"

    def record(self) -> dict:
        """What config.json and results.json keep about the choice."""
        return {"requested": self.requested, "backend": self.name, "implementation": self.implementation,
                "reason": self.reason, "gated_updates": self.gated}

    def build(self, groups: list[list[torch.nn.Parameter]], optim_cfg) -> torch.optim.Optimizer:
        """An optimizer over ``groups`` (group i is switched by gate i of :meth:`step`; without
        gating the groups are simply concatenated, in order)."""
        kw = _hyperparameters(optim_cfg)
        if self.masked:
            cls = MaskedSGD if optim_cfg.optimizer == "sgd" else MaskedAdamW
            param_groups = [{"params": list(ps), "layer": i} for i, ps in enumerate(groups) if ps]
            return cls(param_groups, backend=self.name, **kw)
        params = [p for ps in groups for p in ps]
        if self.name == "apex":
            return _apex_optimizer(params, optim_cfg.optimizer, kw)
        cls = torch.optim.SGD if optim_cfg.optimizer == "sgd" else torch.optim.AdamW
        if self.name == "fused":
            return cls(params, fused=True, **kw)
        return cls(params, **kw)

    def step(self, opt: torch.optim.Optimizer, scaler, gates: torch.Tensor | None) -> None:
        """One optimizer step. ``gates``: a device tensor, one entry per group given to
        :meth:`build` (0 = leave that group's parameters and state untouched), or None.
        Under ``scaler`` (fp16) a step with a non-finite gradient is skipped: on the device for
        the masked and fused optimizers (they take the scaler's inf flag), by the scaler's own
        check otherwise."""
        kwargs = {}
        if gates is not None:
            if not self.masked:  # resolve() refuses this combination; reaching it is a bug
                raise RuntimeError(f"update backend {self.name!r} cannot apply per-step gates")
            kwargs["gates"] = gates
        if scaler is not None:
            scaler.step(opt, **kwargs)
            scaler.update()
        else:
            opt.step(**kwargs)


def _hyperparameters(optim_cfg) -> dict:
    if optim_cfg.optimizer == "sgd":
        return dict(lr=optim_cfg.lr, momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay)
    return dict(lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)


def _triton_problem() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as e:  # missing or broken install: say which
        return f"triton does not import ({type(e).__name__}: {e})"
    return None


def apex_problem() -> str | None:
    """None when apex's fused optimizers can run, else why not."""
    try:
        import apex
    except ImportError:
        return "NVIDIA apex is not installed here (apex.optimizers does not import)"
    try:
        import apex.optimizers  # noqa: F401
    except ImportError:
        where = getattr(apex, "__file__", None) or "an unknown location"
        return (f"the module 'apex' found at {where} is not NVIDIA apex (it has no apex.optimizers; "
                f"the registry's 'apex' is an unrelated package: uninstall it)")
    try:
        import amp_C  # noqa: F401  (apex's CUDA extension: FusedSGD / FusedAdam launch through it)
    except ImportError:
        return "apex.optimizers imports, but apex was built without its CUDA extensions (amp_C is missing)"
    return None


def _apex_optimizer(params, optimizer: str, kw: dict) -> torch.optim.Optimizer:
    from apex.optimizers import FusedAdam, FusedSGD

    if optimizer == "sgd":
        return FusedSGD(params, **kw)
    # torch.optim.AdamW's defaults (betas, eps) and decoupled weight decay
    return FusedAdam(params, adam_w_mode=True, betas=(0.9, 0.999), eps=1e-8, **kw)


def resolve_update_backend(requested: str, device: torch.device, gated_by: str | None) -> UpdateBackend:
    """Pick the backend for ``device``; ``gated_by``: the option that makes the method hand
    per-step gates to the optimizer (named in messages), or None. Raises :class:`ConfigError` when the
    requested backend cannot run here or cannot honour the gates. Logs the choice once."""
    if requested not in UPDATE_BACKENDS:
        raise ConfigError(f"update_backend={requested!r}: choose one of {', '.join(UPDATE_BACKENDS)}")
    flag = f"--update-backend {requested}"
    gated = gated_by is not None
    if requested == "auto":
        problem = _triton_problem()
        if device.type == "cuda" and problem is None:
            name, reason = "triton", "auto: CUDA device and triton imports"
        elif device.type == "cuda":
            name, reason = "torch", f"auto: {problem}"
        else:
            name, reason = "torch", f"auto: {device.type} device (Triton runs on CUDA)"
    else:
        name, reason = requested, "requested"
    if gated and name not in GATED_BACKENDS:
        raise ConfigError(
            f"{flag} cannot apply {gated_by}: its step updates every parameter and could only "
            f"skip a layer after a host sync each step. Use --update-backend triton (CUDA) or "
            f"torch (any device), which leave gated-off layers untouched on the device"
        )
    if name == "triton":
        problem = _triton_problem()
        if problem:
            raise ConfigError(f"{flag}: {problem}; install triton (it ships with torch's CUDA "
                              f"wheels) or use --update-backend torch")
        if device.type != "cuda" and not kernels.dispatch.interpret_mode():
            raise ConfigError(
                f"{flag}: Triton kernels run on CUDA devices and this run is on {device.type}. "
                f"Use --update-backend torch here, or set TRITON_INTERPRET=1 to run the kernel in "
                f"Triton's CPU interpreter (slow: for tests)"
            )
        if device.type != "cuda":
            reason += " (TRITON_INTERPRET=1: Triton's CPU interpreter)"
    if name == "apex":
        problem = apex_problem()
        if problem:
            raise ConfigError(f"{flag}: {problem}. {APEX_HOWTO}")
        if device.type != "cuda":
            raise ConfigError(f"{flag}: apex's fused optimizers run on CUDA devices only and this run "
                              f"is on {device.type}; use --update-backend torch or fused")
    backend = UpdateBackend(requested, name, reason, gated)
    log.info("update backend: %s, %s (%s)", name, backend.implementation, reason)
    return backend
