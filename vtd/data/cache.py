"""The generate-once cache of the embedded datasets (one .npz per generator spec)."""

from __future__ import annotations

import os
from typing import Callable, TypeVar

T = TypeVar("T")


def cache_file(cache_dir: str, name: str, key: str) -> str:
  """`<cache_dir>/<name>_<key>.npz` (`~` expanded): one file per generator spec (`key`)."""
  return os.path.join(os.path.expanduser(cache_dir), f"{name}_{key}.npz")


def load_or_generate(path: str | None, generate: Callable[[], T], load: Callable[[str], T],
                     save: Callable[[T, str], None]) -> T:
  """`load(path)` if the file exists, else `generate()` and `save` it there (None: no cache).

  `save` must write atomically (temporary file + rename): concurrent processes generating the
  same dataset then never read a half-written file.
  """
  if not path:
    return generate()
  if os.path.exists(path):
    return load(path)
  data = generate()
  save(data, path)
  return data
