"""Resumable multi-stage pipelines: a finished stage is reused, an interrupted one resumes.

A stage is a directory. It is *finished* when `<dir>/stage.json` exists; that file is written
last (atomically), after the stage's outputs, so its presence means every output is complete.
An unfinished stage is simply run again: its own training loop resumes from its checkpoints.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
from absl import logging

from vtd import artifacts
from vtd import sharding

DONE_FILE = "stage.json"


def is_done(stage_dir: str) -> bool:
  return os.path.isfile(os.path.join(stage_dir, DONE_FILE))


def load_result(stage_dir: str) -> dict[str, Any]:
  with open(os.path.join(stage_dir, DONE_FILE), encoding="utf-8") as f:
    return json.load(f)


def run_stage(stage_dir: str, fn: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
  """Runs `fn(stage_dir)` unless the stage finished before; returns its JSON result."""
  name = os.path.basename(os.path.normpath(stage_dir))
  if is_done(stage_dir):
    logging.info("stage %s: finished earlier, reusing %s", name, stage_dir)
    return load_result(stage_dir)
  logging.info("stage %s: running in %s", name, stage_dir)
  os.makedirs(stage_dir, exist_ok=True)
  # Normalise through JSON so a fresh result equals one reloaded from stage.json.
  result = json.loads(json.dumps(fn(stage_dir), default=artifacts.json_default))
  if jax.process_index() == 0:
    artifacts.write_json_atomic(os.path.join(stage_dir, DONE_FILE), result)
  sharding.sync(f"stage-done-{name}")  # Others may read this stage's outputs next.
  return result
