"""A trained run read back for evaluation or export: from a run directory (its newest complete
checkpoint), one checkpoint folder, or an exported ``.safetensors`` file.

What is saved is what training changes: the network's trainable parameters and buffers, and the
method's state (replay buffer, class means, ...). The frozen source weights are rebuilt from the
saved configuration (``--sources`` / ``--pretrained``) and checked against the fingerprint taken
when the run was trained, so an evaluation never runs on other frozen weights by accident.

An export is one safetensors file: tensors ``net/<name>`` and ``method/<n>``, and in its metadata
the configuration, the fingerprint, the number of tasks trained and the layout of the method's
state (nested dicts and lists whose tensor leaves point at ``method/<n>``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from lmsrr import checkpoint as ckpt
from lmsrr.config import Config
from lmsrr.errors import ConfigError, UserError

EXPORT_FORMAT = "lmsrr-export-1"


@dataclass
class SavedRun:
    config: dict  # the run's configuration, as Config.to_dict()
    net: dict[str, torch.Tensor]  # trainable parameters and buffers of the network
    method: dict  # the method's state_dict()
    tasks_done: int  # tasks whose training finished (a mid-task checkpoint counts its task too)
    frozen_fingerprint: str
    origin: str  # the file or folder it came from

    def cfg(self) -> Config:
        try:
            return Config.from_dict(self.config)
        except ConfigError as e:
            raise UserError(f"{self.origin}: its configuration does not fit this version of lmsrr "
                            f"({e})") from None


def read_saved_run(path: str) -> SavedRun:
    """A run directory, a checkpoint folder (``.../checkpoints/step-N``) or an export file."""
    if not os.path.exists(path):
        raise UserError(f"{path!r}: no such run directory, checkpoint folder or export file")
    if os.path.isfile(path):
        return _read_export(path)
    if os.path.isfile(os.path.join(path, "rank0.pt")):
        return _from_checkpoint(ckpt.read_rank0(path), path)
    found = ckpt.newest_complete(os.path.join(path, "checkpoints"))
    if found is None:
        raise UserError(f"{path!r} holds no complete checkpoint (checkpoints/step-*/COMPLETE); "
                        f"name a run directory, a checkpoint folder or an exported .safetensors file")
    return _from_checkpoint(ckpt.read_rank0(found), found)


def _from_checkpoint(state: dict, origin: str) -> SavedRun:
    try:
        pos = state["position"]
        tasks_done = pos["task"] + (1 if pos["batch"] > 0 else 0)
        return SavedRun(state["config"], state["net"], state["method"], tasks_done,
                        state["frozen_fingerprint"], origin)
    except (KeyError, TypeError) as e:
        raise UserError(f"{origin}: not a checkpoint of this version of lmsrr (missing {e})") from None


# ---------------------------------------------------------------------- export
def export(run: SavedRun, out: str) -> None:
    """Write ``run`` as one safetensors file (see the module docstring)."""
    tensors = {f"net/{k}": v.detach().cpu().contiguous().clone() for k, v in run.net.items()}
    leaves: list[torch.Tensor] = []
    layout = _flatten(run.method, leaves)
    tensors.update({f"method/{i}": t.detach().cpu().contiguous().clone() for i, t in enumerate(leaves)})
    meta = {"format": EXPORT_FORMAT, "config": json.dumps(run.config),
            "frozen_fingerprint": run.frozen_fingerprint, "tasks_done": str(run.tasks_done),
            "method_layout": json.dumps(layout), "code_revision": ckpt.code_revision()}
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = f"{out}.tmp-{os.getpid()}"
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, out)
    except OSError as e:
        raise UserError(f"cannot write {out!r} ({e.strerror})") from e


def _read_export(path: str) -> SavedRun:
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path!r} is not a readable safetensors export ({e})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path!r} is not an lmsrr export (format {meta.get('format')!r}, expected "
                        f"{EXPORT_FORMAT!r}); write one with lmsrr-export")
    net = {k[len("net/"):]: v for k, v in tensors.items() if k.startswith("net/")}
    leaves = [tensors[f"method/{i}"] for i in range(sum(k.startswith("method/") for k in tensors))]
    return SavedRun(json.loads(meta["config"]), net, _unflatten(json.loads(meta["method_layout"]), leaves),
                    int(meta["tasks_done"]), meta["frozen_fingerprint"], path)


def _flatten(obj, leaves: list):
    """Nested state -> JSON layout; tensors become {"t": index into leaves}. Dicts keep their key
    types (iCaRL keys its exemplars by int class)."""
    if isinstance(obj, torch.Tensor):
        leaves.append(obj)
        return {"t": len(leaves) - 1}
    if isinstance(obj, dict):
        return {"d": [[k, _flatten(v, leaves)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"l": [_flatten(v, leaves) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"v": obj}
    raise TypeError(f"cannot export a method state value of type {type(obj).__name__}")


def _unflatten(node, leaves: list):
    if "t" in node:
        return leaves[node["t"]]
    if "d" in node:
        return {k: _unflatten(v, leaves) for k, v in node["d"]}
    if "l" in node:
        return [_unflatten(v, leaves) for v in node["l"]]
    return node["v"]
