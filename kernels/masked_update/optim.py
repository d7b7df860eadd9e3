"""``MaskedSGD`` and ``MaskedAdamW``: torch optimizers with a per-layer gate and a one-launch step.

    opt = MaskedAdamW([{"params": blk0.parameters(), "layer": 0},
                       {"params": blk1.parameters(), "layer": 1, "weight_decay": 0.0}], lr=1e-3)
    gates = torch.ones(opt.n_layers, device="cuda")       # the ARO/MLRO switch, on the device
    ...
    loss.backward()
    gates[1] = 0                                          # freeze layer 1 this step (no sync)
    opt.step(gates=gates)                                 # layer 1: params and state untouched
    opt.zero_grad()

Param groups: a list of dicts (``"layer"`` = gate index, default the group's position), a list
of lists of tensors (list i is layer i), or plain tensors (one group, layer 0). Several groups may
share a layer (e.g. decay / no-decay parameters of one block). Formulas: see
:mod:`kernels.masked_update.reference`.

Layout: at construction the trainable parameters are moved into one flat buffer (see
:class:`~kernels.masked_update.layout.FlatLayout`) and every parameter's ``.data`` becomes a view
of it; gradients and optimizer state use the same layout, so the update is a single launch.
Consequences worth knowing:

* ``.grad`` of every parameter is a view into the flat gradient buffer and ``zero_grad`` zeroes
  that buffer (one memset) instead of setting grads to ``None``; a parameter that received no
  gradient is updated with a zero gradient (weight decay and momentum still act) unless its
  layer's gate is 0. If something replaces a ``.grad`` or a parameter's storage (e.g.
  ``model.zero_grad()`` with ``set_to_none=True``, or ``module.to()``), the next ``step`` copies
  it back into the flat buffer and re-points it (correct, but extra copies).
* Parameters with ``requires_grad=False`` at construction are not managed and never updated.
* All managed parameters must share one device and one floating dtype.
* ``.grad`` is not unscaled in place when a ``grad_scale`` is used.

AMP: ``step(grad_scale=s)`` divides gradients by ``s`` inside the kernel and skips the whole step
(parameters, state and step counts untouched) when any active gradient is non-finite, decided
on the device; ``found_inf`` may also be passed in. Works with ``torch.amp.GradScaler``
(``_step_supports_amp_scaling``): ``scaler.step(opt)`` hands over its scale and inf flag.
The flag of the last step is kept in ``last_found_inf`` (a device tensor, overwritten next step).

Hyperparameters can change between steps like any torch optimizer's (``group["lr"] = ...``,
schedulers); they are uploaded to a small device table only when they change, without a sync.
``lr`` may be a tensor (a CUDA tensor is copied device-side into the table each step).

``backend="torch"|"triton"`` pins this optimizer's implementation (the reference or the Triton
kernel); the default ``None`` follows :mod:`kernels.dispatch` like every other op.
"""
from __future__ import annotations

from typing import Iterable, List, Optional

import torch

from kernels.dispatch import resolve
from kernels.masked_update import reference as _ref
from kernels.masked_update.layout import FlatLayout


def _normalise_params(params) -> list:
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors, of lists of tensors, or of dicts")
    params = list(params)
    if params and all(isinstance(p, (list, tuple)) for p in params):
        return [{"params": list(ps), "layer": i} for i, ps in enumerate(params)]
    return params


