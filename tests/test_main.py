import logging

from vtd import main as vtd_main


def _record(path, level, msg):
  return logging.LogRecord("absl", level, path, 1, msg, (), None)


def test_library_log_filter():
  f = vtd_main._LibraryInfoFilter()
  orbax = "/x/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not f.filter(_record(orbax, logging.INFO, "Saving checkpoint at step 5"))
  assert f.filter(_record(orbax, logging.WARNING, "disk almost full"))
  assert not f.filter(_record(orbax, logging.WARNING, "Requested `tracked_metric`; did not "
                                                      "provide metrics."))
  assert f.filter(_record("/repo/vtd/train.py", logging.INFO, "step 5"))


# ---- the one error path ---------------------------------------------------------------------

import errno  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import ml_collections  # noqa: E402
import pytest  # noqa: E402

from vtd import sharding  # noqa: E402
from vtd import train as train_lib  # noqa: E402
from vtd.errors import UserError  # noqa: E402
from tests import toy_program  # noqa: E402
from tests.test_train import loop_cfg  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "vtd.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/teachtext.py:smoke", "--config.optim.lrr=1"],
     "vtd: error: unknown config key 'optim.lrr'; did you mean 'lr'?"),
    (["--config=configs/teachtext.py:smoke", "--config.optimm.lr=1"],
     "vtd: error: unknown config key 'optimm.lr'; did you mean 'optim'?"),
    (["--config=configs/teachtext.py:nope"],
     "vtd: error: --config=configs/teachtext.py:nope: unknown preset 'nope'; expected smoke, "
     "moee or one of ['activitynet', 'didemo', 'lsmdc', 'msrvtt', 'msrvtt_1ka', 'msvd']"),
    (["--config=configs/nofile.py"],
     "vtd: error: config file configs/nofile.py not found; pass "
     "--config=configs/<method>.py[:preset], relative to the current directory"),
    (["--config=configs/teachtext.py:smoke", "--config.optim.lr=abc"],
     "vtd: error: flag --config.optim.lr=abc: could not convert string to float: 'abc'"),
])
def test_config_errors_are_one_line(tmp_path, args, expected):
  proc = _cli(*args, f"--workdir={tmp_path}")
  assert proc.returncode == 2 and proc.stderr.strip() == expected


def test_workdir_errors_are_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  proc = _cli("--config=configs/teachtext.py:smoke", f"--workdir={tmp_path}/file")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"vtd: error: --workdir={tmp_path}/file is a file, not a directory; pass a directory path")


def _raising_method(exc):
  return types.SimpleNamespace(train_and_evaluate=lambda config, workdir: (_ for _ in ()).throw(
      exc))


def _toy_config():
  return ml_collections.ConfigDict(dict(
      method="toy", distributed=dict(mode="off", coordinator_address="", num_processes=1,
                                     process_id=0, cpu_collectives=""),
      runtime=dict(quiet_library_logs=True, compilation_cache_dir="", reuse="changed",
                   debug=False)))


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/w/ckpt/1"),
     "No space left on device: /w/ckpt/1; free some space or pass a --workdir on another disk"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/w"),
     "Read-only file system: /mnt/ro/w; check the permissions, or pass a --workdir you can "
     "write to"),
    (ValueError("RESOURCE_EXHAUSTED: Error writing local file \"/w/c/d/abc\": [OS error: No "
                "space left on device]"),
     "no space left on device while writing /w/c/d/abc; free some space or pass a --workdir "
     "on another disk"),
    (UserError("data file x is truncated, re-create it"), "data file x is truncated, re-create it"),
])
def test_environment_errors_are_one_line(tmp_path, monkeypatch, capsys, exc, expected):
  monkeypatch.setitem(vtd_main.METHODS, "toy", "toy_method")
  monkeypatch.setitem(sys.modules, "toy_method", _raising_method(exc))
  assert vtd_main.run_and_report(_toy_config(), str(tmp_path)) == 2
  assert capsys.readouterr().err == f"vtd: error: {expected}\n"


def test_non_finite_loss_is_one_line_and_debug_shows_traceback(tmp_path, monkeypatch, capsys):
  def train_and_evaluate(config, workdir):
    train_lib.fit(toy_program.make_program(num_steps=8, nan_at_step=3, evaluate=False),
                  loop_cfg(log_every_steps=100), os.fspath(workdir), sharding.make_mesh(), 0)

  monkeypatch.setitem(vtd_main.METHODS, "toy", "toy_method")
  monkeypatch.setitem(sys.modules, "toy_method",
                      types.SimpleNamespace(train_and_evaluate=train_and_evaluate))
  assert vtd_main.run_and_report(_toy_config(), str(tmp_path / "a")) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(
      "vtd: error: non-finite grad_norm, loss, mse at step 3; last good checkpoint: step 2")
  config = _toy_config()
  config.runtime.debug = True
  with pytest.raises(train_lib.NonFiniteLossError):
    vtd_main.run_and_report(config, str(tmp_path / "b"))


def test_a_bug_is_not_hidden(tmp_path, monkeypatch):
  monkeypatch.setitem(vtd_main.METHODS, "toy", "toy_method")
  monkeypatch.setitem(sys.modules, "toy_method", _raising_method(IndexError("a vtd bug")))
  with pytest.raises(IndexError):
    vtd_main.run_and_report(_toy_config(), str(tmp_path))
