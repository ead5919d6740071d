import dataclasses
import time

import numpy as np
import pytest

from vtd.segmentation.data import synthetic_video as sv
from vtd.errors import UserError
from vtd.evaluators import segmentation as seg

SPEC = sv.SyntheticVideoSpec(num_train_videos=8, num_val_videos=2, num_test_videos=3, min_frames=8,
                             max_frames=14, height=40, width=56, test_frames_per_video=4)


@pytest.fixture(scope="module")
def ds():
  return sv.generate(SPEC)


def _assert_same(a: sv.SyntheticVideoDataset, b: sv.SyntheticVideoDataset):
  for va, vb in zip(a.train + a.test_videos + a.val_videos, b.train + b.test_videos + b.val_videos,
                    strict=True):
    assert va.video_id == vb.video_id and va.difficulty == vb.difficulty
    assert va.object_class == vb.object_class
    for name in ("frames", "labels", "boxes", "camera"):
      np.testing.assert_array_equal(getattr(va, name), getattr(vb, name))
  for split in ("val", "test"):
    ia, ib = a.held_out(split)[1], b.held_out(split)[1]
    for name in ("images", "masks", "boxes", "difficulty", "video_index", "frame_index"):
      np.testing.assert_array_equal(getattr(ia, name), getattr(ib, name))
    assert ia.class_names == ib.class_names and ia.image_ids == ib.image_ids


def test_deterministic_and_seed_dependent(ds):
  _assert_same(ds, sv.generate(SPEC))
  other = sv.generate(dataclasses.replace(SPEC, seed=1))
  assert not np.array_equal(ds.train[0].frames[:4], other.train[0].frames[:4])
  # Videos are seeded individually: more training videos leave the existing ones unchanged.
  more = sv.generate(dataclasses.replace(SPEC, num_train_videos=9))
  np.testing.assert_array_equal(more.train[3].frames, ds.train[3].frames)


def test_shapes_dtypes_and_lengths(ds):
  assert len(ds.train) == 8 and len(ds.test_videos) == 3 and len(ds.val_videos) == 2
  lengths = [v.num_frames for v in ds.train + ds.test_videos + ds.val_videos]
  assert min(lengths) >= 8 and max(lengths) <= 14 and len(set(lengths)) > 1
  for v in ds.train + ds.test_videos:
    t = v.num_frames
    assert v.frames.shape == (t, 40, 56, 3) and v.frames.dtype == np.uint8
    assert v.labels.shape == (t, 40, 56) and v.labels.dtype == np.uint8
    assert v.masks.shape == (t, 40, 56) and v.masks.dtype == bool
    assert v.boxes.shape == (t, 2, 4) and v.boxes.dtype == np.float32
    assert v.camera.shape == (t, 3) and 0 <= v.difficulty <= 1
    assert v.labels.max() <= 2 and 0 <= v.object_class < len(ds.classes)
  assert len({v.video_id for v in ds.train + ds.test_videos + ds.val_videos}) == 13


def test_masks_nonempty_and_partial(ds):
  for v in ds.train + ds.test_videos:
    fraction = v.masks.mean(axis=(1, 2))
    assert (fraction > 0.005).all() and (fraction < 0.8).all(), v.video_id


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


def test_difficulty_and_camouflage():
  """d slows the objects and moves the camera more; camouflage * d blends the object's colour
  towards the background's."""
  def stats(lo, hi, camouflage=0.5):
    d = sv.generate(dataclasses.replace(SPEC, num_train_videos=12, num_test_videos=0,
                                        num_val_videos=0, min_difficulty=lo, max_difficulty=hi,
                                        noise_std=0.0, camouflage=camouflage))
    gaps, speed, camera = [], [], []
    for v in d.train:
      f = v.frames.astype(np.float64)
      gaps.append(np.linalg.norm(f[v.masks].mean(0) - f[~v.masks].mean(0)))
      cy = [np.nonzero(v.labels[t] == 1)[0].mean() for t in (0, v.num_frames - 1)]
      cx = [np.nonzero(v.labels[t] == 1)[1].mean() for t in (0, v.num_frames - 1)]
      speed.append(np.hypot(cy[1] - cy[0], cx[1] - cx[0]))
      camera.append(np.ptp(v.camera[:, :2], axis=0).max())
    return np.mean(gaps), np.mean(speed), np.mean(camera)
  easy, hard = stats(0.0, 0.1), stats(0.9, 1.0)
  assert hard[1] < 0.6 * easy[1] and hard[2] > 2 * easy[2]
  assert stats(0.9, 1.0, camouflage=1.0)[0] < 0.8 * stats(0.9, 1.0, camouflage=0.0)[0]


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
  assert set(test.class_names) <= {c.name for c in ds.classes}
  assert test.difficulty.shape == (12,)
  val = ds.val  # Its own videos: no frame of a val video appears in the test set.
  assert len(val) == 8 and not any((val.images[:, None] == test.images[None]).all((2, 3, 4)).any(1))
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
        f"{len(d.val)} val and {len(d.test)} test images, generated in {elapsed:.2f} s")
  assert len(d.train) == 96 and 96 * 24 <= frames <= 96 * 40
  assert d.train[0].frames.shape[1:] == (64, 80, 3) and len(d.test) == 192 and len(d.val) == 192


