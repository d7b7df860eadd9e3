"""Registry of methods: ``@register_method("name")`` on a :class:`ContinualMethod` subclass.

A method's own hyper-parameters live in its ``Options`` dataclass (fields declared with
:func:`lmsrr.fields.option`); the configuration tree holds one instance per registered method and
the CLI shows each field as a flat flag (``--der-alpha``: ``--<method>-<field>`` unless the field
names its flag). A new method is one file plus one import line in :mod:`lmsrr.methods`.
"""
from __future__ import annotations

import dataclasses
import difflib

from lmsrr.errors import ConfigError
from lmsrr.fields import flag_of, key_of

_METHODS: dict[str, type] = {}


def register_method(name: str):
    def deco(cls):
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        if "Options" in vars(cls):  # its messages and flags then name it: der_alpha, --der-alpha
            cls.Options.option_prefix = name
        _METHODS[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type:
    if name not in _METHODS:
        close = difflib.get_close_matches(name, _METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown method {name!r}{hint}; available: {', '.join(available_methods())}")
    return _METHODS[name]


def option_flag(method: str, f: dataclasses.Field) -> str:
    """The flag of one field of a method's options: its own, or ``--<method>-<field>``."""
    return flag_of(f, method)


def option_key(method: str, f: dataclasses.Field) -> str:
    """The field's name in the flat ``method`` group of config files (``der_alpha``)."""
    return key_of(f, method)


def method_option_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Flat key -> (method, field) for every field of every registered method's options."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for name in available_methods():
        cls = _METHODS[name]
        if "Options" not in vars(cls):  # options are not inherited: derpp has its own
            continue
        for f in dataclasses.fields(cls.Options):
            key = option_key(name, f)
            if key in out:
                raise ValueError(f"option {key!r} of method {name!r} clashes with {out[key][0]!r}'s")
            out[key] = (name, f)
    return out


def default_options() -> dict[str, object]:
    """A default options instance for every registered method that has options."""
    return {name: cls.Options() for name, cls in _METHODS.items() if "Options" in vars(cls)}


def build_method(cfg, net, stream, device):
    return method_class(cfg.method.name)(cfg, net, stream, device)
