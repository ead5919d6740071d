"""Checkpoint fallback: a damaged latest checkpoint is moved aside and the run resumes from
the newest readable one, ending bit-identical to an uninterrupted run."""

import os
import shutil

import numpy as np
import pytest

from vtd import sharding
from vtd import train as train_lib
from tests import toy_program
from tests.test_train import loop_cfg


def _truncate_data_files(checkpoint):
  """Cuts every OCDBT data file of the state to 7 bytes (a save killed mid-write)."""
  for d, _, files in os.walk(os.path.join(checkpoint, "state")):
    if os.path.basename(d) == "d":
      for f in files:
        with open(os.path.join(d, f), "r+b") as fh:
          fh.truncate(7)


def _remove(path):
  shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


DAMAGE = {
    "manifest removed": lambda c: _remove(os.path.join(c, "state", "manifest.ocdbt")),
    "data files truncated": _truncate_data_files,
    "iterator state removed": lambda c: _remove(os.path.join(c, "data_iter",
                                                             "process_0-of-1.json")),
    "state removed": lambda c: _remove(os.path.join(c, "state")),
    "metadata garbled": lambda c: open(os.path.join(c, "state", "_METADATA"), "w").write("{x"),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  mesh = sharding.make_mesh()
  return train_lib.fit(toy_program.make_program(num_steps=12, evaluate=False), loop_cfg(),
                       str(tmp_path_factory.mktemp("full")), mesh, seed=5)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back(tmp_path, damage, uninterrupted, caplog):
  mesh = sharding.make_mesh()
  # Interrupted after step 8 (checkpoints 6 and 8 kept), then step 8 is damaged.
  train_lib.fit(toy_program.make_program(num_steps=8, evaluate=False), loop_cfg(),
                str(tmp_path), mesh, seed=5)
  DAMAGE[damage](str(tmp_path / "checkpoints" / "8"))
  resumed = train_lib.fit(toy_program.make_program(num_steps=12, evaluate=False), loop_cfg(),
                          str(tmp_path), mesh, seed=5)
  np.testing.assert_array_equal(resumed.variables["params"]["w"],
                                uninterrupted.variables["params"]["w"])
  moved = os.listdir(tmp_path / "checkpoints_unreadable")
  assert len(moved) == 1 and moved[0].startswith("8-")
  warning = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert warning and "checkpoint step 8" in warning[0] and "moved it to" in warning[0]


def test_all_checkpoints_damaged_starts_over(tmp_path, uninterrupted):
  mesh = sharding.make_mesh()
  train_lib.fit(toy_program.make_program(num_steps=8, evaluate=False), loop_cfg(),
                str(tmp_path), mesh, seed=5)
  for step in os.listdir(tmp_path / "checkpoints"):
    DAMAGE["state removed"](str(tmp_path / "checkpoints" / step))
  resumed = train_lib.fit(toy_program.make_program(num_steps=12, evaluate=False), loop_cfg(),
                          str(tmp_path), mesh, seed=5)
  np.testing.assert_array_equal(resumed.variables["params"]["w"],
                                uninterrupted.variables["params"]["w"])
  assert len(os.listdir(tmp_path / "checkpoints_unreadable")) == 2
