"""Multi-host: 2 local processes (jax.distributed over 127.0.0.1, gloo collectives) train the
TeachText pipeline for 2 steps per stage and get the same parameters as one process.

Each process owns 1 CPU device and feeds its half of every global batch; the single-process
run has 1 device and the whole batch. Tolerance rtol 1e-5 / atol 1e-6: the cross-process
all-reduces only reassociate float32 sums.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from vtd import artifacts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/teachtext.py:smoke", "--config.train.num_steps=2",
        "--config.teachers.text_embeddings=w2v", "--config.student.train_baseline=false",
        "--config.train.async_checkpointing=false"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable,
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return env


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  cache = f"--config.data.cache_dir={tmp_path}/cache"
  multi = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "2", str(_free_port()), "--", *ARGS, cache,
       f"--workdir={tmp_path}/multi"], cwd=REPO, capture_output=True, text=True, timeout=400,
      env=dict(_env(tmp_path), VTD_LOG_DIR=str(tmp_path)))
  logs = "".join(open(tmp_path / f"process_{i}.log").read()[-3000:] for i in range(2)
                 if (tmp_path / f"process_{i}.log").exists())
  assert multi.returncode == 0, multi.stdout + multi.stderr + logs
  assert "process 1/2" in open(tmp_path / "process_1.log").read()
  single = subprocess.run([sys.executable, "-m", "vtd.main", *ARGS, cache,
                           f"--workdir={tmp_path}/single"], cwd=REPO, capture_output=True,
                          text=True, timeout=400, env=_env(tmp_path))
  assert single.returncode == 0, single.stderr[-3000:]
  for model in ("teacher_w2v", "student_teachtext"):
    a, _, meta_a = artifacts.load_artifact(str(tmp_path / "multi" / model / "model"))
    b, _, meta_b = artifacts.load_artifact(str(tmp_path / "single" / model / "model"))
    assert meta_a["step"] == meta_b["step"] == 2
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