def test_object_statistics_follow_youtube_objects():
  """Box area, centring and object count near the YouTube-Objects values the generator cites."""
  d = sv.generate(sv.SyntheticVideoSpec(num_train_videos=150, num_val_videos=0,
                                        num_test_videos=0, min_frames=3, max_frames=3,
                                        test_frames_per_video=1))
  areas, offsets, counts = [], [], []
  for v in d.train:
    b = v.boxes[1][np.isfinite(v.boxes[1]).all(1)]
    counts.append(len(b))
    for x0, y0, x1, y1 in b:
      areas.append((x1 - x0) * (y1 - y0) / (64 * 80))
      offsets.append(np.hypot((x0 + x1) / 160 - 0.5, (y0 + y1) / 128 - 0.5))
  p25, p50, p75 = np.percentile(areas, [25, 50, 75])
  assert 0.05 < p25 < 0.12 and 0.15 < p50 < 0.3 and 0.3 < p75 < 0.55  # YTO .082 / .219 / .404
  assert 0.09 < np.median(offsets) < 0.17  # YTO 0.127
  assert np.mean(np.array(counts) == 1) > 0.9  # YTO 0.969


def test_classes_share_appearance():
  """Videos of one class share a hue; the classes spread over the colour wheel."""
  d = sv.generate(sv.SyntheticVideoSpec(num_train_videos=60, num_val_videos=0,
                                        num_test_videos=0, min_frames=3, max_frames=3,
                                        max_difficulty=0.0, noise_std=0.0, test_frames_per_video=1))
  hues = np.array([c.hue for c in d.classes])
  assert len(d.classes) == 10 and np.ptp(hues) > 0.6
  assert len({c.shape for c in d.classes}) == 3 and len({c.texture for c in d.classes}) == 3
  import colorsys
  for v in d.train:
    rgb = v.frames[1][v.labels[1] == 1].astype(np.float64).mean(0) / 255
    hue = colorsys.rgb_to_hsv(*rgb)[0]
    gap = abs((hue - d.classes[v.object_class].hue + 0.5) % 1.0 - 0.5)
    assert gap < 0.12, (v.video_id, hue, d.classes[v.object_class].hue)
  assert sv.generate(dataclasses.replace(SPEC, seed=1)).classes != sv.generate(SPEC).classes


def test_videopca_teacher_is_noisy_but_informative():
  """The dataset's purpose: VideoPCA's masks are far from perfect, and the gen-1 selection score
  (mean of the non-zero mask values) finds the good ones."""
  from vtd.segmentation.selection import nonzero_mean_scores, top_fraction
  from vtd.segmentation.videopca import VideoPCAConfig
  from vtd.segmentation.videopca_numpy import videopca_numpy

  d = sv.generate(sv.SyntheticVideoSpec(num_train_videos=10, num_val_videos=0,
                                        num_test_videos=0, min_frames=24, max_frames=24))
  soft = np.concatenate([videopca_numpy(v.frames, VideoPCAConfig(size=None),
                                        np.float32)["soft_mask"] for v in d.train])
  gt = np.concatenate([v.masks for v in d.train])
  j = seg.jaccard_per_image(seg.binarize(soft), gt)
  kept = top_fraction(nonzero_mean_scores(soft), 0.1)
  print(f"VideoPCA J on synthetic videos: all {j.mean():.2f}, top 10 % {j[kept].mean():.2f}")
  assert 0.3 < j.mean() < 0.7 and j[kept].mean() > j.mean() + 0.15
