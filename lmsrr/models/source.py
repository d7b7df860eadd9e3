"""A source: one timm model split into a frozen prefix and k trainable top blocks.

    prefix  P_s : input -> z           frozen, eval mode, run once per input under no_grad
    blocks  T_s : z -> h_1 .. h_k       trainable (ViT blocks or CNN stages); h_l is what ARO distils
    tail        : h_k -> f_s            frozen parameters (final norm, pooling), gradients pass through

Each source resizes and normalises its input itself, from timm's data config, so sources with
different resolutions and statistics run side by side on the same native-resolution batch.
"""
from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from typing import Callable

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer

from lmsrr.errors import ConfigError, UserError
from lmsrr.models.spec import SourceSpec, parse_sources

log = logging.getLogger("lmsrr.models")

__all__ = ["Source", "SourceSpec", "parse_sources", "create_timm_model"]


@dataclass
class Split:
    family: str
    prefix_modules: list[nn.Module]  # frozen modules run by `prefix`
    prefix: Callable[[torch.Tensor], torch.Tensor]
    blocks: list[nn.Module]  # trainable, in order
    tail_modules: list[nn.Module]  # frozen modules after the blocks (norm, pooling)
    tail: Callable[[torch.Tensor], torch.Tensor]


def _split_vit(m: VisionTransformer, k: int) -> Split:
    n = len(m.blocks)
    frozen_blocks = list(m.blocks[: n - k])

    def prefix(x):
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for b in frozen_blocks:
            x = b(x)
        return x

    return Split("vit", [m.patch_embed, m.patch_drop, m.norm_pre, *frozen_blocks], prefix,
                 list(m.blocks[n - k:]), [m.norm, m.fc_norm, m.head_drop] + ([m.attn_pool] if m.attn_pool is not None else []),
                 lambda h: m.forward_head(m.norm(h), pre_logits=True))


def _split_stages(m: nn.Module, k: int) -> Split:
    """Models with ``stem`` + ``stages`` (ConvNeXt and relatives)."""
    n = len(m.stages)
    frozen = list(m.stages[: n - k])
    norm_pre = getattr(m, "norm_pre", nn.Identity())

    def prefix(x):
        x = m.stem(x)
        for s in frozen:
            x = s(x)
        return x

    return Split("stages", [m.stem, *frozen], prefix, list(m.stages[n - k:]), [norm_pre, m.head],
                 lambda h: m.forward_head(norm_pre(h), pre_logits=True))


def _split_resnet(m: ResNet, k: int) -> Split:
    layers = [m.layer1, m.layer2, m.layer3, m.layer4]
    frozen = layers[: 4 - k]
    stem = [m.conv1, m.bn1, m.act1, m.maxpool]

    def prefix(x):
        for mod in stem + frozen:
            x = mod(x)
        return x

    return Split("resnet", stem + frozen, prefix, layers[4 - k:], [m.global_pool],
                 lambda h: m.forward_head(h, pre_logits=True))


def _n_units(m: nn.Module) -> tuple[str, int]:
    if isinstance(m, VisionTransformer):
        return "vit", len(m.blocks)
    if isinstance(m, ResNet):
        return "resnet", 4
    if hasattr(m, "stem") and isinstance(getattr(m, "stages", None), (nn.Sequential, nn.ModuleList)):
        return "stages", len(m.stages)
    raise ConfigError(
        f"{type(m).__name__} has no known block structure; supported source families are timm "
        f"VisionTransformer models (split by blocks), ResNets (split by stages) and models with "
        f"'stem' + 'stages' such as ConvNeXt (split by stages)"
    )


def split_model(m: nn.Module, k: int, name: str) -> Split:
    family, n = _n_units(m)
    if not 1 <= k <= n:
        raise ConfigError(f"source {name}: trainable_blocks={k} but the model has {n} "
                          f"{'blocks' if family == 'vit' else 'stages'}")
    return {"vit": _split_vit, "resnet": _split_resnet, "stages": _split_stages}[family](m, k)


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        base = name.split(".")[0]
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f" Closest timm names: {', '.join(close)}." if close else ""
        raise ConfigError(f"unknown timm model {name!r}.{hint} See timm.list_models() for all names.")


