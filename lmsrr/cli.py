"""Command line for ``scripts/train.py`` / ``lmsrr-train``: flags mirror :class:`lmsrr.config.Config`.

Precedence: defaults < ``--preset`` < ``--config`` file < explicit flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from lmsrr.config import PRESETS, RESOLVED, Config
from lmsrr.engine import Interrupted, run
from lmsrr.errors import UserError, WriteError
from lmsrr.fields import flag_of, value_type
from lmsrr.guard import NonFiniteError
from lmsrr.methods.registry import method_option_fields, option_flag

log = logging.getLogger("lmsrr")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmsrr-train",
        description="Train LMSRR (or another registered method) on a continual stream and write "
        "the accuracy matrix, forgetting and backward transfer to a run directory.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), metavar="PRESET",
                   help=f"start from a recipe of the released code (flags given explicitly win); "
                   f"one of: {', '.join(sorted(PRESETS))}")
    p.add_argument("--config", metavar="JSON",
                   help="start from a config.json written by an earlier run (flags given explicitly win)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration as JSON and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    defaults = Config()
    for group_field in dataclasses.fields(Config):
        group_obj = getattr(defaults, group_field.name)
        g = p.add_argument_group(f"{group_field.name} options")
        for f in dataclasses.fields(group_obj):
            if value_type(f) is not None:
                _add_flag(g, f, flag_of(f), f"{group_field.name}.{f.name}", getattr(group_obj, f.name))
        if group_field.name == "method":  # each method's own options, shown flat
            for key, (method, f) in method_option_fields().items():
                _add_flag(g, f, option_flag(method, f), f"method.{key}",
                          getattr(group_obj.options[method], f.name))
    return p


def _add_flag(group, f: dataclasses.Field, flag: str, dest: str, default) -> None:
    kw = dict(dest=dest, help=f.metadata["help"], default=argparse.SUPPRESS)
    if isinstance(default, bool):
        kw["help"] += f" (default: {'on' if default else 'off'})"
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        return
    choices = f.metadata.get("choices")  # validated by the config (with a "did you mean")
    if choices:
        kw["help"] += f"; one of: {', '.join(map(str, choices))}"
    if default != "":
        kw["help"] += f" (default: {default})"
    group.add_argument(flag, type=type(default), metavar=f.name.rstrip("_").upper(), **kw)


# A config file describes an experiment, not a particular run: the run directory's name and the
# resume request are taken from flags only, so reusing RUN/config.json starts a new run.
RUN_IDENTITY = (("log", "run_name"), ("runtime", "resume"))


def config_from_args(args: argparse.Namespace) -> Config:
    d = Config().to_dict()

    def merge(src, origin: str):
        if not isinstance(src, dict):
            raise UserError(f"{origin}: expected a JSON object of option groups, e.g. "
                            f'{{"optim": {{"lr": 0.1}}}}, got {_json_kind(src)}')
        for group, values in src.items():
            if group == RESOLVED:
                continue  # what an earlier run resolved on its machine ('auto' choices): re-resolved here
            if group not in d:
                raise UserError(f"{origin}: unknown option group {group!r}; the groups are "
                                f"{', '.join(d)}")
            if not isinstance(values, dict):
                raise UserError(f"{origin}: option group {group!r} must be a JSON object of "
                                f"options, got {_json_kind(values)}")
            d[group].update(values)

    if args.preset:
        merge(PRESETS[args.preset], f"preset {args.preset}")
    if args.config:
        defaults = {(g, k): d[g][k] for g, k in RUN_IDENTITY}
        merge(read_config_file(args.config), f"--config {args.config}")
        for (group, key), default in defaults.items():
            if not isinstance(d[group][key], str):  # ignored, but still a mistake worth naming
                raise UserError(f"--config {args.config}: {key} must be a string, got "
                                f"{_json_kind(d[group][key])}")
            if d[group][key] != default:
                log.info("--config %s: %s=%r names an earlier run and is not reused; give --%s "
                         "to continue that run", args.config, key, d[group][key], key.replace("_", "-"))
                d[group][key] = default
    for key, value in vars(args).items():
        if "." in key:
            group, name = key.split(".", 1)
            d[group][name] = value
    cfg = Config.from_dict(d)
    if args.preset:
        _log_preset_overrides(args.preset, cfg)
    return cfg


def _log_preset_overrides(preset: str, cfg: Config) -> None:
    """A preset combined with other values is allowed (they win); say which recipe values moved."""
    resolved = cfg.to_dict()
    moved = [f"{group}.{name}={resolved[group][name]!r} (recipe: {value!r})"
             for group, values in PRESETS[preset].items() for name, value in values.items()
             if resolved[group][name] != value]
    if moved:
        log.info("--preset %s with overrides: %s", preset, ", ".join(moved))


def read_config_file(path: str):
    """The parsed JSON of a --config file; unreadable, non-UTF-8 or invalid JSON is a UserError."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise UserError(f"cannot read --config {path!r}: {e.strerror}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--config {path!r} is not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                        f"offset {e.start}); write it as UTF-8 JSON") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--config {path!r} is not valid JSON: {e}") from e
    except RecursionError as e:  # json's decoder is recursive: thousands of nested brackets
        raise UserError(f"--config {path!r} is nested too deeply to be a config") from e


def _json_kind(value) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = config_from_args(args)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        run(cfg)
    except UserError as e:
        print(f"lmsrr-train: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"lmsrr-train: {e}", file=sys.stderr)
        return 128 + e.signum  # the shell's convention for "stopped by this signal"
    except (NonFiniteError, WriteError) as e:  # not the input's fault: status 1
        print(f"lmsrr-train: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
