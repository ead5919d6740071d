"""The UTS pipeline end to end on tiny data; resumable sharded extraction; real video folders."""

import json
import os

import cv2
import jax
import numpy as np
import pytest

from configs import uts as uts_config
from tests.uts import extract_worker
from vtd import artifacts
from vtd import main as vtd_main
from vtd.uts.data import fivr as fivr_data
from vtd.errors import UserError
from vtd.uts import extract
from vtd.uts import input_pipeline
from vtd.uts import networks
from vtd.uts import retrieval


def tiny_config(tmp_path):
  config = uts_config.get_config("smoke")
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.synthetic.update(num_events=2, num_distractors=8, mean_frames=4.5, min_frames=4,
                               max_frames=5, num_stock_worlds=2)
  config.pretrain.source.update(num_object_classes=3, num_texture_classes=1, train_per_class=4,
                                val_per_class=1)
  config.pretrain.train.update(num_steps=2, batch_size=8, eval_every_steps=2,
                               checkpoint_every_steps=2, async_checkpointing=False)
  config.train.num_steps = 3
  config.train.batch_size = 16
  config.train.async_checkpointing = False
  config.extract.shard_videos = 7
  config.extract.batch_frames = 16
  config.retrieval.top_n = 20
  config.runtime.compilation_cache_dir = ""
  return config


@pytest.mark.slow
def test_pipeline_end_to_end_and_reuse(tmp_path, capsys):
  config = tiny_config(tmp_path)
  workdir = tmp_path / "run"
  results = vtd_main.run(config, str(workdir))
  rows = [f"{m}/{k}" for m in ("teacher", "student") for k in retrieval.METHODS]
  for row in rows:
    test = results[row]["test"]
    assert set(test) == {"DSVR", "CSVR", "ISVR"}
    assert all(0 <= v <= 100 for v in test.values())
    assert results[row]["queries"]["DSVR"] == 2
    assert set(results[row]["val"]) == {"DSVR", "CSVR", "ISVR"}
    assert results[row]["val_queries"]["DSVR"] == config.data.synthetic.num_val_events
  # FRP keeps one nbits/8-byte code per frame; GV one float32 vector per video.
  assert results["student/GV"]["storage_bytes_per_video"] == 4 * config.teacher.pca_dim
  num_videos = len(input_pipeline.load_collection(config))
  frames_per_video = results["stages"]["features/student"]["frames"] / num_videos
  assert results["student/FRP"]["storage_bytes_per_video"] == pytest.approx(
      config.lsh.nbits / 8 * frames_per_video)
  assert "| FRP | student |" in capsys.readouterr().out
  with open(workdir / "results.json") as f:
    assert json.load(f)["student/FRP"] == results["student/FRP"]
  # The result files are FIVR's format: one dict per query, similarities > 0 only.
  with open(workdir / "retrieval" / "teacher_FRP_results.json") as f:
    sims = json.load(f)
  assert len(sims) == 2 and all(s > 0 for d in sims.values() for s in d.values())
  # One teacher pass: its retrieval features (whitened in NumPy from the teacher stage's raw
  # shards) equal the jitted teacher applied to the frames, and the student's targets too.
  collection = input_pipeline.load_collection(config)
  teacher_vars, _, _ = artifacts.load_artifact(str(workdir / "teacher" / "model"))
  feats = extract.load(str(workdir / "features" / "teacher" / "shards"),
                       extract.num_shards(len(collection), config.extract.shard_videos))
  frames = np.concatenate([collection.read_frames(i) for i in range(3)])
  direct = networks.teacher_embed_fn(config, teacher_vars)(frames)
  for key in ("gap", "rmac"):
    np.testing.assert_allclose(feats.features[key][:len(frames)], np.asarray(direct[key]),
                               rtol=1e-3, atol=1e-3)
  with np.load(workdir / "teacher" / "train_set.npz") as z:
    np.testing.assert_array_equal(z["frames"][:len(frames)], frames)
    np.testing.assert_allclose(z["targets"], feats.features["gap"], rtol=1e-5, atol=1e-5)
  assert results["stages"]["pretrain"]["step"] >= 1  # The teacher was pretrained.
  stamp = os.path.getmtime(workdir / "student" / "stage.json")
  again = vtd_main.run(config, str(workdir))
  assert again["student/FRP"]["test"] == results["student/FRP"]["test"]
  assert os.path.getmtime(workdir / "student" / "stage.json") == stamp


def _collection(num_videos=5, bad=()):
  return extract_worker.collection(num_videos, bad)


_embed = extract_worker.embed


