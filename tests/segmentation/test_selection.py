"""Selection rules and label construction (vtd/segmentation/selection.py), on known values."""

import numpy as np
import pytest

from vtd.errors import UserError
from vtd.segmentation import selection


def test_nonzero_mean_scores_and_top_fraction():
  masks = np.zeros((3, 2, 2), np.float32)
  masks[0] = [[0.0, 0.5], [1.0, 0.0]]  # mean of non-zero = 0.75
  masks[1] = [[0.2, 0.2], [0.2, 0.2]]
  np.testing.assert_allclose(selection.nonzero_mean_scores(masks), [0.75, 0.2, 0.0])
  assert list(selection.top_fraction(np.array([0.1, 0.9, 0.5, 0.7]), 0.5)) == [1, 3]
  assert list(selection.top_fraction(np.array([0.1, 0.9]), 0.01, minimum=2)) == [1, 0]
  assert list(selection.top_fraction(np.array([0.3, 0.3, 0.1]), 0.67)) == [0, 1]  # Stable.
  with pytest.raises(ValueError, match="keep fraction"):
    selection.top_fraction(np.ones(3), 0.0)


def test_normalise_rules():
  raw = np.zeros((2, 2, 2), np.float32)
  raw[0] = [[0.02, 0.04], [0.03, 0.02]]  # A near-empty output.
  raw[1] = [[0.1, 0.9], [0.5, 1.4]]  # A confident one, above the target range at one pixel.
  minmax = selection.normalise(raw, "minmax")
  np.testing.assert_allclose(minmax[0], [[0, 1], [0.5, 0]], atol=1e-6)  # Inflated to full.
  np.testing.assert_allclose(minmax.max(axis=(1, 2)), [1, 1])
  np.testing.assert_allclose(selection.normalise(raw, "div_scale_clip")[1],
                             [[0.1, 0.9], [0.5, 1.0]])
  scaled = selection.normalise(raw, "student_scale", scale=0.5)
  np.testing.assert_allclose(scaled[0], raw[0] / 0.5)  # Stays near-empty.
  np.testing.assert_allclose(scaled[1], [[0.2, 1.0], [1.0, 1.0]])
  with pytest.raises(ValueError, match="scale"):
    selection.normalise(raw, "student_scale")
  with pytest.raises(UserError, match="normalisation"):
    selection.normalise(raw, "softmax")
  flat = np.full((1, 3, 3), 0.3, np.float32)  # A constant output has no foreground.
  assert not selection.normalise(flat, "minmax").any()


def test_next_targets_rules():
  masks = np.array([[[0.0, 0.2], [0.5, 0.9]]], np.float32)
  np.testing.assert_array_equal(selection.next_targets(masks, "soft", 0.5), masks)
  # Gated: at or below the threshold becomes exactly 0 (like VideoPCA's gated masks).
  np.testing.assert_allclose(selection.next_targets(masks, "gated", 0.5), [[[0, 0], [0, 0.9]]])
  np.testing.assert_allclose(selection.next_targets(masks, "gated", 0.1),
                             [[[0, 0.2], [0.5, 0.9]]])
  np.testing.assert_array_equal(selection.next_targets(masks, "binary", 0.3), [[[0, 0], [1, 1]]])
  assert selection.next_targets(masks, "binary", 0.3).dtype == np.float32
  with pytest.raises(UserError, match="config.evalseg.target_rule must be one of"):
    selection.next_targets(masks, "sharp", 0.5)


def test_student_scale_is_a_quantile_of_per_image_peaks():
  raw = np.zeros((5, 2, 2), np.float32)
  raw[:, 0, 0] = [0.1, 0.2, 0.3, 0.4, 0.5]
  assert selection.student_scale(raw, 0.5) == pytest.approx(0.3)
  assert selection.student_scale(raw, 1.0) == pytest.approx(0.5)
  assert selection.student_scale(np.zeros((2, 2, 2)), 0.9) == pytest.approx(1e-6)


def test_multinet_product_and_cosine():
  a = np.array([[[1.0, 0.5], [0.0, 1.0]]])
  b = np.array([[[0.5, 1.0], [1.0, 1.0]]])
  np.testing.assert_allclose(selection.multinet([a, b]), [[[0.5, 0.5], [0.0, 1.0]]])
  np.testing.assert_allclose(selection.cosine(a, 3 * a), [1.0])  # Scale-invariant.
  np.testing.assert_allclose(selection.cosine(a, np.zeros_like(a)), [0.0])
  np.testing.assert_allclose(selection.cosine(a, b), [2.0 / (1.5 * np.sqrt(3.25))])


