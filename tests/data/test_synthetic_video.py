import dataclasses
import time

import numpy as np
import pytest

from vtd.data import synthetic_video as sv
from vtd.errors import UserError
from vtd.evaluators import segmentation as seg

SPEC = sv.SyntheticVideoSpec(num_train_videos=8, num_test_videos=3, min_frames=8, max_frames=14,
                             height=40, width=56, test_frames_per_video=4)


@pytest.fixture(scope="module")
def ds():
  return sv.generate(SPEC)


def _assert_same(a: sv.SyntheticVideoDataset, b: sv.SyntheticVideoDataset):
  for va, vb in zip(a.train + a.test_videos, b.train + b.test_videos, strict=True):
    assert va.video_id == vb.video_id and va.difficulty == vb.difficulty
    for name in ("frames", "labels", "boxes", "camera"):
      np.testing.assert_array_equal(getattr(va, name), getattr(vb, name))
  for name in ("images", "masks", "boxes", "video_index", "frame_index"):
    np.testing.assert_array_equal(getattr(a.test, name), getattr(b.test, name))
  assert a.test.class_names == b.test.class_names and a.test.image_ids == b.test.image_ids


def test_deterministic_and_seed_dependent(ds):
  _assert_same(ds, sv.generate(SPEC))
  other = sv.generate(dataclasses.replace(SPEC, seed=1))
  assert not np.array_equal(ds.train[0].frames[:4], other.train[0].frames[:4])
  # Videos are seeded individually: more training videos leave the existing ones unchanged.
  more = sv.generate(dataclasses.replace(SPEC, num_train_videos=9))
  np.testing.assert_array_equal(more.train[3].frames, ds.train[3].frames)


def test_shapes_dtypes_and_lengths(ds):
  assert len(ds.train) == 8 and len(ds.test_videos) == 3
  lengths = [v.num_frames for v in ds.train + ds.test_videos]
  assert min(lengths) >= 8 and max(lengths) <= 14 and len(set(lengths)) > 1
  for v in ds.train + ds.test_videos:
    t = v.num_frames
    assert v.frames.shape == (t, 40, 56, 3) and v.frames.dtype == np.uint8
    assert v.labels.shape == (t, 40, 56) and v.labels.dtype == np.uint8
    assert v.masks.shape == (t, 40, 56) and v.masks.dtype == bool
    assert v.boxes.shape == (t, 2, 4) and v.boxes.dtype == np.float32
    assert v.camera.shape == (t, 3) and 0 <= v.difficulty <= 1
    assert v.labels.max() <= 2
  assert len({v.video_id for v in ds.train + ds.test_videos}) == 11


def test_masks_nonempty_and_partial(ds):
  for v in ds.train + ds.test_videos:
    fraction = v.masks.mean(axis=(1, 2))
    assert (fraction > 0.005).all() and (fraction < 0.6).all(), v.video_id


def test_boxes_are_tight_boxes_of_visible_object_pixels(ds):
  for v in ds.train + ds.test_videos:
    for t in range(v.num_frames):
      for k in range(2):
        obj = v.labels[t] == k + 1
        if not obj.any():
          assert np.isnan(v.boxes[t, k]).all()
          continue
        ys, xs = np.nonzero(obj)
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_array_equal(v.boxes[t, k], expected)
        np.testing.assert_array_equal(seg.mask_to_box(obj, rule="all_fg"), expected)


def test_foreground_moves_relative_to_background(ds):
  h, w = SPEC.height, SPEC.width
  moved = []
  for v in ds.train:
    obj = v.labels == 1
    t_idx = [0, v.num_frames - 1]
    if not obj[t_idx].any(axis=(1, 2)).all():
      continue
    cy = np.array([np.nonzero(obj[t])[0].mean() for t in t_idx])
    cx = np.array([np.nonzero(obj[t])[1].mean() for t in t_idx])
    # The object's position on the background canvas (undo the camera's view and zoom).
    view, zoom = v.camera[t_idx, :2], v.camera[t_idx, 2]
    on_canvas = view + np.stack([cy - (h - 1) / 2, cx - (w - 1) / 2], -1) / zoom[:, None]
    moved.append((np.hypot(*(on_canvas[1] - on_canvas[0])), np.hypot(cy[1] - cy[0],
                                                                      cx[1] - cx[0])))
  moved = np.array(moved)
  assert len(moved) >= 6
  assert (moved[:, 0] > 1.0).mean() >= 0.8  # Relative to the background.
  assert (moved[:, 1] > 1.0).mean() >= 0.8  # In the frame (mask centroids change).
  cams = np.array([np.ptp(v.camera[:, :2], axis=0).max() for v in ds.train])
  assert (cams > 0.5).all()  # The camera moves too.


