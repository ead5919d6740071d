"""Reading config fields: comma-separated lists and choices, with one-line errors."""

from __future__ import annotations

from typing import Any, Sequence

from vtd.errors import UserError


def parse_list(text: str) -> list[str]:
  """'a, b,,c' -> ['a', 'b', 'c'] (the comma-separated list fields of the configs)."""
  return [part.strip() for part in str(text).split(",") if part.strip()]


def check_choice(value: Any, choices: Sequence[Any], key: str) -> Any:
  """`value` if it is one of `choices`, else a UserError naming the config key."""
  if value not in choices:
    raise UserError(f"config.{key} must be one of {', '.join(map(str, choices))}; got "
                    f"{value!r}")
  return value
