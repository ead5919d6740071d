"""Self-contained model artifacts: params + config + metadata, no training state.

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
import shutil
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import serialization

import vtd

VARIABLES = "variables.msgpack"
CONFIG = "config.json"
METADATA = "metadata.json"


def json_default(x: Any) -> Any:
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x)}")


def write_json_atomic(path: str, payload: Any, *, sort_keys: bool = True) -> None:
  """Writes JSON via a temporary file + rename, so readers never see half a file.

  `sort_keys=False` keeps the mapping's order (where it carries meaning, e.g. FIVR's query
  order in annotation.json)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, sort_keys=sort_keys, default=json_default)
  os.replace(tmp, path)


def save_npz_atomic(path: str, **arrays: Any) -> None:
  """np.savez via a per-process temporary file + rename: readers (and other processes writing
  the same file) never see half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def save_artifact(directory: str, variables: Any, config: ml_collections.ConfigDict,
                  metadata: dict[str, Any]) -> None:
  """Writes an artifact atomically (a crash leaves either the old one or the new one)."""
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".artifact-")
  variables = jax.tree.map(np.asarray, variables)
  with open(os.path.join(tmp, VARIABLES), "wb") as f:
    f.write(serialization.msgpack_serialize(serialization.to_state_dict(variables)))
  with open(os.path.join(tmp, CONFIG), "w", encoding="utf-8") as f:
    f.write(config.to_json(indent=2))
  shapes = jax.tree.map(lambda x: list(x.shape), variables)
  meta = {"vtd_version": vtd.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
          "num_params": int(sum(x.size for x in jax.tree.leaves(variables.get("params", {})))),
          **metadata, "shapes": shapes}
  write_json_atomic(os.path.join(tmp, METADATA), meta)
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(tmp, directory)


def load_artifact(directory: str) -> tuple[dict[str, Any], ml_collections.ConfigDict,
                                           dict[str, Any]]:
  """Returns (variables, config, metadata) of an artifact directory."""
  for name in (VARIABLES, CONFIG, METADATA):
    if not os.path.isfile(os.path.join(directory, name)):
      raise FileNotFoundError(f"{directory} is not a vtd model artifact: missing {name}")
  with open(os.path.join(directory, VARIABLES), "rb") as f:
    variables = serialization.msgpack_restore(f.read())
  with open(os.path.join(directory, CONFIG), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(directory, METADATA), encoding="utf-8") as f:
    metadata = json.load(f)
  return variables, config, metadata
