"""The segmentation pipeline end to end on tiny data, plus its small pieces."""

import json
import os

import jax
import numpy as np
import pytest

from configs import segmentation as seg_config
from vtd import main as vtd_main
from vtd import sharding
from vtd.errors import UserError
from vtd.segmentation import input_pipeline
from vtd.segmentation import teacher as teacher_lib
from vtd.segmentation import videopca


def test_teacher_batching_equals_per_video():
  rng = np.random.default_rng(0)
  # 10 frames are split into two PCAs of 5; batches of 2 videos pad 6 -> 5 + masking.
  videos = [rng.integers(0, 255, size=(t, 12, 16, 3), dtype=np.uint8) for t in (10, 5)]
  vcfg = videopca.VideoPCAConfig(size=None, max_frames=5)
  got = teacher_lib.soft_masks(videos, vcfg, sharding.make_mesh(), batch_videos=2)
  for v, g in zip(videos, got):
    want = np.concatenate([np.asarray(videopca.videopca_soft_masks(v[a:b], cfg=vcfg))
                           for a, b in videopca.split_video(len(v), 5)])
    np.testing.assert_allclose(g, want, atol=1e-5)


def tiny_config(tmp_path):
  config = seg_config.get_config("smoke")
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.synthetic.update(num_train_videos=8, num_val_videos=2, num_test_videos=2)
  config.students.names = "lowres_net,fconv"
  config.student_training.num_steps = 4
  config.evalseg.num_steps = 4
  config.train.async_checkpointing = False
  config.runtime.compilation_cache_dir = ""
  return config


@pytest.mark.slow
def test_pipeline_end_to_end_and_reuse(tmp_path):
  config = tiny_config(tmp_path)
  workdir = tmp_path / "run"
  results = vtd_main.run(config, str(workdir))
  expected = ["videopca_teacher", "gen1/lowres_net", "gen1/fconv", "gen1/multinet",
              "gen1/evalseg", "gen2/lowres_net", "gen2/fconv", "gen2/multinet"]
  assert list(results) == expected
  for name in expected:
    if name.endswith("evalseg"):
      continue
    for split in ("val", "test"):  # Both held-out splits are scored, separately.
      t = results[name][split]
      assert 0 <= t["J"] <= 100 and 0 <= t["P"] <= 100 and 0 <= t["CorLoc"] <= 100
  kept = results["videopca_teacher"]["selection"]["kept"]
  assert kept["count"] == round(0.5 * results["videopca_teacher"]["selection"]["all"]["count"])
  evalseg = results["gen1/evalseg"]
  assert sum(evalseg["kept_per_student"].values()) == evalseg["selection"]["kept"]["count"]
  assert set(evalseg["kept_per_student"]) == {"lowres_net", "fconv"}
  for split in ("val", "test"):
    assert os.path.isfile(workdir / "overlays" / f"{split}_gen2.png")
  with open(workdir / "results.json") as f:
    assert json.load(f)["gen2/fconv"] == results["gen2/fconv"]
  stamp = os.path.getmtime(workdir / "gen2" / "fconv" / "stage.json")
  assert vtd_main.run(config, str(workdir))["gen2/fconv"] == results["gen2/fconv"]
  assert os.path.getmtime(workdir / "gen2" / "fconv" / "stage.json") == stamp


def test_eval_splits_are_validated(tmp_path):
  config = tiny_config(tmp_path)
  config.data.eval_splits = "val,train"
  with pytest.raises(UserError, match="eval_splits"):
    input_pipeline.load_eval_sets(config)
  config.data.eval_splits = "val"
  config.data.synthetic.update(num_train_videos=2, num_test_videos=1, num_val_videos=1)
  sets = input_pipeline.load_eval_sets(config)
  assert list(sets) == ["val"] and sets["val"].name == "synthetic/val"
