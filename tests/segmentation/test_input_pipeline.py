"""Segmentation on real-format inputs: video files and frame folders for training, Object
Discovery / YouTube-Objects style test sets, written by the tests."""

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest

from vtd import main as vtd_main
from vtd import results as results_lib
from vtd.segmentation.data import synthetic_video
from vtd.errors import UserError
from vtd.evaluators import segmentation as seg_metrics
from vtd.segmentation import input_pipeline
from vtd.segmentation import evaluate as seg_eval
from tests.segmentation.test_pipeline import tiny_config


def _write_avi(path, frames):
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0,
                           (frames.shape[2], frames.shape[1]))
  if not writer.isOpened():
    pytest.skip("this OpenCV build cannot write MJPG avi")
  for rgb in frames:
    writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  writer.release()


@pytest.fixture(scope="module")
def real_inputs(tmp_path_factory):
  """A video folder (3 avi files, 1 frame folder, 1 corrupt mp4) and an Object Discovery root
  (test images and GroundTruth masks), all rendered from the synthetic generator."""
  root = tmp_path_factory.mktemp("real")
  spec = synthetic_video.SyntheticVideoSpec(seed=3, num_train_videos=4, num_test_videos=2,
                                            min_frames=12, max_frames=14, height=32, width=40,
                                            test_frames_per_video=3)
  data = synthetic_video.generate(spec)
  videos = root / "videos"
  os.makedirs(videos / "sub" / "clip_frames")
  for i, v in enumerate(data.train[:3]):
    _write_avi(videos / f"clip{i}.avi", v.frames)
  for t, rgb in enumerate(data.train[3].frames):
    cv2.imwrite(str(videos / "sub" / "clip_frames" / f"{t:04d}.png"),
                cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  (videos / "broken.mp4").write_bytes(b"\x00\x01 definitely not a video" * 10)
  od = root / "ObjectDiscovery-data" / "Data" / "Car100"
  os.makedirs(od / "GroundTruth")
  for k, (image, mask) in enumerate(zip(data.test.images, data.test.masks)):
    cv2.imwrite(str(od / f"{k:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(od / "GroundTruth" / f"{k:04d}.png"), mask.astype(np.uint8) * 255)
  return root, data


def _real_config(tmp_path, root):
  config = tiny_config(tmp_path)
  config.data.videos = str(root / "videos")
  config.data.video_size = (32, 40)
  config.data.test_set = "object_discovery"
  config.data.test_root = str(root / "ObjectDiscovery-data")
  config.data.test_classes = "Car100"
  return config


def test_load_train_videos_skips_and_counts_unreadable(tmp_path, real_inputs):
  root, data = real_inputs
  config = _real_config(tmp_path, root)
  config.data.video_max_frames = 10
  train = input_pipeline.load_train_videos(config)
  assert len(train.videos) == 4 and train.gt_masks is None
  assert all(v.shape == (10, 32, 40, 3) and v.dtype == np.uint8 for v in train.videos)
  # The frame folder is lossless: exactly the generated frames.
  np.testing.assert_array_equal(train.videos[3], data.train[3].frames[:10])
  summary = train.summary()
  assert summary["skipped"] == 1 and summary["skipped_files"][0].endswith("broken.mp4")
  config.data.on_unreadable = "raise"
  with pytest.raises(UserError, match="broken.mp4"):
    input_pipeline.load_train_videos(config)
  config.data.videos = str(tmp_path / "missing")
  with pytest.raises(UserError, match="missing"):
    input_pipeline.load_train_videos(config)
  empty = tmp_path / "empty"
  os.makedirs(empty)
  (empty / "x.mp4").write_bytes(b"junk")
  config.data.videos, config.data.on_unreadable = str(empty), "skip"
  with pytest.raises(UserError, match="none of the 1 videos"):
    input_pipeline.load_train_videos(config)


def test_test_set_choice(tmp_path, real_inputs):
  root, data = real_inputs
  config = _real_config(tmp_path, root)
  test = input_pipeline.load_test_set(config)
  assert test.name == "object_discovery" and test.boxes is None and test.videos is None
  assert len(test) == len(data.test) and set(test.class_names) == {"Car"}
  np.testing.assert_array_equal(test.masks[1], data.test.masks[1])
  config.data.test_set = "auto"
  assert input_pipeline.load_test_set(config) is None  # Real training videos: no test set.
  config.data.test_set = "youtube_objects"
  config.data.test_root = ""
  with pytest.raises(UserError, match="test_root"):
    input_pipeline.load_test_set(config)
  config.data.test_set = "imagenet"
  with pytest.raises(UserError, match="test_set"):
    input_pipeline.load_test_set(config)


def _brute_force_metrics(masks, images, gt_masks, gt_boxes, classes, threshold=0.5):
  """Per image: resize, min-max, threshold; P/J/CorLoc by explicit loops; class means."""
  per = {"P": [], "J": [], "CorLoc": []}
  for m, image, gt, boxes in zip(masks, images, gt_masks, gt_boxes):
    soft = cv2.resize(m.astype(np.float32), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    soft = (soft - soft.min()) / (soft.max() - soft.min())
    pred = soft > threshold
    per["P"].append((pred == gt).mean())
    union = (pred | gt).sum()
    per["J"].append((pred & gt).sum() / union if union else 1.0)
    ys, xs = np.nonzero(pred)  # One blob per mask in this test: largest CC = all foreground.
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    ious = [seg_metrics.box_iou(box[None], b[None])[0, 0] for b in boxes]
    per["CorLoc"].append(max(ious) >= 0.5)
  classes = np.asarray(classes)
  return {k: 100 * np.mean([np.mean(np.asarray(v)[classes == c]) for c in dict.fromkeys(classes)])
          for k, v in per.items()}


def test_metrics_per_image_sizes_and_class_means():
  rng = np.random.default_rng(0)
  sizes = [(20, 30), (24, 24), (16, 40), (30, 20)]
  images, gts, boxes, masks = [], [], [], []
  for h, w in sizes:
    images.append(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    gt = np.zeros((h, w), bool)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    gt[y:y + h // 2, x:x + w // 2] = True
    gts.append(gt)
    ys, xs = np.nonzero(gt)
    boxes.append(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float))
    soft = np.zeros((16, 16), np.float32)
    cy, cx = rng.integers(3, 9, size=2)
    soft[cy:cy + 6, cx:cx + 6] = 1.0
    masks.append(soft)
  classes = ["a", "a", "a", "b"]  # Class means differ from image means.
  test = input_pipeline.TestSet(name="t", images=images, masks=gts, boxes=boxes,
                                class_names=classes, average="classes")
  evaluator = seg_metrics.Evaluator(split="test")
  model = seg_eval.Recorded({"test": np.stack(masks)})
  got = evaluator.run(model, {"test": test}).metrics
  want = _brute_force_metrics(masks, images, gts, boxes, classes)
  for k in ("P", "J", "CorLoc"):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
  # GrabCut refines each mask at its image's size.
  refined = [seg_metrics.grabcut_refine(
      image, cv2.resize(m, image.shape[1::-1], interpolation=cv2.INTER_LINEAR))
      for m, image in zip(masks, images)]
  want_j = seg_metrics.object_discovery_scores(refined, gts, classes)["mean/J"]
  grabcut = seg_metrics.Evaluator(split="test", grabcut=True)
  np.testing.assert_allclose(grabcut.run(model, {"test": test}).metrics["J"], want_j)
  test.masks = None  # A boxes-only set (YouTube-Objects) reports CorLoc only.
  assert set(evaluator.run(model, {"test": test}).metrics) == {"CorLoc"}
  # A model that cannot segment the set (VideoPCA on single images) gives no metrics; a split
  # the data do not have is an error.
  assert seg_metrics.Evaluator(split="val").run(
      model, {"val": dataclasses.replace(test, split="val")}).metrics == {}
  with pytest.raises(UserError, match="the data have no held-out 'val' split with ground "
                                      "truth \\(have: test\\)"):
    seg_metrics.Evaluator(split="val").run(model, {"test": test})


@pytest.mark.slow
def test_pipeline_on_video_files_with_object_discovery_test(tmp_path, real_inputs):
  root, _ = real_inputs
  config = _real_config(tmp_path, root)
  config.generations = 1
  config.students.names = "lowres_net"
  workdir = tmp_path / "run"
  results = vtd_main.run(config, str(workdir))
  teacher = results["teacher"]
  assert teacher["evals"]["test"] == {}  # Object Discovery has single images: no teacher row.
  assert teacher["train_data"]["videos"] == 4 and teacher["train_data"]["skipped"] == 1
  assert results["gen1/selection"]["selection"]["all"] == {}  # No ground truth to report.
  for name in ("gen1/lowres_net", "gen1/multinet"):
    assert set(results[name]["evals"]["test"]) == {"P", "J"}
  with open(workdir / "results.json") as f:
    on_disk = json.load(f)
  assert on_disk["stages"]["teacher"]["train_data"]["skipped_files"][0].endswith("broken.mp4")
  assert sorted(on_disk["evaluators"]) == ["test"]  # A real test set has no val split.
  assert results["overlays"]["overlays"] == ["overlays/test_gen1.png"]
  assert "| gen1/lowres_net |" in results_lib.format_table(on_disk, "test")


def test_summary_records_videos_that_decode_short(tmp_path, real_inputs):
  """A truncated avi is used with the frames it has, and listed with both frame counts in the
  summary the teacher stage writes to results.json (train_data)."""
  root, data = real_inputs
  videos = tmp_path / "videos"
  os.makedirs(videos)
  frames = np.concatenate([data.train[0].frames] * 4)  # 48 frames.
  _write_avi(videos / "full.avi", frames)
  raw = (videos / "full.avi").read_bytes()
  (videos / "half.avi").write_bytes(raw[:len(raw) // 2])
  config = _real_config(tmp_path, root)
  config.data.videos = str(videos)
  train = input_pipeline.load_train_videos(config)
  decoded = len(train.videos[train.names.index(str(videos / "half.avi"))])
  assert 0 < decoded < len(frames)
  summary = json.loads(json.dumps(train.summary()))
  assert summary["videos"] == 2 and summary["skipped"] == 0 and summary["incomplete"] == 1
  assert summary["incomplete_files"] == [{"path": str(videos / "half.avi"),
                                          "decoded_frames": decoded,
                                          "reported_frames": len(frames)}]
