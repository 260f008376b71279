"""Typed settings read once from ``CHAT_*`` environment variables.

A settings class is a frozen dataclass whose fields are declared with :func:`setting`,
each with a default and a description. :func:`load` reads a mapping (normally
``os.environ``, passed in by the entry point: library code never reads it itself),
converts each value to the field's type and reports every bad key at once.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

PREFIX = "CHAT_"


class ConfigError(Exception):
    """One or more settings are missing or malformed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def setting(default: Any, description: str, *, secret: bool = False) -> Any:
    """Declare a setting with its default and a one-line description."""
    return dataclasses.field(
        default=default, metadata={"description": description, "secret": secret}
    )


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def _convert(raw: str, typ: Any) -> Any:
    origin = get_origin(typ)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(typ) if a is not type(None)]
        if raw == "":
            return None
        return _convert(raw, args[0])
    if typ is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if typ is int:
        return int(raw.strip())
    if typ is float:
        return float(raw.strip())
    if origin is tuple:
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return raw


def load(cls: type[T], env: Mapping[str, str], **overrides: Any) -> T:
    """Build ``cls`` from ``env``; raise ConfigError naming every bad key."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        key = env_name(f.name)
        if key in env:
            try:
                values[f.name] = _convert(env[key], hints[f.name])
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
    if problems:
        raise ConfigError(problems)
    obj: Any = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        more = validate()
        if more:
            raise ConfigError(list(more))
    return obj


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(env var, default, description) for every setting of ``cls``."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        shown = "(secret)" if f.metadata.get("secret") else repr(default)
        rows.append((env_name(f.name), shown, f.metadata.get("description", "")))
    return rows


def check_config(cls: type, env: Mapping[str, str]) -> tuple[bool, str]:
    """What ``--check-config`` prints: the effective settings or every problem."""
    try:
        obj: Any = load(cls, env)
    except ConfigError as exc:
        return False, "\n".join(f"config error: {p}" for p in exc.problems)
    lines = []
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if f.metadata.get("secret"):
            value = "(set)" if value else "(empty)"
        lines.append(f"{env_name(f.name)}={value}    # {f.metadata.get('description', '')}")
    unknown = sorted(
        k for k in env if k.startswith(PREFIX) and k not in {env_name(f.name) for f in dataclasses.fields(cls)}
    )
    for k in unknown:
        lines.append(f"# note: {k} is not a setting of this process")
    lines.extend(f"# warning: {w}" for w in settings_warnings(obj))
    return True, "\n".join(lines)


def settings_warnings(obj: Any) -> list[str]:
    """What ``obj.warnings()`` reports (settings that are valid but unfit for production), if it has it."""
    warnings = getattr(obj, "warnings", None)
    return list(warnings()) if warnings is not None else []