def test_split_frames_disjoint_and_deterministic():
  train, score = selection.split_frames(100, 0.1, minimum=16, seed=3)
  assert len(train) == 16 and len(score) == 84  # The minimum wins over 10 %.
  assert not np.intersect1d(train, score).size and np.union1d(train, score).size == 100
  np.testing.assert_array_equal(train, selection.split_frames(100, 0.1, 16, seed=3)[0])
  assert not np.array_equal(train, selection.split_frames(100, 0.1, 16, seed=4)[0])
  assert len(selection.split_frames(10, 0.5, minimum=16, seed=0)[1]) == 1  # Never all.


def test_candidates_index_students_and_frames():
  stack = np.arange(3 * 4 * 1 * 1, dtype=np.float32).reshape(3, 4, 1, 1)  # [S=3, F=4]
  cand = selection.candidates(stack, np.array([1, 3]))
  np.testing.assert_array_equal(cand.masks[:, 0, 0], [1, 3, 5, 7, 9, 11])
  np.testing.assert_array_equal(cand.frame_of, [1, 3, 1, 3, 1, 3])
  np.testing.assert_array_equal(cand.student_of, [0, 0, 1, 1, 2, 2])
  multi = np.ones((4, 1, 1))
  np.testing.assert_allclose(selection.cosine_labels(cand, multi), 1.0)
  chosen = np.array([5, 0, 4])
  assert selection.kept_per_student(cand, chosen, ["a", "b", "c"]) == {"a": 1, "b": 0, "c": 2}


def test_choose_threshold_and_top_fraction():
  scores = np.array([0.5, 0.9, 0.85, 0.1, 0.8])
  np.testing.assert_array_equal(selection.choose(scores, "threshold", 0.8, 0.1, 1), [1, 2, 4])
  np.testing.assert_array_equal(selection.choose(scores, "top_fraction", 0.8, 0.4, 1), [1, 2])
  with pytest.raises(UserError, match=r"kept 0 masks \(< 2, one batch\) with "
                                      r"selection=threshold \(threshold 0.95\); lower"):
    selection.choose(scores, "threshold", 0.95, 0.1, 2)
  with pytest.raises(UserError, match="kept 1 masks .* selection=top_fraction; raise "
                                      "config.evalseg.keep_fraction"):
    selection.choose(scores, "top_fraction", 0.8, 0.2, 3)
  with pytest.raises(UserError, match="selection"):
    selection.choose(scores, "best", 0.8, 0.1, 1)


def test_multinet_geometric_mean_keeps_the_product_order():
  rng = np.random.default_rng(0)
  masks = [rng.random((2, 4, 4)) for _ in range(3)]
  product = selection.multinet(masks)
  geo = selection.multinet(masks, "geometric_mean")
  np.testing.assert_allclose(geo, product ** (1 / 3))
  np.testing.assert_array_equal(np.argsort(geo, axis=None), np.argsort(product, axis=None))
  same = [np.full((1, 2, 2), 0.5)] * 3  # Every student at 0.5 -> 0.5, not 0.125.
  np.testing.assert_allclose(selection.multinet(same, "geometric_mean"), 0.5)
  np.testing.assert_allclose(selection.multinet(same), 0.125)
  with pytest.raises(UserError, match="combine"):
    selection.multinet(masks, "mean")


def test_per_video_scope_keeps_every_video():
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.05, 0.3])
  videos = np.array([0, 0, 0, 0, 1, 1, 1, 2])
  np.testing.assert_array_equal(selection.keep_best(scores, 0.5, "global", videos), [0, 1, 2, 3])
  kept = selection.keep_best(scores, 0.5, "per_video", videos)
  np.testing.assert_array_equal(kept, [0, 1, 7, 5, 4])  # 2 of 4, 2 of 3 (1.5 rounds to 2), 1 of 1.
  assert set(videos[kept]) == {0, 1, 2}
  assert len(selection.keep_best(scores, 0.1, "per_video", videos, minimum=5)) == 5
  np.testing.assert_array_equal(
      selection.choose(scores, "top_fraction", 0.8, 0.5, 1, scope="per_video", groups=videos),
      kept)
  with pytest.raises(UserError, match="scope"):
    selection.keep_best(scores, 0.5, "per_class", videos)


def test_constant_fraction_flags_a_dead_student():
  rng = np.random.default_rng(0)
  live = rng.random((4, 8, 8)).astype(np.float32)
  assert selection.constant_fraction(live) == 0.0
  dead = np.zeros((4, 8, 8), np.float32)  # A dead ReLU head: 0 everywhere.
  assert selection.constant_fraction(dead) == 1.0
  assert selection.constant_fraction(np.concatenate([live, dead[:2] + 0.3])) == 2 / 6
