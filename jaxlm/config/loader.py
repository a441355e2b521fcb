"""Typed configs from YAML and `--set a.b=value` overrides.

Configs are frozen dataclasses. `from_dict` builds one from plain data, checking every key
and converting types, so a typo is an error that suggests the closest valid key instead of a
silently ignored field. A YAML file may name a parent with `inherit: other.yaml`; the child's
keys are merged over the parent's.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from jaxlm.errors import ArgumentTypeError, ConfigError, short_repr

# Shipped inside the package (so a wheel has them); the repository's top-level configs/ links here.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """`configs/x.yaml`, `x.yaml` or a bare name `x` (looked up in the shipped configs/)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ArgumentTypeError(f"config must be a shipped config name or a path to a YAML file, got "
                                f"{short_repr(name_or_path)}")
    path = Path(name_or_path)
    candidates = [path, path.with_suffix(".yaml")] if path.suffix == "" else [path]
    candidates += [CONFIG_DIR / p.name for p in candidates]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if path.exists() and not path.is_dir():  # reading a FIFO would block, a device never end
        raise ConfigError(f"config {name_or_path} is not a regular file (a FIFO, socket or device); give a YAML file")
    if path.is_dir():
        raise ConfigError(f"config {name_or_path} is a directory; give a YAML file (e.g. {path / 'run.yaml'}) or a "
                          f"shipped config name")
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(
        f"config file not found: {name_or_path}; give a path to a YAML file"
        + (f" or one of the shipped configs: {', '.join(shipped)}" if shipped else "")
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file into a dict, following `inherit:` chains."""
    path = resolve_config_path(path)
    if path in _seen:
        raise ConfigError(f"config inheritance loops back to {path}; remove the cycle of `inherit:` keys")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid syntax"
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}; fix the syntax") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    parent = data.pop("inherit", None)
    if parent is not None and not isinstance(parent, str):
        raise ConfigError(f"`inherit:` in {path} must be a config name or a path to a YAML file, "
                          f"got {short_repr(parent)}")
    if parent is not None:
        parent_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
        if not parent_path.exists():
            parent_path = Path(parent)
        data = merge(load_yaml(parent_path, _seen + (path,)), data)
    return data


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; values of `override` win."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """`["model.num_layers=4", "train.lr=1e-3"]` -> nested dict; values parsed as YAML scalars."""
    if overrides is not None and (isinstance(overrides, str) or not isinstance(overrides, (list, tuple))):
        raise ArgumentTypeError(f"overrides must be a list of 'KEY=VALUE' strings, got {short_repr(overrides)}")
    out: dict[str, Any] = {}
    for item in overrides or []:
        if not isinstance(item, str):
            raise ArgumentTypeError(f"override {short_repr(item)} must be a 'KEY=VALUE' string, e.g. "
                                    f"\"model.num_layers=4\"")
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {short_repr(item)} is not KEY=VALUE; write e.g. --set model.num_layers=4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""  # `key=` is the empty string; `key=null` is None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {short_repr(item)} sets a field inside {part!r}, which is not a section")
        node[parts[-1]] = value
    return out


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from `data`, checking keys and types; nested dataclasses recurse. Ranges are
    checked by the constructor (each section's __post_init__: jaxlm.errors.check_fields)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {short_repr(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            valid = "" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key {path!r}{hint}{valid}")
        kwargs[key] = _convert(hints[key], value, path)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a default is missing
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{path}: invalid value {short_repr(value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path} must be one of {', '.join(map(repr, args))}, got {short_repr(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {short_repr(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path} must be a list of {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {short_repr(value)}")
        return {k: _convert(args[1], v, f"{path}.{k}") for k, v in value.items()} if args else dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {short_repr(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path} must be an integer, got {short_repr(value)}")
        return value
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{path} must be a number, got {short_repr(value)}")
        if not math.isfinite(number):  # a nan learning rate would only fail mid-run
            raise ConfigError(f"{path} must be a finite number, got {short_repr(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {short_repr(value)}; YAML read the text as "
                              f"{type(value).__name__}: quote it, e.g. --set '{path}=\"{_as_text(value)}\"'")
        return value
    return value


def _as_text(value: Any) -> str:
    """The text YAML most likely read as `value` ("ROMEO: hi" for {"ROMEO": "hi"}), for a quoting hint."""
    if isinstance(value, dict) and len(value) == 1:
        (key, inner), = value.items()
        return f"{key}: {_as_text(inner)}" if inner is not None else f"{key}:"
    if isinstance(value, (dict, list)):
        return "..."
    return str(value).lower() if isinstance(value, bool) else str(value)


def to_dict(cfg: Any) -> Any:
    """Dataclass -> plain nested dict/list data (for YAML/JSON dumps)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg
