"""Workdir files: atomic JSON / .npy / .npz writes and self-contained model artifacts.

Every path goes through `etils.epath` (what orbax uses), so a workdir may be a local folder or
an object-store URI (`gs://bucket/run`) wherever epath has a backend for it. Writes are atomic:
a temporary sibling named `.<name>.<pid>-<random>.vtdtmp` is written, then renamed over the
target, so readers never see half a file. Temporaries left by a killed process are swept at
the next start (`vtd.workdir.sweep_temporaries`). Files are created with plain `open`, so they
get the user's umask (mkstemp's 0600 would hide them from a shared cluster group).

Layout of an artifact directory:
  variables.msgpack  flax-serialised {'params', 'batch_stats'} (numpy arrays)
  config.json        the full run config (ml_collections -> JSON)
  metadata.json      method, model name, step, metrics, vtd version, creation time, shapes

Every trained stage writes one (`<stage_dir>/model`); teachers are loaded from there by path,
and `python -m vtd.export` copies one out for evaluation elsewhere.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import IO, Any, Callable

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import serialization

import vtd

VARIABLES = "variables.msgpack"
CONFIG = "config.json"
METADATA = "metadata.json"
TMP_SUFFIX = ".vtdtmp"


def json_default(x: Any) -> Any:
  if isinstance(x, (np.integer, np.floating, np.bool_)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, os.PathLike):
    return os.fspath(x)
  raise TypeError(f"not JSON serialisable: {type(x)}")


def temporary_sibling(path: Any) -> epath.Path:
  """A fresh temporary name next to `path` (same directory, so the rename stays atomic)."""
  path = epath.Path(path)
  return path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"


def write_atomic(path: Any, write: Callable[[IO[bytes]], None]) -> None:
  """Calls `write(file)` on a temporary sibling of `path`, then renames it over `path`."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temporary_sibling(path)
  try:
    with tmp.open("wb") as f:
      write(f)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_json_atomic(path: Any, payload: Any, *, sort_keys: bool = True) -> None:
  """Writes JSON atomically. `sort_keys=False` keeps the mapping's order (where it carries
  meaning, e.g. FIVR's query order in annotation.json)."""
  text = json.dumps(payload, indent=2, sort_keys=sort_keys, default=json_default)
  write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def read_json(path: Any) -> Any:
  return json.loads(epath.Path(path).read_text())


def save_npz_atomic(path: Any, **arrays: Any) -> None:
  """np.savez to a temporary sibling + rename (also safe when several processes write it)."""
  write_atomic(path, lambda f: np.savez(f, **arrays))


def save_npy_atomic(path: Any, array: Any) -> None:
  write_atomic(path, lambda f: np.save(f, np.asarray(array)))


def load_npy(path: Any) -> np.ndarray:
  with epath.Path(path).open("rb") as f:
    return np.load(f)


def load_npz(path: Any) -> dict[str, np.ndarray]:
  """Every array of an .npz file, read while the file is open (works on object stores too)."""
  with epath.Path(path).open("rb") as f:
    with np.load(f) as z:
      return {k: z[k] for k in z.files}


def save_artifact(directory: Any, variables: Any, config: ml_collections.ConfigDict,
                  metadata: dict[str, Any]) -> None:
  """Writes an artifact atomically (a crash leaves either the old one or the new one)."""
  directory = epath.Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = temporary_sibling(directory)
  tmp.mkdir()
  variables = jax.tree.map(np.asarray, variables)
  (tmp / VARIABLES).write_bytes(
      serialization.msgpack_serialize(serialization.to_state_dict(variables)))
  (tmp / CONFIG).write_text(config.to_json(indent=2))
  shapes = jax.tree.map(lambda x: list(x.shape), variables)
  meta = {"vtd_version": vtd.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
          "num_params": int(sum(x.size for x in jax.tree.leaves(variables.get("params", {})))),
          **metadata, "shapes": shapes}
  (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, default=json_default))
  if directory.exists():
    directory.rmtree()
  tmp.rename(directory)


def load_artifact(directory: Any) -> tuple[dict[str, Any], ml_collections.ConfigDict,
                                           dict[str, Any]]:
  """Returns (variables, config, metadata) of an artifact directory."""
  directory = epath.Path(directory)
  for name in (VARIABLES, CONFIG, METADATA):
    if not (directory / name).is_file():
      raise FileNotFoundError(f"{directory} is not a vtd model artifact: missing {name}")
  variables = serialization.msgpack_restore((directory / VARIABLES).read_bytes())
  config = ml_collections.ConfigDict(json.loads((directory / CONFIG).read_text()))
  metadata = json.loads((directory / METADATA).read_text())
  return variables, config, metadata
