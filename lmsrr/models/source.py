"""A source: one timm model split into a frozen prefix, k trainable top units and a frozen tail.

    prefix  P_s : input -> z           forward_features stopped before the first trainable unit;
                                       frozen, eval mode, run once per input under no_grad
    blocks  T_s : z -> h_1 .. h_k       trainable units (ViT blocks or CNN stages); h_l is what ARO distils
    tail        : h_k -> f_s            what forward_features does after the units (final norm or
                                       conv), then forward_head's pooling; frozen, gradients pass through

The split is the same for every family: the units come from timm's structure (the ``blocks`` /
``stages`` / ``layers`` sequence, or feature_info's numbered stages), how forward_features uses them
is traced once, and the result is checked against the model's own features before training.

Each source resizes and normalises its input itself, from timm's data config, so sources with
different resolutions and statistics run side by side on the same native-resolution batch.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
from dataclasses import dataclass
from functools import partial

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmsrr.errors import ConfigError, UserError
from lmsrr.models import weights as wts
from lmsrr.models.spec import SourceSpec, parse_sources

log = logging.getLogger("lmsrr.models")

__all__ = ["Source", "SourceSpec", "parse_sources", "create_timm_model"]


class _Stop(Exception):
    """Raised by a hook to end ``forward_features`` early, carrying the value reached."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


@dataclass
class Split:
    unit: str  # what one unit is: "block" or "stage"
    where: str  # the units' names in the model, for messages ("blocks.0..11", "layer1..4")
    units: list[nn.Module]  # every unit, in order
    k: int  # the top k units are trained
    blocks: list[nn.Module]  # the trainable units as called (with their fixed extra arguments)
    post: list[nn.Module]  # frozen modules forward_features applies after the last unit


class _WithArgs(nn.Module):
    """A unit that ``forward_features`` calls with extra arguments fixed by the input size (EVA's
    rotary position embedding), so it can be called as ``unit(x)`` like every other unit. Tensor
    arguments live as non-persistent buffers on the unit itself, so they move with the model and
    are copied with the unit, and stay out of checkpoints."""

    def __init__(self, unit: nn.Module, kwargs: dict):
        super().__init__()
        self.unit = unit
        self.static, self.tensors = {}, []
        for key, value in kwargs.items():
            if torch.is_tensor(value):
                unit.register_buffer(f"_lmsrr_{key}", value.detach().clone(), persistent=False)
                self.tensors.append(key)
            else:
                self.static[key] = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(x, **self.static, **{k: getattr(self.unit, f"_lmsrr_{k}") for k in self.tensors})


_CONTAINERS = ("blocks", "stages", "layers")


