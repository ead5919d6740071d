"""The generic training loop: learning, resume equality, keep-best, NaN guard, metric files."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from vtd import metric_writers
from vtd import sharding
from vtd import train as train_lib
from tests import toy_program


def loop_cfg(**kw):
  cfg = dict(log_every_steps=4, eval_every_steps=4, checkpoint_every_steps=2, keep_last=2,
             best_metric="neg_mse", best_mode="max", async_checkpointing=False,
             tensorboard=True)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def test_loss_decreases_and_files_written(tmp_path):
  mesh = sharding.make_mesh()
  result = train_lib.fit(toy_program.make_program(num_steps=12), loop_cfg(), str(tmp_path),
                         mesh, seed=0)
  records = metric_writers.read_jsonl(tmp_path / "metrics.jsonl")
  train_losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert len(train_losses) == 3 and train_losses[-1] < 0.5 * train_losses[0]
  assert any("val/neg_mse" in r for r in records)
  assert any("train/steps_per_sec" in r for r in records)
  assert os.listdir(tmp_path / "tb"), "no TensorBoard event file"
  assert -result.metrics["neg_mse"] < 0.2 * train_losses[0]


def test_resumed_run_equals_uninterrupted(tmp_path):
  mesh = sharding.make_mesh()
  full = train_lib.fit(toy_program.make_program(num_steps=12, evaluate=False),
                       loop_cfg(), str(tmp_path / "full"), mesh, seed=3)
  # First 6 steps, then a new process-like restart (fresh program/iterator) to 12.
  train_lib.fit(toy_program.make_program(num_steps=6, evaluate=False), loop_cfg(),
                str(tmp_path / "split"), mesh, seed=3)
  resumed = train_lib.fit(toy_program.make_program(num_steps=12, evaluate=False), loop_cfg(),
                          str(tmp_path / "split"), mesh, seed=3)
  np.testing.assert_array_equal(full.variables["params"]["w"], resumed.variables["params"]["w"])
  assert resumed.step == 12


def test_keeps_best_and_last(tmp_path):
  mesh = sharding.make_mesh()
  result = train_lib.fit(toy_program.make_program(num_steps=12), loop_cfg(keep_last=1),
                         str(tmp_path), mesh, seed=0)
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert 12 in steps and result.step in steps and len(steps) <= 2
  # The selected variables are the best validation ones.
  records = metric_writers.read_jsonl(tmp_path / "metrics.jsonl")
  vals = {r["step"]: r["val/neg_mse"] for r in records if "val/neg_mse" in r}
  assert result.step == max(vals, key=vals.get)


def test_nan_guard_stops_with_step_and_keeps_last_good(tmp_path):
  mesh = sharding.make_mesh()
  with pytest.raises(train_lib.NonFiniteLossError, match=r"at step 7; last good checkpoint: step 6"):
    train_lib.fit(toy_program.make_program(num_steps=12, nan_at_step=7, evaluate=False),
                  loop_cfg(log_every_steps=100), str(tmp_path), mesh, seed=0)
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert max(steps) == 6


def test_finished_run_is_not_retrained(tmp_path):
  mesh = sharding.make_mesh()
  first = train_lib.fit(toy_program.make_program(num_steps=8), loop_cfg(), str(tmp_path),
                        mesh, seed=0)
  n_records = len(metric_writers.read_jsonl(tmp_path / "metrics.jsonl"))
  again = train_lib.fit(toy_program.make_program(num_steps=8), loop_cfg(), str(tmp_path),
                        mesh, seed=0)
  np.testing.assert_array_equal(first.variables["params"]["w"], again.variables["params"]["w"])
  train_records = [r for r in metric_writers.read_jsonl(tmp_path / "metrics.jsonl")[n_records:]
                   if "train/loss" in r]
  assert not train_records
