"""Feature extraction over 2 local processes (jax.distributed on 127.0.0.1): hosts take shards
round-robin, each reads back every shard, and the result equals one process's."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_multiprocess import REPO, _env, _free_port
from tests.uts import extract_worker
from vtd.uts import extract


@pytest.mark.slow
def test_two_hosts_split_shards_and_match_one(tmp_path):
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-m", "tests.uts.extract_worker", str(i), "2",
                             str(port), str(tmp_path)], cwd=REPO, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, log[-3000:]
    assert f"process {i}/2 done" in log
  # 11 videos in shards of 2 -> 6 shards; process 0 owns 0, 2, 4 and process 1 owns 1, 3, 5,
  # so only process 0 reads the unreadable video 4 (shard 2).
  assert "skipping unreadable video v4" in logs[0]
  assert "skipping unreadable video" not in logs[1]
  shards = sorted(os.listdir(tmp_path / "shards"))
  assert shards == [f"shard_{k:05d}.npz" for k in range(6)]
  single = extract.extract(extract_worker.collection()[0], extract_worker.embed,
                           str(tmp_path / "single"), shard_videos=2, batch_frames=8)
  with np.load(tmp_path / "features.npz") as multi:
    np.testing.assert_array_equal(multi["frame_video"], single.frame_video)
    assert list(multi["skipped"]) == single.skipped == ["v4"]
    for name in ("mean", "max"):
      np.testing.assert_allclose(multi[name], single.features[name], rtol=1e-6)
