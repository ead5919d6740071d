"""The workdir: lock, temporaries swept, umask respected, resolved config, object stores."""

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from vtd import artifacts
from vtd import metric_writers
from vtd import stages
from vtd import workdir as workdir_lib
from vtd.errors import UserError
from tests import test_stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HOLD_LOCK = ("import sys, time; sys.path.insert(0, {repo!r}); from etils import epath; "
              "from vtd import workdir; workdir.WorkdirLock(epath.Path({path!r})).acquire(); "
              "print('locked', flush=True); time.sleep(60)")


def _holder(path):
  proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK.format(repo=REPO, path=str(path))],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_run_on_a_live_workdir_is_refused(tmp_path):
  proc = _holder(tmp_path)
  try:
    with pytest.raises(UserError, match=rf"workdir {tmp_path} is in use by pid {proc.pid} on "
                                        r"host .* \(started .*\); wait for that run"):
      workdir_lib.WorkdirLock(epath.Path(tmp_path)).acquire()
  finally:
    proc.kill()
    proc.wait()


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  proc = _holder(tmp_path)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  lock = workdir_lib.WorkdirLock(epath.Path(tmp_path))
  lock.acquire()
  assert any("ended without releasing it; taking it over" in r.getMessage()
             and f"pid {proc.pid}" in r.getMessage() for r in caplog.records)
  assert json.loads(open(tmp_path / workdir_lib.LOCK_FILE).read())["pid"] == os.getpid()
  lock.release()
  assert open(tmp_path / workdir_lib.LOCK_FILE).read() == ""


def test_open_workdir_sweeps_temporaries_and_records_the_config(tmp_path):
  (tmp_path / "stage" / "model").mkdir(parents=True)
  debris = [tmp_path / "stage" / ".stage.json.123-abcd.vtdtmp",
            tmp_path / "stage" / "kept_captions.npy.77.tmp.npz",
            tmp_path / "tmpab12cd.tmp"]
  for f in debris:
    f.write_text("half")
  (tmp_path / "stage" / ".artifact-xyz").mkdir()
  keep = tmp_path / "stage" / "model" / "variables.msgpack"
  keep.write_text("real")
  config = test_stages.make_config()
  with workdir_lib.open_workdir(str(tmp_path), config):
    assert not any(f.exists() for f in debris)
    assert not (tmp_path / "stage" / ".artifact-xyz").exists() and keep.exists()
  assert json.loads((tmp_path / workdir_lib.CONFIG_FILE).read_text()) == config.to_dict()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_get_the_users_umask(tmp_path, umask):
  old = os.umask(umask)
  try:
    artifacts.write_json_atomic(tmp_path / "a" / "stage.json", {"x": 1})
    artifacts.save_artifact(tmp_path / "model", {"params": {"w": np.ones(2)}},
                            test_stages.make_config(), {"method": "toy"})
  finally:
    os.umask(old)
  mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
  assert mode(tmp_path / "a" / "stage.json") == 0o666 & ~umask
  assert mode(tmp_path / "model") == 0o777 & ~umask
  assert mode(tmp_path / "model" / artifacts.METADATA) == 0o666 & ~umask
  assert not [f for f in os.listdir(tmp_path / "a") if f.endswith(artifacts.TMP_SUFFIX)]


def test_metrics_are_not_repeated_after_a_resume(tmp_path):
  writer = metric_writers.MetricWriter(tmp_path, tensorboard=False)
  for step in (2, 4, 6, 8):
    writer.write_scalars(step, {"loss": step})
  writer.close()
  # A resume from the checkpoint at step 4 replays steps 6 and 8.
  writer = metric_writers.MetricWriter(tmp_path, tensorboard=False)
  writer.truncate_after(4)
  for step in (6, 8):
    writer.write_scalars(step, {"loss": -step})
  writer.close()
  rows = metric_writers.read_jsonl(tmp_path / "metrics.jsonl")
  assert [(r["step"], r["loss"]) for r in rows] == [(2, 2), (4, 4), (6, -6), (8, -8)]


class _FakeGCS(MemoryFileSystem):
  """fsspec's in-memory filesystem, answering for gs:// (what epath asks fsspec for)."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]


@pytest.fixture
def fake_bucket():
  for name in _FakeGCS.protocol:
    fsspec.register_implementation(name, _FakeGCS, clobber=True)
  _FakeGCS.store.clear()
  yield "gs://bucket/run"
  _FakeGCS.store.clear()


def test_object_store_workdir(fake_bucket, tmp_path):
  workdir = epath.Path(fake_bucket)
  config = test_stages.make_config()
  with workdir_lib.open_workdir(fake_bucket, config) as path:
    results = stages.run_pipeline(config, path, test_stages.graph(test_stages.Recorder()),
                                  data_fingerprint={"d": 1})
  assert results["student"]["value"] == 7
  assert (workdir / "teacher" / stages.DONE_FILE).exists()
  assert any(k.endswith("bucket/run/teacher/stage.json") for k in _FakeGCS.store)
  assert json.loads((workdir / workdir_lib.CONFIG_FILE).read_text())["seed"] == 0
  # Nothing leaked into a local folder named after the URI.
  assert not os.path.exists("gs:") and not (tmp_path / "gs:").exists()
  # Reused on the next run, rerun on a change, moved aside inside the bucket.
  rec = test_stages.Recorder()
  stages.run_pipeline(config, workdir, test_stages.graph(rec), data_fingerprint={"d": 1})
  assert rec.calls == []
  stages.run_pipeline(test_stages.make_config(**{"train.steps": 9}), workdir,
                      test_stages.graph(rec), data_fingerprint={"d": 1})
  assert rec.calls == ["student"]
  assert [p.name for p in (workdir / stages.SUPERSEDED_DIR).iterdir()]
  # Artifacts, arrays and metrics go through epath as well.
  artifacts.save_artifact(workdir / "teacher" / "model", {"params": {"w": np.arange(3.0)}},
                          config, {"method": "toy"})
  variables, _, meta = artifacts.load_artifact(workdir / "teacher" / "model")
  np.testing.assert_array_equal(variables["params"]["w"], np.arange(3.0))
  artifacts.save_npy_atomic(workdir / "x.npy", np.eye(2))
  np.testing.assert_array_equal(artifacts.load_npy(workdir / "x.npy"), np.eye(2))
  writer = metric_writers.MetricWriter(workdir / "teacher", tensorboard=False)
  writer.write_scalars(1, {"loss": 0.5})
  writer.close()
  assert metric_writers.read_jsonl(workdir / "teacher" / "metrics.jsonl")[0]["loss"] == 0.5
