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
from lmsrr.errors import UserError
from lmsrr.fields import flag_of, value_type
from lmsrr.guard import NonFiniteError
from lmsrr.methods.registry import method_option_fields, option_flag


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmsrr-train",
        description="Train LMSRR (or another registered method) on a continual stream and write "
        "the accuracy matrix, forgetting and backward transfer to a run directory.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a recipe of the released code (flags given explicitly win)")
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


def config_from_args(args: argparse.Namespace) -> Config:
    d = Config().to_dict()

    def merge(src: dict, origin: str):
        for group, values in src.items():
            if group == RESOLVED:
                continue  # what an earlier run resolved on its machine ('auto' choices): re-resolved here
            if group not in d or not isinstance(values, dict):
                raise UserError(f"{origin}: unknown option group {group!r}")
            d[group].update(values)

    if args.preset:
        merge(PRESETS[args.preset], f"preset {args.preset}")
    if args.config:
        try:
            with open(args.config) as fh:
                merge(json.load(fh), args.config)
        except OSError as e:
            raise UserError(f"cannot read --config {args.config!r}: {e.strerror}") from e
        except json.JSONDecodeError as e:
            raise UserError(f"--config {args.config!r} is not valid JSON: {e}") from e
    for key, value in vars(args).items():
        if "." in key:
            group, name = key.split(".", 1)
            d[group][name] = value
    return Config.from_dict(d)


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
    except NonFiniteError as e:
        print(f"lmsrr-train: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
