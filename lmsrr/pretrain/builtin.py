"""Built-in source weights (``--pretrained builtin``): files shipped in ``lmsrr/weights/``.

``lmsrr/weights/manifest.json`` lists every shipped file with the source it belongs to (the
``--sources`` item it was pre-trained as), its SHA-256 and size, and how it was made (generator
settings, training settings, the command). A source is matched by :func:`spec_key`: the timm
name, every keyword argument and the input size, so weights are never loaded into a model they
were not made for. Files are verified against the manifest before use.

This module reads files only; it imports nothing that builds models, because the network builder
(:mod:`lmsrr.models.net`) imports it.
"""
from __future__ import annotations

import hashlib
import json
import os

from lmsrr.errors import ConfigError, UserError
from lmsrr.models.spec import SourceSpec, parse_sources

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
MANIFEST = "manifest.json"


def spec_key(spec: SourceSpec) -> str:
    """Canonical text of a source: equal for equal models however the item was written."""
    args = [f"{k}={'/'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sorted(spec.kwargs.items())]
    if spec.input_size is not None:
        args.append(f"input_size={spec.input_size}")
    return f"{spec.name}({','.join(sorted(args))})"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(folder: str = WEIGHTS_DIR) -> dict:
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise UserError(f"no built-in weights: {path} is missing (reinstall lmsrr, or pass weight "
                        f"files with --pretrained FILE,FILE)") from e
    except json.JSONDecodeError as e:
        raise UserError(f"the built-in weights' manifest {path} is not valid JSON ({e}); reinstall lmsrr") from e


def builtin_weight_files(sources: str | list[SourceSpec], folder: str = WEIGHTS_DIR,
                         verify: bool = True) -> list[str]:
    """One shipped weight file per source, in order, each checked against its SHA-256.

    Raises :class:`ConfigError` naming the sources that have no built-in weights (and the ones
    that do), :class:`UserError` when a listed file is missing or altered.
    """
    specs = parse_sources(sources) if isinstance(sources, str) else list(sources)
    manifest = load_manifest(folder)
    by_key = {entry["key"]: entry for entry in manifest["files"]}
    missing = [str(s) for s in specs if spec_key(s) not in by_key]
    if missing:
        shipped = "; ".join(entry["source"] for entry in manifest["files"])
        raise ConfigError(
            f"--pretrained builtin (the default): no built-in weights for source(s) "
            f"{', '.join(missing)} (they exist "
            f"only for these --sources items, with exactly these arguments: {shipped}). Pre-train "
            f"a source with lmsrr-pretrain and pass its file with --pretrained FILE,..., or use "
            f"--pretrained none (random init) / hub")
    paths = []
    for spec in specs:
        entry = by_key[spec_key(spec)]
        path = os.path.join(folder, entry["file"])
        if not os.path.isfile(path):
            raise UserError(f"built-in weight file {path} is missing; reinstall lmsrr")
        if verify and sha256_file(path) != entry["sha256"]:
            raise UserError(f"built-in weight file {path} does not match its SHA-256 in {MANIFEST} "
                            f"(altered or truncated); reinstall lmsrr")
        paths.append(path)
    return paths
