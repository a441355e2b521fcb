"""Config fields described once, where they are declared: the annotation gives the type and
`bounded(...)` the allowed range. `check_fields`, called by every config section's __post_init__,
enforces both, so a config from YAML, `--set` or Python is checked the same way. It sits at the
bottom of the package (above errors) because every config section, model and data included, uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import operator
import types
import typing
from typing import Literal, Union

from jaxlm.errors import ConfigError, short_repr

_COMPARE = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
               type(None): "null"}


def bounded(default=dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, one_of=None, note: str = "",
            default_factory=dataclasses.MISSING):
    """A dataclass field whose numbers (the value, or each element of a list or mapping) must satisfy the
    given bounds; `note` says what special values mean, e.g. "0: off". Enforced by `check_fields`."""
    bounds = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, one_of=one_of).items() if v is not None}
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"bounds": bounds, "note": note})


def check_fields(cfg, where: str = "") -> None:
    """Check every field of the config dataclass `cfg` against its annotation (true integers, finite
    floats, ...) and its `bounded` range; one ConfigError names the dotted field, the value and the rule."""
    hints = _type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        path, value = f"{where}.{f.name}" if where else f.name, getattr(cfg, f.name)
        if isinstance(value, list):  # from Python: stored as a tuple, so the config stays hashable
            value = tuple(value)
            object.__setattr__(cfg, f.name, value)
        if not _fits(hints[f.name], value):
            raise ConfigError(f"{path} is {short_repr(value)}, must be {_describe(hints[f.name])}")
        bounds = f.metadata.get("bounds")
        for at, x in _numbers(path, value) if bounds else ():
            if not _in_range(bounds, x):
                note = f" ({f.metadata['note']})" if f.metadata["note"] else ""
                raise ConfigError(f"{at} is {short_repr(x)}, must be {_range_text(bounds)}{note}")


@functools.cache
def _type_hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _fits(tp, value) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        kinds = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return len(kinds) == len(value) and all(map(_fits, kinds, value))
    if origin is dict:
        return isinstance(value, dict) and all(_fits(args[1], v) for v in value.values())
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:  # an int is a float here; a nan learning rate would only fail mid-run
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(map(_describe, args))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        return f"a list ({_describe(args[0])} each)"
    if origin is dict:
        return f"a mapping (to {_describe(args[1])} each)"
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _numbers(path: str, value):
    """(dotted path, number) for a field's value: the value itself, or each element of a tuple / mapping."""
    if isinstance(value, tuple):
        return [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return [(f"{path}.{k}", v) for k, v in value.items()]
    return [] if value is None else [(path, value)]


def _in_range(bounds: dict, x) -> bool:
    if "one_of" in bounds and x not in bounds["one_of"]:
        return False
    return all(op(x, bounds[k]) for k, (op, _) in _COMPARE.items() if k in bounds)


def _range_text(bounds: dict) -> str:
    """"in [0, 1)", ">= 1", "one of 8, 4" """
    if "one_of" in bounds:
        return "one of " + ", ".join(map(str, bounds["one_of"]))
    lo = next((k for k in ("ge", "gt") if k in bounds), None)
    hi = next((k for k in ("le", "lt") if k in bounds), None)
    if lo and hi:
        opening, closing = "(" if lo == "gt" else "[", ")" if hi == "lt" else "]"
        return f"in {opening}{_number(bounds[lo])}, {_number(bounds[hi])}{closing}"
    k = lo or hi
    return f"{_COMPARE[k][1]} {_number(bounds[k])}"


def _number(x) -> str:
    """2**32 rather than 4294967296."""
    big_power_of_2 = isinstance(x, int) and x >= 2 ** 16 and x & (x - 1) == 0
    return f"2**{x.bit_length() - 1}" if big_power_of_2 else str(x)