class _MaskedOptimizer(torch.optim.Optimizer):
    _step_supports_amp_scaling = True
    _state_keys: tuple = ()
    _hp_keys: tuple = ()
    _op = "masked_update"

    def __init__(self, params, defaults: dict, block_size: int = 4096, backend: Optional[str] = None):
        if backend not in (None, "torch", "triton"):
            raise ValueError(f"backend must be None (dispatch), 'torch' or 'triton', got {backend!r}")
        self._layout: Optional[FlatLayout] = None
        super().__init__(_normalise_params(params), defaults)
        self._block_size = int(block_size)
        # a trainer that chose its update backend pins it here, leaving the other ops' dispatch alone
        self._forced_backend = backend
        self._build()

    # -- construction --------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        if self._layout is not None:
            raise RuntimeError(
                f"{type(self).__name__} cannot add param groups after construction: the flat "
                "parameter layout is fixed; build a new optimizer instead"
            )
        param_group.setdefault("layer", len(self.param_groups))
        if int(param_group["layer"]) < 0:
            raise ValueError("layer ids must be non-negative")
        super().add_param_group(param_group)

    def _managed(self, group) -> List[torch.Tensor]:
        return [p for p in group["params"] if p.requires_grad]

    def _build(self) -> None:
        groups = [self._managed(g) for g in self.param_groups]
        params = [p for g in groups for p in g]
        if not params:
            raise ValueError(f"{type(self).__name__} got no trainable parameters")
        device, dtype = params[0].device, params[0].dtype
        for p in params:
            if p.device != device or p.dtype != dtype:
                raise ValueError(
                    f"{type(self).__name__} needs all trainable parameters on one device with one "
                    f"dtype; found {device}/{dtype} and {p.device}/{p.dtype}"
                )
        if not dtype.is_floating_point:
            raise ValueError("parameters must be floating point")
        layout = FlatLayout.build(
            [[p.shape for p in g] for g in groups],
            [int(g["layer"]) for g in self.param_groups],
            device,
            block=self._block_size,
        )
        self._layout = layout
        self._params = params
        with torch.no_grad():
            self._flat_params = torch.zeros(layout.numel, dtype=dtype, device=device)
            self._flat_grads = torch.zeros(layout.numel, dtype=dtype, device=device)
            self._p_views = layout.views(self._flat_params)
            self._g_views = layout.views(self._flat_grads)
            for p, pv, gv in zip(params, self._p_views, self._g_views):
                pv.copy_(p.detach())
                if p.grad is not None:
                    gv.copy_(p.grad)
                p.data = pv
                p.grad = gv
            self._flat_state = {k: torch.zeros(layout.numel, dtype=dtype, device=device) for k in self._state_keys}
            self._state_views = {k: layout.views(v) for k, v in self._flat_state.items()}
            self._steps = torch.zeros(layout.n_groups, dtype=torch.float32, device=device)
        self._bind_state()
        self._hp = torch.zeros((layout.n_groups, _ref.HP_COLS), dtype=torch.float32, device=device)
        self._hp_key = None
        self.last_found_inf: Optional[torch.Tensor] = None

    def _bind_state(self) -> None:
        # the per-parameter state torch's (de)serialisation sees is made of views of the flat buffers
        for i, p in enumerate(self._params):
            g = self._layout.param_group[i]
            st = {"step": self._steps[g]}
            for k in self._state_keys:
                st[k] = self._state_views[k][i]
            self.state[p] = st

    @property
    def n_layers(self) -> int:
        """Length the gate vector must have (max layer id + 1)."""
        return self._layout.n_layers

    @property
    def layout(self) -> FlatLayout:
        return self._layout

    def flat_buffers(self) -> dict:
        """The flat buffers (``params``, ``grads`` and each state key) and ``steps``, for inspection."""
        out = {"params": self._flat_params, "grads": self._flat_grads, "steps": self._steps}
        out.update(self._flat_state)
        return out

    # -- per-step bookkeeping ------------------------------------------------------------------
    def _sync_views(self) -> None:
        """Re-adopt parameters or gradients that were replaced behind the optimizer's back."""
        for i, p in enumerate(self._params):
            pv, gv = self._p_views[i], self._g_views[i]
            if p.data_ptr() != pv.data_ptr() or p.shape != pv.shape:
                if p.shape != pv.shape or p.dtype != pv.dtype:
                    raise RuntimeError("a managed parameter changed shape or dtype; rebuild the optimizer")
                pv.copy_(p.detach())
                p.data = pv
            grad = p.grad
            if grad is None:
                gv.zero_()
                p.grad = gv
            elif grad is not gv and grad.data_ptr() != gv.data_ptr():
                gv.copy_(grad)
                p.grad = gv

    def _hp_row(self, group) -> list:
        raise NotImplementedError

    def _hp_table(self) -> torch.Tensor:
        rows, tensor_lrs = [], []
        for g, group in enumerate(self.param_groups):
            row = self._hp_row(group)
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):
                if lr.device.type == "cpu":
                    row[0] = float(lr)  # no sync for a CPU tensor
                else:
                    row[0] = 0.0
                    tensor_lrs.append((g, lr))
            row += [0.0] * (_ref.HP_COLS - len(row))
            rows.append(row)
        key = tuple(tuple(r) for r in rows)
        if key != self._hp_key:
            src = torch.tensor(rows, dtype=torch.float32)
            if self._hp.device.type == "cuda":
                src = src.pin_memory()  # async upload; the caching host allocator keeps it alive
            self._hp.copy_(src, non_blocking=True)
            self._hp_key = key
        for g, lr in tensor_lrs:
            self._hp[g, 0].copy_(lr.reshape(()))
        return self._hp

    def _gates(self, gates) -> Optional[torch.Tensor]:
        if gates is None:
            return None
        gates = torch.as_tensor(gates)
        if gates.numel() < self.n_layers:
            raise ValueError(f"gates has {gates.numel()} entries; this optimizer has {self.n_layers} layers")
        if gates.device != self._flat_params.device:
            gates = gates.to(self._flat_params.device, non_blocking=True)
        return gates.reshape(-1)

    def _backend(self):
        from kernels.masked_update import _impl

        choice = self._forced_backend or resolve(self._op, self._flat_params, has_triton_impl=True)
        return _impl(choice)

    def _run(self, impl, gates, grad_scale, found_inf):
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None, gates=None, grad_scale=None, found_inf=None):
        """One masked step. ``gates`` (n_layers,) device tensor, nonzero = update that layer;
        ``grad_scale``: divide gradients by it and skip the step on non-finite gradients;
        ``found_inf``: a device flag, nonzero skips the step. Returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # torch.amp.GradScaler hands its scale and inf flag over as attributes
        if grad_scale is None:
            grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None:
            found_inf = getattr(self, "found_inf", None)
        device = self._flat_params.device
        if grad_scale is not None and not isinstance(grad_scale, torch.Tensor):
            grad_scale = torch.full((), float(grad_scale), dtype=torch.float32, device=device)
        if grad_scale is not None:
            grad_scale = grad_scale.to(device, non_blocking=True)
        if found_inf is not None:
            found_inf = found_inf.to(device, non_blocking=True).reshape(())
        self._sync_views()
        impl = self._backend()
        self.last_found_inf = self._run(impl, self._gates(gates), grad_scale, found_inf)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every gradient with one memset. Gradients stay views of the flat buffer whatever
        ``set_to_none`` says (dropping them would cost a copy at the next step)."""
        self._flat_grads.zero_()
        for p, gv in zip(self._params, self._g_views):
            if p.grad is not gv:
                p.grad = gv

    # -- checkpoints ---------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # torch replaced our state views with fresh tensors: copy them into the flat buffers
        with torch.no_grad():
            seen = set()
            for i, p in enumerate(self._params):
                st = self.state.get(p, {})
                g = self._layout.param_group[i]
                for k in self._state_keys:
                    if k in st and isinstance(st[k], torch.Tensor):
                        self._state_views[k][i].copy_(st[k])
                    else:
                        self._state_views[k][i].zero_()
                if g not in seen:
                    seen.add(g)
                    step = st.get("step", 0.0)
                    self._steps[g].copy_(torch.as_tensor(step, dtype=torch.float32))
        self._layout.set_layers([int(g["layer"]) for g in self.param_groups])
        self._bind_state()
        self._hp_key = None