def find_units(m: nn.Module) -> tuple[str, str, list[nn.Module]]:
    """The model's sequence of top-level units: its ``blocks`` / ``stages`` / ``layers`` container
    (ViT blocks; Swin, ConvNeXt, FastViT, LeViT stages; EfficientNet and MobileNetV3 stages of
    blocks), else the numbered run of children that ends at feature_info's deepest module
    (ResNet ``layer1..4``, RegNet ``s1..4``)."""
    for attr in _CONTAINERS:
        seq = getattr(m, attr, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 0:
            nested = all(isinstance(u, (nn.Sequential, nn.ModuleList)) for u in seq)
            unit = "block" if attr == "blocks" and not nested else "stage"
            return unit, f"{attr}.0..{len(seq) - 1}", list(seq)
    info = getattr(m, "feature_info", None) or []
    last = info[-1].get("module", "") if isinstance(info, (list, tuple)) and info else ""
    match = re.fullmatch(r"([A-Za-z_]+?)(\d+)", last)
    children = dict(m.named_children())
    if match and last in children:
        stem, i = match.group(1), 0
        while f"{stem}{i}" not in children and i < 2:
            i += 1
        units = []
        while f"{stem}{i}" in children:
            units.append(children[f"{stem}{i}"])
            i += 1
        if units and units[-1] is children[last]:
            return "stage", f"{stem}{i - len(units)}..{i - 1}", units
    raise ConfigError(
        f"{type(m).__name__} cannot be split into frozen and trainable parts: it has no "
        f"{' / '.join(_CONTAINERS)} sequence and its feature_info names no numbered stages"
    )


def _contains(parent: nn.Module, modules: set[int]) -> bool:
    return any(id(x) in modules for x in parent.modules())


def _trace(m: nn.Module, units: list[nn.Module], x: torch.Tensor) -> tuple[list[dict], list[nn.Module], str]:
    """Run ``forward_features`` once and record how it uses the units: the keyword arguments each
    receives, whether they form a chain (each unit's input is the previous unit's output), and the
    child modules applied after the last unit. Returns (kwargs per unit, post modules, problem)."""
    kwargs: list[dict] = [{} for _ in units]
    inputs: list = [None] * len(units)
    outputs: list = [None] * len(units)
    post: list[tuple[nn.Module, object, object]] = []
    ids = {id(u) for u in units}
    problems: list[str] = []
    handles = []

    def unit_pre(i, mod, args, kw):
        if len(args) != 1:
            problems.append(f"unit {i} is called with {len(args)} positional arguments")
        inputs[i] = args[0] if args else None
        kwargs[i] = dict(kw)

    def unit_out(i, mod, args, kw, out):
        outputs[i] = out

    def child_out(mod, args, out):
        if outputs[-1] is not None:
            post.append((mod, args[0] if len(args) == 1 else None, out))

    for i, u in enumerate(units):
        handles.append(u.register_forward_pre_hook(partial(unit_pre, i), with_kwargs=True))
        handles.append(u.register_forward_hook(partial(unit_out, i), with_kwargs=True))
    for _, child in m.named_children():
        if not _contains(child, ids):
            handles.append(child.register_forward_hook(child_out))
    try:
        out = m.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    if any(o is None for o in outputs):
        problems.append("forward_features does not call every unit")
    elif any(inputs[i + 1] is not outputs[i] for i in range(len(units) - 1)):
        problems.append("a unit's input is not the previous unit's output")
    else:
        prev = outputs[-1]
        for mod, inp, o in post:
            if inp is not prev:
                problems.append(f"{type(mod).__name__} after the last unit does not take its output")
                break
            prev = o
        else:
            if out is not prev:
                problems.append("forward_features changes the last unit's output other than by modules")
    return kwargs, [mod for mod, _, _ in post], "; ".join(problems)


def _fixed_kwargs(unit: nn.Module, kw: dict) -> dict:
    """The keyword arguments a unit receives that differ from its forward's defaults."""
    params = inspect.signature(unit.forward).parameters
    out = {}
    for key, value in kw.items():
        default = params[key].default if key in params else inspect.Parameter.empty
        if value is None and default is None:
            continue
        if not torch.is_tensor(value) and not torch.is_tensor(default) and value == default:
            continue
        out[key] = value
    return out


def split_model(m: nn.Module, k: int, name: str, input_size: tuple[int, int], in_chans: int) -> Split:
    try:
        unit, where, units = find_units(m)
    except ConfigError as e:
        raise ConfigError(f"source {name}: {e}") from None
    n = len(units)
    if not 1 <= k <= n:
        raise ConfigError(f"source {name}: trainable_blocks={k} but the model has {n} "
                          f"{unit}{'s' if n != 1 else ''} ({type(m).__name__} {where}); use 1..{n}")
    was = m.training
    m.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_chans, *input_size, generator=g)
    try:
        with torch.no_grad():
            kwargs, post, problem = _trace(m, units, x)
    except (RuntimeError, ValueError, AssertionError, IndexError) as e:
        raise ConfigError(f"source {name}: {type(m).__name__} does not run at input size "
                          f"{input_size[0]}x{input_size[1]} ({type(e).__name__}: {_first_line(e)}); "
                          f"choose another input_size") from e
    finally:
        m.train(was)
    if problem:
        raise ConfigError(f"source {name}: {type(m).__name__} cannot be split at its {unit}s ({where}): "
                          f"{problem}")
    blocks = []
    for u, kw in zip(units[n - k:], kwargs[n - k:]):
        fixed = _fixed_kwargs(u, kw)
        blocks.append(_WithArgs(u, fixed) if fixed else u)
    return Split(unit, where, units, k, blocks, post)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else ""


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        base = name.split(".")[0]
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f" Closest timm names: {', '.join(close)}." if close else ""
        raise ConfigError(f"unknown timm model {name!r}.{hint} See timm.list_models() for all names.")