def create_timm_model(spec: SourceSpec, weights: str) -> nn.Module:
    """``weights``: 'none', 'hub' (a warm hub cache) or a local file path."""
    check_model_name(spec.name)
    kwargs = dict(spec.kwargs)
    kwargs["num_classes"] = 0
    if weights == "none":
        kwargs["pretrained"] = False
    elif weights == "hub":
        kwargs["pretrained"] = True
    else:
        if not os.path.isfile(weights):
            raise UserError(f"source {spec.name}: weight file {weights!r} does not exist")
        kwargs["pretrained"] = True
        kwargs["pretrained_cfg_overlay"] = dict(file=os.path.abspath(weights))
    wants_img_size = spec.input_size is not None and "img_size" not in kwargs
    try:
        try:
            return timm.create_model(spec.name, **({"img_size": spec.input_size} if wants_img_size else {}), **kwargs)
        except TypeError as e:
            if wants_img_size and "img_size" in str(e):  # CNNs take any input size as is
                return timm.create_model(spec.name, **kwargs)
            raise
    except TypeError as e:
        raise ConfigError(f"source {spec.name}: bad keyword argument ({e})") from e
    except (RuntimeError, OSError, ValueError) as e:
        if weights == "hub":
            raise UserError(
                f"source {spec.name}: could not load pretrained weights from the hub cache ({e}). "
                f"Download them on a machine with internet into the Hugging Face cache, or pass "
                f"local files with --pretrained file1,file2 (one per source)."
            ) from e
        if weights != "none":
            raise UserError(f"source {spec.name}: weight file {weights!r} does not fit the model ({e})") from e
        raise


class Source(nn.Module):
    def __init__(self, spec: SourceSpec, trainable_blocks: int, weights: str = "none"):
        super().__init__()
        self.spec = spec
        self.model = create_timm_model(spec, weights)
        self._split = split_model(self.model, trainable_blocks, spec.name)
        cfg = timm.data.resolve_model_data_config(self.model)
        size = spec.input_size or self._native_size(cfg)
        self.input_size = (size, size)
        self.interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        self.in_chans = int(cfg["input_size"][0])
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, -1, 1, 1), persistent=False)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for b in self._split.blocks:
            for p in b.parameters():
                p.requires_grad_(True)
        self.has_batch_stats = any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                   for b in self._split.blocks for m in b.modules())
        self.train()
        self.width = self._measure_width()

    def _native_size(self, cfg) -> int:
        pe = getattr(self.model, "patch_embed", None)
        if pe is not None and getattr(pe, "img_size", None):
            return int(pe.img_size[0])
        return int(cfg["input_size"][-1])

    @torch.no_grad()
    def _measure_width(self) -> int:
        was = self.training
        self.eval()
        x = torch.zeros(2, self.in_chans, *self.input_size)
        f = self.tail(self.run_blocks(self._split.prefix(x))[-1])
        self.train(was)
        return int(f.shape[-1])

    @property
    def blocks(self) -> list[nn.Module]:
        return self._split.blocks

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._split.prefix_modules:  # frozen: batch statistics and dropout stay fixed
            m.eval()
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] at native resolution -> this source's input."""
        if x.shape[1] == 1 and self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and self.in_chans == 1:
            x = x.mean(1, keepdim=True)
        if tuple(x.shape[-2:]) != self.input_size:
            down = x.shape[-1] > self.input_size[-1]
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation,
                              align_corners=False, antialias=down)
        return (x - self.mean) / self.std

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._split.prefix(self.preprocess(x))

    def run_blocks(self, z: torch.Tensor, blocks: list[nn.Module] | None = None) -> list[torch.Tensor]:
        hs = []
        for b in self.blocks if blocks is None else blocks:
            z = b(z)
            hs.append(z)
        return hs

    def tail(self, h_last: torch.Tensor) -> torch.Tensor:
        return self._split.tail(h_last)
