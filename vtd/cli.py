"""One style for vtd's command-line tools (vtd.export, vtd.evaluate, vtd.results, launch/,
bench/): `--snake_case` flags like vtd.main's absl flags (the `--kebab-case` spelling is
accepted too), `--help` that ends with an example, and exit status 2 with one
`<prog>: error: ...` line for every user error (argparse's own convention)."""

from __future__ import annotations

import argparse
from typing import Any


def parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
  """An ArgumentParser whose `--help` ends with `example`."""
  return argparse.ArgumentParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"example:\n  {example}")


def add(parser_or_group: Any, name: str, **kwargs: Any) -> argparse.Action:
  """Adds `--snake_case` and its hidden `--kebab-case` twin (positional names pass through)."""
  names = [name]
  if name.startswith("--") and "_" in name:
    names.append(name.replace("_", "-"))
  return parser_or_group.add_argument(*names, **kwargs)