def create_timm_model(spec: SourceSpec, weights: str) -> nn.Module:
    """``weights``: 'none', 'hub' (the local hub cache only), a weight file or a Hugging Face
    transformers ViT folder. The model is built with random weights, then the checkpoint is
    checked key by key against it and loaded (see :mod:`lmsrr.models.weights`)."""
    check_model_name(spec.name)
    what = f"source {spec.name}"
    kwargs = dict(spec.kwargs)
    kwargs["num_classes"] = 0
    state = None
    if weights not in ("none", "hub"):
        if wts.is_hf_vit_folder(weights):
            cfg = wts.hf_vit_config(weights, what)
            for key, value in wts.hf_vit_model_kwargs(cfg).items():
                kwargs.setdefault(key, value)
            state = wts.read_hf_vit_folder(weights, what)
        elif os.path.isfile(weights):
            state = wts.read_state_dict(weights, what)
        elif os.path.isdir(weights):
            raise UserError(f"{what}: {weights!r} is a folder without {wts.HF_CONFIG}; a Hugging Face ViT "
                            f"folder holds {wts.HF_CONFIG} and {' or '.join(wts.HF_WEIGHTS)}")
        else:
            raise UserError(f"{what}: weight file {weights!r} does not exist")
    model = _build(spec, kwargs)
    if weights == "hub":
        path = wts.hub_cached_file(model, what)
        wts.load_into(model, wts.read_state_dict(path, what), what, f"the cached weights {path!r}")
    elif state is not None:
        wts.load_into(model, state, what, repr(weights))
    return model


def _build(spec: SourceSpec, kwargs: dict) -> nn.Module:
    """timm.create_model with random weights; ``input_size`` also goes in as ``img_size`` for the
    models that take one (ViTs, Swin, EVA, LeViT), CNNs take any input size as is."""
    wants_img_size = spec.input_size is not None and "img_size" not in kwargs
    try:
        try:
            return timm.create_model(spec.name, pretrained=False,
                                     **({"img_size": spec.input_size} if wants_img_size else {}), **kwargs)
        except TypeError as e:
            if wants_img_size and "img_size" in str(e):
                return timm.create_model(spec.name, pretrained=False, **kwargs)
            raise
    except TypeError as e:
        raise ConfigError(f"source {spec.name}: bad keyword argument ({_first_line(e)})") from e
    except (RuntimeError, ValueError, AssertionError, ZeroDivisionError) as e:
        raise ConfigError(f"source {spec.name}: timm cannot build it with {spec.kwargs or 'its defaults'}"
                          f"{f' at input_size={spec.input_size}' if spec.input_size else ''} "
                          f"({type(e).__name__}: {_first_line(e)})") from e


