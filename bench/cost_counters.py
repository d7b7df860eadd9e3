"""Counters of what running a piece of code costs, exact and independent of the machine's speed.

One :func:`counting` pass measures, for everything dispatched inside it (forward, backward and
optimizer ops alike):

- ``flops``: the formulas of torch's FLOP counter (``torch.utils.flop_counter``), with the CPU
  attention kernel given the formula of its CUDA twins;
- ``ops``: aten operators dispatched (a ``TorchDispatchMode`` below autograd and autocast, so
  backward and optimizer kernels are counted, and composite operators as what they run);
- ``saved_bytes``: bytes of the tensors autograd saves for backward (``saved_tensors_hooks``),
  each storage once, the model's own parameters and buffers left out: the activation memory;
- ``syncs``: host synchronisations: reading a tensor's value on the host (``.item()``, ``bool()``,
  ``int()``, ``float()``: ``aten._local_scalar_dense``; ``.tolist()``, ``.numpy()``), operators
  whose output shape depends on the data (``nonzero``, boolean-mask indexing, ``unique``, ...),
  and device-to-host copies. On a GPU each of them stalls the host until the device catches up.

Under ``FakeTensorMode`` (no data) a tensor's value cannot be read: with ``fake=True`` a host read
is counted and answered with 1 (``True`` for booleans), so code that branches on a value still runs
and every read is counted; which branch real data would take is not known there.

:func:`compile_events` reads dynamo's counters (``torch._dynamo.utils.counters``), which count
what dynamo traces, graph breaks and recompilations included, whatever backend then compiles.
"""
from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten

# Operators that always need the value of a tensor on the host: a scalar read, or an output whose
# size depends on the data (the host must learn the size before it can allocate the result).
SYNC_OPS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.equal.default,
    aten.bincount.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
    aten._unique.default,
    aten._unique2.default,
    aten.repeat_interleave.Tensor,  # without output_size the output length is data
}
# Indexing with a boolean mask finds the mask's true positions first (a nonzero).
MASK_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                  aten._index_put_impl_.default}
COPY_OPS = {aten._to_copy.default, aten.copy_.default}
# Questions about a tensor's metadata, not work: FakeTensor answers some of them through the
# dispatcher (``t.device`` is ``prim.device``), a real tensor never does.
METADATA_OPS = {
    torch.ops.prim.device.default, torch.ops.prim.layout.default,
    aten.size.default, aten.sym_size.default, aten.stride.default, aten.sym_stride.default,
    aten.storage_offset.default, aten.sym_storage_offset.default, aten.numel.default,
    aten.sym_numel.default, aten.dim.default, aten.is_contiguous.default,
    aten.is_contiguous.memory_format, aten.sym_is_contiguous.default,
    aten.is_strides_like_format.default, aten.is_non_overlapping_and_dense.default,
}
HOST = ("cpu", "meta")

# torch's counter has formulas for the CUDA attention kernels only; the CPU kernel computes the
# same products with the same signature (query, key, value, ...; backward: grad_out first).
CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        flop_registry[aten._scaled_dot_product_flash_attention],
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        flop_registry[aten._scaled_dot_product_flash_attention_backward],
}
FLOP_FORMULAS = {**flop_registry, **CPU_ATTENTION_FLOPS}


def _sync_reason(func, args, kwargs) -> str | None:
    """The name a host sync is counted under, or None when ``func`` does not sync."""
    if func in SYNC_OPS:
        if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is not None:
            return None
        return str(func)
    if func in MASK_INDEX_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return f"{func} (boolean mask)"
        return None
    if func in COPY_OPS:
        if func is aten.copy_.default:
            dst, src = args[0], args[1]
            to_host = dst.device.type in HOST and src.device.type not in HOST
        else:
            device = kwargs.get("device")
            to_host = (device is not None and torch.device(device).type in HOST
                       and args[0].device.type not in HOST)
        return f"{func} (device to host)" if to_host else None
    return None


def _stub_scalar(t: torch.Tensor):
    """What a host read returns under FakeTensorMode: 1 in the tensor's kind."""
    if t.dtype == torch.bool:
        return True
    return 1.0 if t.is_floating_point() or t.is_complex() else 1


