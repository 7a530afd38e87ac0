"""YAML -> typed, checked dataclasses: the generic machinery behind pipeline.lib.config's schema.

Every error names the offending key (dotted path) and what was expected; unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Literal

import yaml


class ConfigError(ValueError):
    """params.yaml does not satisfy the schema; the message names the key."""


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that rejects a key given twice in one mapping (a copied variant would silently replace one)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """One line: file, line and column (1-based), and the problem, instead of PyYAML's multi-line dump."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: not valid YAML: {' '.join(detail.split())}"


def require(ok: bool, key: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def load_dataclass(cls, raw: object, path: str):
    where = path or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)  # YAML keys need not be strings
    if unknown:
        raise ConfigError(f"{_join(path, unknown[0])}: unknown key; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, fld in fields.items():
        key = _join(path, name)
        if name in raw:
            values[name] = _convert(hints[name], raw[name], key)
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    obj = cls(**values)
    obj.check(where)
    return obj


def _convert(tp, value, key: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return load_dataclass(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        if not args:
            return dict(value)
        return {str(k): _convert(args[1], v, _join(key, str(k))) for k, v in value.items()}
    return _scalar(tp, value, key)


def _scalar(tp, value, key: str):
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        hint = ""
        if tp is float and isinstance(value, str) and _parses_as_float(value):
            hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}{hint}")
    return value


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