def test_extract_shards_resume_and_skip(tmp_path):
  collection, videos = _collection(bad=(3,))
  out = extract.extract(collection, _embed, str(tmp_path), shard_videos=2, batch_frames=8)
  kept = [v for i, v in enumerate(videos) if i != 3]
  want = np.concatenate([v.astype(np.float32).mean(axis=(1, 2)) for v in kept])
  np.testing.assert_allclose(out.features["mean"], want, rtol=1e-6)
  np.testing.assert_array_equal(out.frame_video, np.concatenate(
      [np.full(len(v), i) for i, v in enumerate(videos) if i != 3]))
  assert out.skipped == ["v3"]
  # A finished shard is never recomputed; a missing one is.
  stamps = {k: os.path.getmtime(tmp_path / f"shard_{k:05d}.npz") for k in (0, 2)}
  os.remove(tmp_path / "shard_00001.npz")
  again = extract.extract(collection, _embed, str(tmp_path), shard_videos=2, batch_frames=8)
  assert {k: os.path.getmtime(tmp_path / f"shard_{k:05d}.npz") for k in (0, 2)} == stamps
  np.testing.assert_array_equal(again.features["max"], out.features["max"])
  with pytest.raises(UserError, match="divisible"):
    extract.extract(collection, _embed, str(tmp_path), shard_videos=2, batch_frames=3)


def test_extract_uses_all_local_devices():
  assert jax.local_device_count() == 8  # tests/conftest.py
  collection, videos = _collection(num_videos=6)
  frames = np.concatenate(videos)
  got = extract.embed_frames(_embed, frames, 16, extract.sharding.make_mesh(jax.local_devices()))
  np.testing.assert_allclose(got["mean"], np.asarray(_embed(frames)["mean"]), rtol=1e-6)


def _write_mp4(path, frames):
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (16, 16))
  assert writer.isOpened()
  for f in frames:
    writer.write(f)
  writer.release()


def test_directory_source_reads_videos_and_skips_corrupt(tmp_path):
  rng = np.random.default_rng(1)
  root = tmp_path / "fivr"
  (root / "videos").mkdir(parents=True)
  for vid in ("aaa", "bbb"):
    _write_mp4(root / "videos" / f"{vid}.mp4", rng.integers(0, 255, (6, 16, 16, 3), np.uint8))
  (root / "videos" / "ccc.mp4").write_bytes(b"not a video")
  folder = root / "videos" / "ddd"
  folder.mkdir()
  for i in range(3):
    cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 255, (16, 16, 3), np.uint8))
  fivr_data.save_annotation({"aaa": {"ND": ["bbb"], "IS": ["ccc"]}}, str(root / "annotation.json"))
  config = uts_config.get_config("smoke")
  config.data.source = "directory"
  config.data.root = str(root)
  config.data.frame_stride = 2
  coll = input_pipeline.load_collection(config)
  assert coll.video_ids == ["aaa", "bbb", "ccc", "ddd"] and coll.query_ids == ["aaa"]
  assert coll.read_frames(0).shape == (3, 32, 32, 3)  # 6 frames, stride 2, resized to 32
  assert coll.read_frames(3).shape == (2, 32, 32, 3)
  out = extract.extract(coll, _embed, str(tmp_path / "feat"), shard_videos=2, batch_frames=8)
  assert out.skipped == ["ccc"] and set(out.frame_video.tolist()) == {0, 1, 3}
  config.data.root = str(tmp_path / "empty")
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="annotation"):
    input_pipeline.load_collection(config)


def test_bad_weight_files_fail_before_any_stage(tmp_path):
  """A wrong student.weights is reported before the (expensive) teacher stage runs."""
  from tests.uts import test_weights
  config = tiny_config(tmp_path)
  workdir = tmp_path / "run"
  config.student.weights = str(tmp_path / "vgg16.pth")
  test_weights.write_torch_save_zip(config.student.weights, {"features.0.weight": np.zeros(
      (8, 3, 3, 3), np.float32)}, archive="vgg16")
  with pytest.raises(UserError, match=r"vgg16\.pth: a torch\.save file \(zip format\)"):
    vtd_main.run(config, str(workdir))
  config.student.weights = ""
  config.teacher.weights = str(tmp_path / "r.npz")  # Right format, wrong width.
  np.savez(config.teacher.weights, **{k: np.zeros(v, np.float32) for k, v in
                                      test_weights.resnet50_shapes(16, classes=10).items()})
  with pytest.raises(UserError, match=r"r\.npz: key '.*' has shape \(16.*the model expects"):
    vtd_main.run(config, str(workdir))
  assert not any(p.name in ("teacher", "pretrain", "student") for p in workdir.glob("*"))
  assert not (tmp_path / "cache").exists()  # Not even the data were generated.