class Source(nn.Module):
    def __init__(self, spec: SourceSpec, trainable_blocks: int, weights: str = "none"):
        super().__init__()
        self.spec = spec
        self.model = create_timm_model(spec, weights)
        cfg = timm.data.resolve_model_data_config(self.model)
        size = spec.input_size or self._native_size(cfg)
        self.input_size = (size, size)
        self.interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        self.in_chans = int(cfg["input_size"][0])
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, -1, 1, 1), persistent=False)
        self._split = split_model(self.model, trainable_blocks, spec.name, self.input_size, self.in_chans)
        self.input_transform = None  # set by use_input_transform (--pipeline released)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for b in self._split.blocks:
            for p in b.parameters():
                p.requires_grad_(True)
        self.has_batch_stats = any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                   for b in self._split.blocks for m in b.modules())
        self.train()
        self.width = self._check_split()

    def _native_size(self, cfg) -> int:
        pe = getattr(self.model, "patch_embed", None)
        if pe is not None and getattr(pe, "img_size", None):
            return int(pe.img_size[0])
        return int(cfg["input_size"][-1])

    @torch.no_grad()
    def _check_split(self) -> int:
        """Prefix + units + tail must compute the model's own features (forward_features, then
        forward_head's pooling) on an input other than the one the split was traced on; a model
        whose forward does something the split does not see is refused here. Returns the width."""
        was = self.training
        self.eval()
        x = torch.randn(2, self.in_chans, *self.input_size, generator=torch.Generator().manual_seed(1))
        ours = self.tail(self.run_blocks(self._split_prefix(x))[-1])
        ref = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        self.train(was)
        # On the meta device (cost counting builds weightless models) only shapes can be compared.
        same = ours.shape == ref.shape and (ours.is_meta or torch.allclose(ours, ref, rtol=1e-4, atol=1e-5))
        if not same:
            diff = (ours - ref).abs().max().item() if ours.shape == ref.shape else f"shape {tuple(ours.shape)}"
            raise ConfigError(f"source {self.spec.name}: {type(self.model).__name__} cannot be split at its "
                              f"{self._split.unit}s: the split computes other features than the model "
                              f"(max difference {diff})")
        return int(ours.shape[-1])

    @property
    def blocks(self) -> list[nn.Module]:
        return self._split.blocks

    @property
    def unit(self) -> str:
        return self._split.unit

    @property
    def n_units(self) -> int:
        return len(self._split.units)

    def train(self, mode: bool = True):
        """Only the trainable units follow ``mode``: every frozen module (prefix, final norm,
        pooling head) stays in eval mode, so its batch statistics and dropout stay fixed."""
        super().train(mode)
        self.model.eval()
        for b in self._split.blocks:
            b.train(mode)
        return self

    def use_input_transform(self, transform) -> None:
        """Take the stream's input stage (an :class:`lmsrr.inputs.InputTransform`) instead of this
        source's own resize and timm statistics; ``None`` restores them."""
        if transform is not None and ((transform.output_size,) * 2 != self.input_size or self.in_chans != 3):
            raise ConfigError(f"source {self.spec.name}: --pipeline released feeds {transform.output_size}x"
                              f"{transform.output_size} RGB inputs, this source takes {self.in_chans}-channel "
                              f"{self.input_size[0]}x{self.input_size[1]}; use --pipeline native")
        self.input_transform = transform

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] at native resolution -> this source's input."""
        if self.input_transform is not None:
            return self.input_transform(x)
        if x.shape[1] == 1 and self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and self.in_chans == 1:
            x = x.mean(1, keepdim=True)
        if tuple(x.shape[-2:]) != self.input_size:
            down = x.shape[-1] > self.input_size[-1]
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation,
                              align_corners=False, antialias=down)
        return (x - self.mean) / self.std

    def _split_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The model's own forward_features, stopped where the first trainable unit would start."""
        def stop(module, args):
            raise _Stop(args[0])

        handle = self._split.units[-self._split.k].register_forward_pre_hook(stop)
        try:
            self.model.forward_features(x)
        except _Stop as s:
            return s.value
        finally:
            handle.remove()
        raise RuntimeError("forward_features never reached the first trainable unit")  # traced at build

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._split_prefix(self.preprocess(x))

    def run_blocks(self, z: torch.Tensor, blocks: list[nn.Module] | None = None) -> list[torch.Tensor]:
        hs = []
        for b in self.blocks if blocks is None else blocks:
            z = b(z)
            hs.append(z)
        return hs

    def tail(self, h_last: torch.Tensor) -> torch.Tensor:
        """Last unit's output -> pooled feature: what forward_features applies after the units
        (final norm or conv), then forward_head's pooling. Frozen, but gradients pass through."""
        for mod in self._split.post:
            h_last = mod(h_last)
        return self.model.forward_head(h_last, pre_logits=True)
