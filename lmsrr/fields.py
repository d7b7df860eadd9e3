"""Option fields: a dataclass field that carries its flag's help text, name and choices, and the
one validation every option group shares (types and choices).

The configuration tree (:mod:`lmsrr.config`) and every method's own options dataclass
(:mod:`lmsrr.methods`) declare their fields with :func:`option`; the CLI builds its flags from the
same metadata, so a flag's name, help, default and choices are written once.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from lmsrr.errors import ConfigError

# The value types an option may have, by the annotation written in its dataclass.
_TYPES = {"bool": bool, "int": int, "float": float, "str": str}
# JSON integers are unbounded; every integer option (sizes, counts, seeds) fits in 32 bits, and a
# larger one would overflow in torch or NumPy long after the configuration was accepted.
INT_LIMIT = 2**31


def option(default: Any, help: str, flag: str | None = None, choices: tuple | None = None, **kw):
    """A dataclass field for a command-line option: ``help`` is its flag's help text, ``flag``
    its name (default ``--field-name``), ``choices`` the values it accepts."""
    meta = {"help": help}
    if flag:
        meta["flag"] = flag
    if choices:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def flag_of(f: dataclasses.Field, prefix: str = "") -> str:
    """The field's flag: its own, or ``--<prefix>-<field>`` (``--field`` without a prefix)."""
    return f.metadata.get("flag") or "--" + "-".join(filter(None, [prefix, f.name.replace("_", "-")]))


def key_of(f: dataclasses.Field, prefix: str = "") -> str:
    """The field's name in a config file: its flag without dashes (``der_alpha``)."""
    return flag_of(f, prefix)[2:].replace("-", "_")


def value_type(f: dataclasses.Field) -> type | None:
    """bool, int, float or str for an option field; None for anything else (nested groups)."""
    return _TYPES.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))


def validate(obj) -> None:
    """Check every option field of the dataclass instance ``obj``: its value has the field's
    type (an int is accepted for a float and converted; nothing else is coerced: the string
    "false" is not a bool), floats are finite, integers fit in 32 bits, strings hold no NUL
    character (no path or name can), and a field with choices holds one of them. Raises
    :class:`ConfigError` naming the field by its config key and flag (a method's options carry
    their method's name as ``option_prefix``)."""
    prefix = getattr(type(obj), "option_prefix", "")
    for f in dataclasses.fields(obj):
        kind = value_type(f)
        if kind is None:
            continue
        value = getattr(obj, f.name)
        key = key_of(f, prefix) if prefix else f.name
        name = f"{key} ({flag_of(f, prefix)})"
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(f"{name} must be a finite number, got {_short(value)}") from None
            setattr(obj, f.name, value)
            ok = True
        if not ok:
            raise ConfigError(f"{name} must be {_article(kind.__name__)}, got {_short(value)} "
                              f"({_json_type(value)})")
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if kind is int and not -INT_LIMIT < value < INT_LIMIT:
            raise ConfigError(f"{name} must be an integer between -2**31 and 2**31, got {_short(value)}")
        if kind is str and "\0" in value:
            raise ConfigError(f"{name} must not contain a NUL character, got {_short(value)}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}={_short(value)} is not valid{hint}; choose one of: "
                              f"{', '.join(map(str, choices))}")


def _short(value, limit: int = 80) -> str:
    """repr of a value, cut to ``limit`` characters (a generated or pasted value can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value) -> str:
    """The type of a value as a config file spells it."""
    names = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
             list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _article(name: str) -> str:
    words = {"bool": "a boolean (true or false)", "int": "an integer", "float": "a number",
             "str": "a string"}
    return words[name]
