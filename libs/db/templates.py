"""Statement and script text written once and used in several places (Postgres SQL, Redis
Lua), with what stands for a user, a channel or a key prefix put in for each use."""

from __future__ import annotations

from collections.abc import Mapping


def fill(template: str, names: Mapping[str, str]) -> str:
    """``template`` with each of ``names``' keys replaced by its value, in order. Plain
    replacement: ``%`` formatting would need every other ``%`` doubled (SQL's ``LIKE``,
    Lua's patterns), ``str.format`` every brace of a Lua table."""
    for name, value in names.items():
        template = template.replace(name, value)
    return template