def test_difficulty_camouflages_objects():
  def contrast(lo, hi):
    d = sv.generate(dataclasses.replace(SPEC, num_test_videos=0, min_difficulty=lo,
                                        max_difficulty=hi, noise_std=0.0))
    gaps = []
    for v in d.train:
      f = v.frames.astype(np.float64)
      gaps.append(np.linalg.norm(f[v.masks].mean(0) - f[~v.masks].mean(0)))
    return np.mean(gaps)
  assert contrast(0.0, 0.1) > 1.5 * contrast(0.9, 1.0)


def test_occlusion_happens():
  d = sv.generate(dataclasses.replace(SPEC, num_train_videos=6, num_test_videos=0,
                                      extra_object_prob=1.0, occlusion_prob=1.0))
  overlapping = 0
  for v in d.train:
    b = v.boxes
    both = np.isfinite(b).all(axis=(1, 2))
    ix = np.minimum(b[:, 0, 2], b[:, 1, 2]) - np.maximum(b[:, 0, 0], b[:, 1, 0])
    iy = np.minimum(b[:, 0, 3], b[:, 1, 3]) - np.maximum(b[:, 0, 1], b[:, 1, 1])
    overlapping += bool((both & (ix > 0) & (iy > 0)).any())
  assert overlapping >= 4


def test_test_set_matches_videos_and_evaluators(ds):
  test = ds.test
  assert len(test) == 12 and test.images.shape == (12, 40, 56, 3)
  assert test.masks.shape == (12, 40, 56) and test.masks.dtype == bool
  for i in range(len(test)):
    v = ds.test_videos[test.video_index[i]]
    np.testing.assert_array_equal(test.images[i], v.frames[test.frame_index[i]])
    np.testing.assert_array_equal(test.masks[i], v.masks[test.frame_index[i]])
    assert test.image_ids[i] == f"{v.video_id}/{test.frame_index[i]}"
  for v in range(3):  # Distinct frames per video.
    assert len(set(test.frame_index[test.video_index == v])) == 4
  assert set(test.class_names) <= {"easy", "medium", "hard"}
  gt = test.gt_boxes()
  assert all(len(b) >= 1 and np.isfinite(b).all() for b in gt)
  scores = seg.object_discovery_scores(test.masks, test.masks, test.class_names)
  assert scores["mean/P"] == 100 and scores["mean/J"] == 100
  pred = seg.masks_to_boxes(test.masks, rule="all_fg")
  assert seg.corloc_by_class(pred, gt, test.class_names)["mean"] > 50


def test_cache_round_trip(tmp_path, monkeypatch):
  a = sv.load_or_generate(SPEC, str(tmp_path))
  path = sv.cache_path(SPEC, str(tmp_path))
  assert path.endswith(".npz") and [p.name for p in tmp_path.iterdir()] == [path.split("/")[-1]]
  monkeypatch.setattr(sv, "generate", lambda spec: pytest.fail("should load from the cache"))
  _assert_same(a, sv.load_or_generate(SPEC, str(tmp_path)))
  other = dataclasses.replace(SPEC, seed=3)
  assert sv.cache_path(other, str(tmp_path)) != path
  with pytest.raises(UserError, match="another spec"):
    sv.load_npz(path, other)


def test_invalid_spec():
  with pytest.raises(UserError, match="min_frames"):
    sv.generate(dataclasses.replace(SPEC, min_frames=20, max_frames=10))
  with pytest.raises(UserError, match="difficulty"):
    sv.generate(dataclasses.replace(SPEC, max_difficulty=1.5))


def test_default_spec_size_and_generation_time():
  start = time.perf_counter()
  d = sv.generate()
  elapsed = time.perf_counter() - start
  frames = sum(v.num_frames for v in d.train)
  print(f"default synthetic video spec: {len(d.train)} train videos, {frames} frames, "
        f"{len(d.test)} test images, generated in {elapsed:.2f} s")
  assert len(d.train) == 48 and 48 * 32 <= frames <= 48 * 48
  assert d.train[0].frames.shape[1:] == (64, 80, 3) and len(d.test) == 96


def test_videopca_teacher_finds_easy_objects_not_hard_ones():
  """The dataset's purpose: the teacher works on easy videos and fails more on hard ones."""
  from vtd.segmentation.videopca import VideoPCAConfig
  from vtd.segmentation.videopca_numpy import videopca_numpy

  def teacher_j(lo, hi):
    d = sv.generate(sv.SyntheticVideoSpec(num_train_videos=6, num_test_videos=0, min_frames=24,
                                          max_frames=24, min_difficulty=lo, max_difficulty=hi))
    soft = [videopca_numpy(v.frames, VideoPCAConfig(size=None), np.float32)["soft_mask"]
            for v in d.train]
    return np.mean([seg.jaccard(seg.binarize(s), v.masks) for s, v in zip(soft, d.train)])
  easy, hard = teacher_j(0.0, 0.2), teacher_j(0.8, 1.0)
  print(f"VideoPCA J on synthetic videos: easy {easy:.2f}, hard {hard:.2f}")
  assert easy > 0.4 and hard < easy - 0.15