class OpCounter(TorchDispatchMode):
    """Counts aten operators, their FLOPs and host syncs dispatched while active.

    FLOPs come from the formulas of torch's FLOP counter (``FlopCounterMode``'s registry, plus
    :data:`CPU_ATTENTION_FLOPS`), applied here rather than through a second dispatch mode, which
    would add a third to the cost of every operator counted under FakeTensorMode;
    ``tests/test_costs.py`` checks that both give the same total."""

    def __init__(self, fake: bool = False):
        super().__init__()
        self.fake = fake
        self.ops = 0
        self.flops = 0
        self.syncs: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in METADATA_OPS:
            return func(*args, **kwargs)
        self.ops += 1
        reason = _sync_reason(func, args, kwargs)
        if reason is not None:
            self.syncs[reason] += 1
            if self.fake and func is aten._local_scalar_dense.default:
                return _stub_scalar(args[0])
        out = func(*args, **kwargs)
        formula = FLOP_FORMULAS.get(getattr(func, "_overloadpacket", None))
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out

    def count_host_read(self, what: str) -> None:
        self.syncs[what] += 1


def storage_key(t: torch.Tensor) -> int:
    """Identity of a tensor's storage (views share it; real and fake tensors alike)."""
    return t.untyped_storage()._cdata


def state_storages(*objects) -> dict[int, object]:
    """The storages of every tensor in ``objects`` (modules, tensors, dicts and lists of them),
    by key. Holding them keeps their keys from being reused while they are compared."""
    found: dict[int, object] = {}

    def visit(o):
        if isinstance(o, torch.Tensor):
            found[storage_key(o)] = o.untyped_storage()
        elif isinstance(o, torch.nn.Module):
            for t in o.state_dict(keep_vars=True).values():
                visit(t)
            for p in o.parameters():
                visit(p)
        elif isinstance(o, dict):
            for v in o.values():
                visit(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                visit(v)

    for o in objects:
        visit(o)
    return found


def tensor_bytes(*objects) -> int:
    """Bytes of the distinct storages of every tensor in ``objects`` (as :func:`state_storages`)."""
    seen: dict[int, int] = {}

    def visit(o):
        if isinstance(o, torch.Tensor):
            s = o.untyped_storage()
            seen[s._cdata] = s.nbytes()
        elif isinstance(o, torch.nn.Module):
            for t in o.state_dict(keep_vars=True).values():
                visit(t)
        elif isinstance(o, dict):
            for v in o.values():
                visit(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                visit(v)

    for o in objects:
        visit(o)
    return sum(seen.values())


class SavedBytes:
    """Bytes autograd saves for backward, each storage once, ``exclude``'d storages left out."""

    def __init__(self, exclude: dict[int, object]):
        self.exclude = exclude
        self.storages: dict[int, tuple[int, object]] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in self.exclude:
            # Holding the storage keeps its address from being reused by a later one.
            self.storages[s._cdata] = (s.nbytes(), s)
        return t

    @property
    def total(self) -> int:
        return sum(n for n, _ in self.storages.values())


@dataclass
class Counts:
    flops: int = 0
    ops: int = 0
    saved_bytes: int = 0
    syncs: int = 0
    sync_ops: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def counting(exclude: dict[int, object] | None = None, fake: bool = False):
    """Count everything dispatched in the ``with`` body into the yielded :class:`Counts`
    (filled in on exit). ``exclude``: storages that are not activations (the model's state,
    from :func:`state_storages`)."""
    counts = Counts()
    ops = OpCounter(fake)
    saved = SavedBytes(exclude or {})
    tolist, to_numpy = torch.Tensor.tolist, torch.Tensor.numpy

    # .tolist() and .numpy() read a CPU tensor's memory without dispatching any operator.
    def counted_tolist(t, *a, **k):
        ops.count_host_read("Tensor.tolist")
        return np.ones(tuple(t.shape)).tolist() if fake else tolist(t, *a, **k)

    def counted_numpy(t, *a, **k):
        ops.count_host_read("Tensor.numpy")
        return np.ones(tuple(t.shape)) if fake else to_numpy(t, *a, **k)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(torch.Tensor, "tolist", counted_tolist))
        stack.enter_context(mock.patch.object(torch.Tensor, "numpy", counted_numpy))
        stack.enter_context(ops)
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t))
        yield counts
    counts.flops = ops.flops
    counts.ops = ops.ops
    counts.saved_bytes = saved.total
    counts.sync_ops = dict(sorted(ops.syncs.items()))
    counts.syncs = sum(ops.syncs.values())


def compile_events() -> dict[str, int]:
    """Dynamo's running totals: frames compiled (a recompilation is one more) and graph breaks."""
    from torch._dynamo.utils import counters

    return {"compiled_frames": int(counters["frames"]["ok"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def reset_compile_state() -> None:
    """Forget every compiled frame and zero dynamo's counters."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
