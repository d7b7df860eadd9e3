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


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def value_type(f: dataclasses.Field) -> type | None:
    """bool, int, float or str for an option field; None for anything else (nested groups)."""
    return _TYPES.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))


def validate(obj) -> None:
    """Check every option field of the dataclass instance ``obj``: its value has the field's
    type (an int is accepted for a float and converted; nothing else is coerced: the string
    "false" is not a bool), floats are finite, and a field with choices holds one of them.
    Raises :class:`ConfigError` naming the field."""
    for f in dataclasses.fields(obj):
        kind = value_type(f)
        if kind is None:
            continue
        value = getattr(obj, f.name)
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(obj, f.name, value)
            ok = True
        if not ok:
            raise ConfigError(f"{f.name} ({flag_of(f)}) must be {_article(kind.__name__)}, got "
                              f"{value!r} ({type(value).__name__})")
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"{f.name} ({flag_of(f)}) must be a finite number, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{f.name}={value!r} is not valid{hint}; choose one of: "
                              f"{', '.join(map(str, choices))}")


def _article(name: str) -> str:
    words = {"bool": "a boolean (true or false)", "int": "an integer", "float": "a number",
             "str": "a string"}
    return words[name]
