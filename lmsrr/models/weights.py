"""Pretrained weights for a source: a local file, a Hugging Face ViT folder, or the local hub cache.

Every path ends in :func:`load_into`, which compares the checkpoint's keys and shapes with the
model before loading, so a file of another architecture or size is one short message (the first
few mismatches) rather than timm's traceback or a 130-line ``load_state_dict`` error.

``hub`` never touches the network: the file timm would download is looked up in the local
Hugging Face (or torch hub) cache, and a miss is reported at once with the name to fetch.
"""
from __future__ import annotations

import json
import os
import re
import sys
from functools import partial

import torch
import torch.nn as nn

from lmsrr.errors import UserError

SHOW = 3  # mismatched keys named per kind in an error message

HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


# ---------------------------------------------------------------------------------------------
# Reading checkpoints


def read_state_dict(path: str, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / torch checkpoint file (a nested 'state_dict' / 'model' unwrapped)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is the user's to fix; name it and why
        raise UserError(f"{what}: cannot read weight file {path!r} ({type(e).__name__}: {_first_line(e)})") from e
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{what}: {path!r} holds no state dict of tensors")
    return {re.sub(r"^module\.", "", k): v for k, v in sd.items()}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers ViT folders (the released code's google/vit-base-patch16-224[-in21k])


def is_hf_vit_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, HF_CONFIG))


def hf_vit_config(path: str, what: str) -> dict:
    with open(os.path.join(path, HF_CONFIG)) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "vit":
        raise UserError(f"{what}: {path!r} is a Hugging Face {cfg.get('model_type')!r} checkpoint; "
                        f"only transformers ViT folders (model_type 'vit') map onto timm sources")
    return cfg


def hf_vit_model_kwargs(cfg: dict) -> dict:
    """timm VisionTransformer keywords that make its computation equal to the HF model's.

    HF's ViT normalises with its config's ``layer_norm_eps`` (1e-12 in Google's checkpoints), timm's
    with 1e-6; the source keeps the checkpoint's epsilon so it computes what the checkpoint computed.
    """
    return {"norm_layer": partial(nn.LayerNorm, eps=float(cfg.get("layer_norm_eps", 1e-12)))}


def read_hf_vit_folder(path: str, what: str) -> dict[str, torch.Tensor]:
    for name in HF_WEIGHTS:
        f = os.path.join(path, name)
        if os.path.isfile(f):
            return hf_vit_to_timm(read_state_dict(f, what))
    raise UserError(f"{what}: Hugging Face folder {path!r} has {HF_CONFIG} but none of "
                    f"{', '.join(HF_WEIGHTS)}")


def hf_vit_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``ViTModel`` / ``ViTForImageClassification`` keys -> timm VisionTransformer keys.

    Query, key and value are one ``qkv`` linear in timm (rows in q, k, v order); the pooler and
    the classifier have no counterpart in a source (which has no head) and are dropped.
    """
    sd = {re.sub(r"^vit\.", "", k): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    per_layer = {
        "attention.output.dense": "attn.proj",
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    }
    layer = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.startswith(("pooler.", "classifier.")):
            continue
        if k in simple:
            out[simple[k]] = v
            continue
        m = layer.match(k)
        if m is None:
            out[k] = v  # unknown: left as is, reported by the key check
            continue
        i, mod, kind = int(m.group(1)), m.group(2), m.group(3)
        if mod.startswith("attention.attention."):
            qkv.setdefault((i, kind), {})[mod.rsplit(".", 1)[-1]] = v
        elif mod in per_layer:
            out[f"blocks.{i}.{per_layer[mod]}.{kind}"] = v
        else:
            out[k] = v
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            missing = sorted({"query", "key", "value"} - set(parts))
            raise UserError(f"Hugging Face ViT layer {i} lacks attention {', '.join(missing)} {kind}")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


# ---------------------------------------------------------------------------------------------
# The local hub cache


def hub_cached_file(model: nn.Module, what: str) -> str:
    """Path of the cached file timm would load for ``model``'s pretrained tag, without any download."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # anything that still asks the hub fails fast instead of retrying
    from timm.models._builder import _resolve_pretrained_source

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    load_from, loc = _resolve_pretrained_source(cfg)
    tag = cfg.get("architecture", "?") + (f".{cfg['tag']}" if cfg.get("tag") else "")
    if load_from == "hf-hub":
        repo, names = (loc if isinstance(loc, tuple) else (loc, None))
        # timm prefers the safetensors twin of the file it is told to load (pytorch_model.bin)
        name = names or "pytorch_model.bin"
        twin = name.replace("pytorch_model.bin", "model.safetensors")
        names = (twin, name) if twin != name else (name,)
        from huggingface_hub import constants, try_to_load_from_cache

        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                return hit
        raise UserError(
            f"{what}: --pretrained hub: weights of {tag} are not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}): no {' / '.join(names)} of hf-hub:{repo}. On a machine with "
            f"internet run `huggingface-cli download {repo}` and copy the cache here, or pass a local "
            f"file with --pretrained PATH")
    if load_from == "url":
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(loc))
        if os.path.isfile(cached):
            return cached
        raise UserError(f"{what}: --pretrained hub: weights of {tag} are not in the torch hub cache "
                        f"({cached} is missing; it comes from {loc}). Download it on a machine with "
                        f"internet, or pass a local file with --pretrained PATH")
    raise UserError(f"{what}: --pretrained hub: timm has no pretrained weights for {tag}; name a "
                    f"pretrained tag (see timm.list_pretrained()) or pass a local file")


# ---------------------------------------------------------------------------------------------
# Loading with a key and shape check


def _timm_filter(model: nn.Module, sd: dict) -> dict:
    """timm's own checkpoint conversion for the model's family (original-repo key names, position
    embeddings resampled to another input size); a checkpoint it cannot convert is left as is and
    the key check below reports it."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return sd
    try:
        return fn(sd, model)
    except Exception:  # a file of another architecture: the key/shape report says what is wrong
        return sd


def _drop_classifier(model: nn.Module, sd: dict, own: dict) -> dict:
    """Sources have no classifier (num_classes=0); the checkpoint's head weights are not wanted."""
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ("head", "fc", "classifier")
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return {k: v for k, v in sd.items()
            if k in own or not any(k == h or k.startswith(h + ".") for h in heads)}


def mismatch_report(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> str:
    """'' when ``sd`` fits ``own`` exactly; else the first few missing, unexpected and misshapen keys."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", shapes)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > SHOW else ""
            parts.append(f"{label}: {', '.join(keys[:SHOW])}{more}")
    return "; ".join(parts)


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], what: str, origin: str) -> None:
    own = model.state_dict()
    sd = _drop_classifier(model, _timm_filter(model, sd), own)
    report = mismatch_report(own, sd)
    if report:
        raise UserError(f"{what}: {origin} does not fit the model ({type(model).__name__}, {len(own)} "
                        f"tensors; the file has {len(sd)}): {report}")
    model.load_state_dict(sd, strict=True)
