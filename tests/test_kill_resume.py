"""Reliability: kill -9 in the middle of training, re-run the same command, and the finished
model is bit-identical to the one of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vtd import artifacts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir, tmp_path):
  return [sys.executable, "-m", "vtd.main", "--config=configs/teachtext.py:smoke",
          f"--workdir={workdir}", "--config.train.num_steps=300",
          "--config.train.checkpoint_every_steps=20", "--config.train.eval_every_steps=100",
          "--config.teachers.text_embeddings=w2v", "--config.student.train_baseline=false",
          f"--config.data.cache_dir={tmp_path}/cache",
          f"--config.runtime.compilation_cache_dir={tmp_path}/jax_cache"]


def _steps(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


@pytest.mark.slow
def test_kill_minus_nine_then_resume_equals_uninterrupted(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  reference = subprocess.run(_command(tmp_path / "ref", tmp_path), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
  assert reference.returncode == 0, reference.stderr[-3000:]

  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_command(workdir, tmp_path), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = workdir / "student_teachtext" / "checkpoints"
  deadline = time.time() + 300
  # Kill in the middle of the *student* stage (teacher finished, a few student checkpoints).
  while time.time() < deadline and proc.poll() is None and len(_steps(ckpt_dir)) < 2:
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  killed_at = _steps(ckpt_dir)
  assert killed_at and max(killed_at) < 300
  resumed = subprocess.run(_command(workdir, tmp_path), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step" in resumed.stderr
  assert "teacher_w2v (teacher, text embedding w2v): finished earlier with the same config, " \
      "reusing" in resumed.stderr
  a, _, _ = artifacts.load_artifact(str(tmp_path / "ref" / "student_teachtext" / "model"))
  b, _, _ = artifacts.load_artifact(str(workdir / "student_teachtext" / "model"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
