"""Grids of a comparison: ``--grid preset=cifar10,cifar100 alpha=0.1,0.3`` or a JSON / YAML file.

A grid is a list of *settings*; every setting is a mapping ``key -> value`` applied on top of the
command's flags, and every method of the comparison runs once per seed in every setting. Keys
are configuration field names (``lr``, ``stream``, ``der_alpha``), the same with their group
(``optim.lr``) where a name is ambiguous, or a flag's spelling without the dashes
(``batch-size``). ``preset`` is special: it picks the recipe the other flags start from, with the
usual precedence (defaults < preset < ``--config`` < explicit flags < the other grid keys).

Command-line tokens form the product of their values, in the order given. A file holds either
one mapping (its values scalars or lists; the product again) or a list of such mappings, whose
settings are concatenated; that is how settings that do not form a product (each dataset with
its own alpha) are written.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field

from lmsrr.cli import build_parser as train_parser
from lmsrr.cli import config_from_args
from lmsrr.config import PRESETS, Config
from lmsrr.errors import UserError

# Axes the comparison owns: a grid over them would duplicate --methods / --seeds / --out.
OWN_AXES = {"method.name": "--methods", "runtime.seed": "--seeds", "log.run_name": "--out",
            "log.out_dir": "--out", "runtime.resume": "--resume"}


@dataclass
class Setting:
    """One point of the grid: its values in the order given (empty for a comparison without a grid)."""
    values: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={_text(v)}" for k, v in self.values.items())

    @property
    def dirname(self) -> str:
        """A folder name for the setting's runs: readable, stable across re-runs of the command."""
        text = "_".join(f"{k}-{_text(v)}" for k, v in self.values.items())
        safe = re.sub(r"[^A-Za-z0-9.+_-]+", "-", text).strip("-.")
        if len(safe) > 80 or safe != text:  # shortened or altered: a hash keeps it unique
            safe = f"{safe[:60]}-{hashlib.sha1(self.label.encode()).hexdigest()[:8]}"
        return safe


def _text(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def key_table() -> dict[str, tuple[str, type]]:
    """Every accepted key spelling -> (``group.field``, the value's type)."""
    defaults = Config().to_dict()
    table: dict[str, tuple[str, type]] = {}
    names: dict[str, list[str]] = {}
    for group, values in defaults.items():
        for name, value in values.items():
            dest = f"{group}.{name}"
            table[dest] = (dest, type(value))
            names.setdefault(name, []).append(dest)
    for name, dests in names.items():
        if len(dests) == 1:
            table[name] = table[dests[0]]
    for action in train_parser()._actions:  # flag spellings: --batch-size -> batch-size
        if "." in action.dest and action.dest in table:
            for opt in action.option_strings:
                if opt.startswith("--") and not opt.startswith("--no-"):
                    table.setdefault(opt[2:], table[action.dest])
                    table.setdefault(opt[2:].replace("-", "_"), table[action.dest])
    return table


def _parse_value(text: str, kind: type, key: str):
    if kind is bool:
        low = text.strip().lower()
        if low in ("true", "on", "yes", "1"):
            return True
        if low in ("false", "off", "no", "0"):
            return False
        raise UserError(f"--grid {key}: {text!r} is not a boolean (use true/false)")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise UserError(f"--grid {key}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    return text


def parse_tokens(tokens: list[str]) -> list[dict]:
    """``key=v1,v2`` tokens -> one mapping of lists (its product is the grid). Values are split
    at commas, so a value that holds commas (a --sources list) goes in a grid file."""
    table = key_table()
    axes: dict[str, list] = {}
    for token in tokens:
        key, sep, text = token.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise UserError(f"--grid {token!r}: write key=value1,value2 (or give one JSON / YAML file)")
        kind = table[resolve_key(key, table)][1] if key != "preset" else str
        values = [_parse_value(v.strip(), kind, key) for v in text.split(",") if v.strip()]
        if key in axes:
            raise UserError(f"--grid names {key} twice")
        axes[key] = values
    return [axes]


def read_file(path: str) -> list[dict]:
    """A JSON or YAML grid file -> a list of mappings of lists."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"cannot read the grid file {path!r}: {e.strerror}") from e
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # optional: only YAML grid files need PyYAML
        except ImportError:
            raise UserError(f"--grid {path}: reading YAML needs PyYAML (pip install pyyaml); "
                            f"or write the same grid as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"--grid {path} is not valid YAML: {e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--grid {path} is not valid JSON ({e}); YAML files end in .yaml or .yml") from None
    blocks = data if isinstance(data, list) else [data]
    if not blocks or not all(isinstance(b, dict) and b for b in blocks):
        raise UserError(f"--grid {path}: expected a mapping of keys to values or lists of values, "
                        f"or a list of such mappings")
    return [{str(k): (v if isinstance(v, list) else [v]) for k, v in b.items()} for b in blocks]


def resolve_key(key: str, table: dict | None = None) -> str:
    table = table or key_table()
    if key == "preset":
        return key
    if key in table:
        dest = table[key][0]
        if dest in OWN_AXES:
            raise UserError(f"--grid {key}: the comparison sets this itself; use {OWN_AXES[dest]}")
        return dest
    groups = [k for k in table if k.endswith("." + key)]
    if len(groups) > 1:
        raise UserError(f"--grid {key}: several groups have this option; write one of {', '.join(groups)}")
    near = difflib.get_close_matches(key, [k for k in table if "." not in k], n=3)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    raise UserError(f"--grid {key}: not an option{hint}; keys are config field names, e.g. lr, stream, der_alpha")


def expand(blocks: list[dict]) -> list[Setting]:
    """The settings of a grid, in order, without repeats."""
    settings: list[Setting] = []
    seen = set()
    for block in blocks:
        for key, values in block.items():
            if not values:
                raise UserError(f"--grid {key}: give at least one value")
        keys = list(block)
        for combo in itertools.product(*(block[k] for k in keys)):
            s = Setting(dict(zip(keys, combo)))
            if s.label in seen:
                raise UserError(f"--grid names the setting '{s.label}' twice")
            seen.add(s.label)
            settings.append(s)
    return settings


def parse_grid(tokens: list[str]) -> list[Setting]:
    """``--grid`` as given: one existing file, or key=values tokens."""
    if len(tokens) == 1 and "=" not in tokens[0]:
        if not os.path.exists(tokens[0]):
            raise UserError(f"--grid {tokens[0]!r}: no such file; write key=value1,value2 or give a "
                            f"JSON / YAML grid file")
        return expand(read_file(tokens[0]))
    return expand(parse_tokens(tokens))


def setting_config(args: argparse.Namespace, setting: Setting) -> Config:
    """The command's configuration with the setting applied: its preset as the starting recipe,
    its other keys over the explicit flags."""
    table = key_table()
    given = vars(args)
    ns = copy.copy(args)
    overrides: dict[str, dict] = {}
    for key, value in setting.values.items():
        dest = resolve_key(key, table)
        if dest == "preset":
            if value not in PRESETS:
                raise UserError(f"--grid preset={value}: no such preset; one of {', '.join(sorted(PRESETS))}")
            if args.preset:
                raise UserError("--grid preset=... and --preset: give the presets in the grid only")
            ns.preset = value
            continue
        if dest in given:
            raise UserError(f"--grid {key}: also given as a flag; give it in one place")
        group, name = dest.split(".", 1)
        overrides.setdefault(group, {})[name] = value
    try:
        return config_from_args(ns).replace(**overrides)
    except UserError as e:
        raise UserError(f"grid setting '{setting.label}': {e}") from None