class MaskedSGD(_MaskedOptimizer):
    """SGD with momentum, dampening, Nesterov and L2 weight decay, gated per layer.

    Per active group (``torch.optim.SGD`` semantics), d = g / grad_scale + wd * p;
    with momentum: b = d on the first step, else b = momentum * b + (1 - dampening) * d,
    d = d + momentum * b (Nesterov) or b; then p = p - lr * d. State: ``momentum_buffer``, ``step``.
    """

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, block_size: int = 4096, backend: Optional[str] = None):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov)
        super().__init__(params, defaults, block_size=block_size, backend=backend)

    def _hp_row(self, group) -> list:
        lr = group["lr"]
        return [0.0 if isinstance(lr, torch.Tensor) else float(lr), float(group["weight_decay"]),
                float(group["momentum"]), float(group["dampening"]), 1.0 if group["nesterov"] else 0.0]

    def _run(self, impl, gates, grad_scale, found_inf):
        return impl.masked_sgd_step(
            self._layout, self._flat_params, self._flat_grads, self._flat_state["momentum_buffer"],
            self._steps, self._hp_table(), gates=gates, grad_scale=grad_scale, found_inf=found_inf,
        )


class MaskedAdamW(_MaskedOptimizer):
    """AdamW (decoupled weight decay), gated per layer.

    Per active group (``torch.optim.AdamW`` semantics, t = step + 1), g = grad / grad_scale:
    p = p (1 - lr wd); m = m + (1 - b1)(g - m); v = b2 v + (1 - b2) g^2;
    p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). State: ``exp_avg``,
    ``exp_avg_sq``, ``step``. No amsgrad, no maximize.
    """

    _state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 *, block_size: int = 4096, backend: Optional[str] = None):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"invalid betas {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, block_size=block_size, backend=backend)

    def _hp_row(self, group) -> list:
        lr = group["lr"]
        b1, b2 = group["betas"]
        return [0.0 if isinstance(lr, torch.Tensor) else float(lr), float(group["weight_decay"]),
                float(b1), float(b2), float(group["eps"])]

    def _run(self, impl, gates, grad_scale, found_inf):
        return impl.masked_adamw_step(
            self._layout, self._flat_params, self._flat_grads, self._flat_state["exp_avg"],
            self._flat_state["exp_avg_sq"], self._steps, self._hp_table(), gates=gates,
            grad_scale=grad_scale, found_inf=found_inf,
        )
