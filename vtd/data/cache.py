"""The generate-once cache of the embedded datasets (one .npz per generator spec).

Each entry is an .npz holding the generator's arrays plus `meta/checksum`, a SHA-256 over
every array's name, dtype, shape and bytes (`checksum`). An entry that cannot be read, lacks
the checksum (written by an older vtd) or fails it is regenerated, with a warning naming its
path: a damaged cache costs one generation, never a wrong dataset or a stopped run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Callable, TypeVar

import numpy as np
from absl import logging

from vtd import artifacts
from vtd.data import file_errors
from vtd.errors import UserError

T = TypeVar("T")

CHECKSUM_KEY = "meta/checksum"
_REMEDY = "vtd regenerates it"  # What load_or_generate does with an entry load_entry rejects.


def cache_file(cache_dir: str, name: str, key: str) -> str:
  """`<cache_dir>/<name>_<key>.npz` (`~` expanded): one file per generator spec (`key`)."""
  return os.path.join(os.path.expanduser(cache_dir), f"{name}_{key}.npz")


def checksum(arrays: Mapping[str, np.ndarray]) -> str:
  """SHA-256 hex digest of the arrays (names, dtypes, shapes, bytes), `CHECKSUM_KEY` excluded."""
  digest = hashlib.sha256()
  for name in sorted(arrays):
    if name == CHECKSUM_KEY:
      continue
    array = np.ascontiguousarray(arrays[name])
    digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
    if array.size and array.dtype.itemsize:
      digest.update(array.reshape(-1).view(np.uint8))
  return digest.hexdigest()


def save_entry(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes `arrays` and their checksum as one .npz, atomically (temporary file + rename)."""
  artifacts.save_npz_atomic(path, **arrays, **{CHECKSUM_KEY: np.asarray(checksum(arrays))})


def load_entry(path: str, what: str) -> dict[str, np.ndarray]:
  """The arrays of an entry written by `save_entry`, checksum verified (and removed).

  Raises:
    UserError naming `what` and `path`: unreadable, no checksum, or a checksum mismatch.
  """
  arrays = file_errors.read_npz(path, what, _REMEDY)
  stored = arrays.pop(CHECKSUM_KEY, None)
  if stored is None:
    raise UserError(f"{what} {path} has no checksum (written by an older vtd); {_REMEDY}")
  if str(stored) != checksum(arrays):
    raise UserError(f"{what} {path} fails its checksum (its contents changed after it was "
                    f"written); {_REMEDY}")
  return arrays


def load_or_generate(path: str | None, generate: Callable[[], T], load: Callable[[str], T],
                     save: Callable[[T, str], None]) -> T:
  """`load(path)` if the file exists, else `generate()` and `save` it there (None: no cache).

  An entry `load` rejects with a UserError (unreadable, checksum, written for another spec) is
  regenerated and overwritten, with a warning naming the path and the reason. `save` must
  write atomically (`save_entry`): concurrent processes generating the same dataset then never
  read a half-written file.
  """
  if not path:
    return generate()
  if os.path.exists(path):
    try:
      return load(path)
    except UserError as e:  # The message names the path.
      message = str(e)
      logging.warning("%s%s", message, "" if message.endswith(_REMEDY) else f"; {_REMEDY}")
  data = generate()
  save(data, path)
  return data
