"""Segmentation metrics against brute-force pure-Python references (loops over pixels/boxes)."""

import numpy as np
import pytest

from vtd.errors import UserError
from vtd.evaluators import segmentation as seg


# ----------------------------------------------------------------------------- references

def ref_p(preds, gts):
  scores = []
  for pred, gt in zip(preds, gts):
    h, w = len(gt), len(gt[0])
    correct = sum(bool(pred[y][x]) == bool(gt[y][x]) for y in range(h) for x in range(w))
    scores.append(correct / (h * w))
  return sum(scores) / len(scores)


def ref_j(preds, gts, empty="one"):
  scores = []
  for pred, gt in zip(preds, gts):
    inter = union = gt_area = 0
    for y in range(len(gt)):
      for x in range(len(gt[0])):
        p, g = bool(pred[y][x]), bool(gt[y][x])
        inter += p and g
        union += p or g
        gt_area += g
    if empty == "skip" and gt_area == 0:
      continue
    scores.append(inter / union if union else 1.0)
  return sum(scores) / len(scores)


def pixels(box):
  x0, y0, x1, y1 = (int(v) for v in box)
  return {(x, y) for x in range(x0, x1) for y in range(y0, y1)}


def ref_iou(a, b):
  pa, pb = pixels(a), pixels(b)
  union = len(pa | pb)
  return len(pa & pb) / union if union else 0.0


def ref_box(mask, rule="largest_cc", connectivity=8):
  h, w = len(mask), len(mask[0])
  fg = [(y, x) for y in range(h) for x in range(w) if mask[y][x]]
  if not fg:
    return None
  if rule == "largest_cc":
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    if connectivity == 4:
      steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    seen, best = set(), []
    for start in fg:  # Raster order, so the first of equally large components wins.
      if start in seen:
        continue
      comp, stack = [], [start]
      seen.add(start)
      while stack:
        y, x = stack.pop()
        comp.append((y, x))
        for dy, dx in steps:
          n = (y + dy, x + dx)
          if 0 <= n[0] < h and 0 <= n[1] < w and mask[n[0]][n[1]] and n not in seen:
            seen.add(n)
            stack.append(n)
      if len(comp) > len(best):
        best = comp
    fg = best
  ys, xs = [p[0] for p in fg], [p[1] for p in fg]
  return [min(xs), min(ys), max(xs) + 1, max(ys) + 1]


def random_masks(rng, n, h, w, p=0.4):
  masks = rng.random((n, h, w)) < p
  masks[0] = False  # Empty.
  return masks


# ----------------------------------------------------------------------------- P and J

def test_p_and_j_match_brute_force_including_empty_masks():
  rng = np.random.default_rng(0)
  preds, gts = random_masks(rng, 8, 5, 7), random_masks(rng, 8, 5, 7)
  gts[1] = False  # Empty GT, non-empty prediction: J = 0.
  preds[2] = gts[2] = False  # Both empty: J = 1 under "one", skipped under "skip".
  preds[0] = False  # preds[0] and gts[0] are both empty too.
  gts[3] = preds[3]  # Perfect.
  assert seg.pixel_accuracy(preds, gts) == pytest.approx(ref_p(preds, gts), abs=1e-12)
  assert seg.jaccard(preds, gts) == pytest.approx(ref_j(preds, gts), abs=1e-12)
  assert seg.jaccard(preds, gts, empty="skip") == pytest.approx(
      ref_j(preds, gts, "skip"), abs=1e-12)
  per = seg.jaccard_per_image(preds, gts)
  assert per[0] == per[2] == per[3] == 1.0 and per[1] == 0.0
  skipped = seg.jaccard_per_image(preds, gts, empty="skip")
  assert np.isnan(skipped[[0, 1, 2]]).all() and np.isfinite(skipped[3:]).all()


def test_p_and_j_variable_sizes_soft_masks_and_single_image():
  rng = np.random.default_rng(1)
  shapes = [(4, 6), (7, 3), (5, 5)]
  soft = [rng.random(s) for s in shapes]
  gts = [rng.random(s) < 0.5 for s in shapes]
  binary = [s > 0.6 for s in soft]
  assert seg.pixel_accuracy(soft, gts, threshold=0.6) == pytest.approx(ref_p(binary, gts))
  assert seg.jaccard(soft, gts, threshold=0.6) == pytest.approx(ref_j(binary, gts))
  # Integer 0/1 ground truth and a single [H, W] image.
  assert seg.jaccard(binary[0], gts[0].astype(np.uint8)) == pytest.approx(
      ref_j(binary[:1], gts[:1]))
  with pytest.raises(ValueError, match="threshold"):
    seg.pixel_accuracy(soft, gts)
  with pytest.raises(UserError, match="shape"):
    seg.jaccard(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5), bool))
  with pytest.raises(UserError, match="2 predicted masks for 3"):
    seg.jaccard(binary[:2], gts)


def test_binarize_minmax_and_object_discovery_scores():
  soft = np.array([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
  # Min-max gives [[0, .25], [.5, 1]]; the threshold is strict, so 0.5 is background.
  np.testing.assert_array_equal(seg.binarize(soft), [[[0, 0], [0, 1]], [[0, 0], [0, 0]]])
  np.testing.assert_array_equal(seg.binarize(soft, 5.0, normalize=False)[0], [[0, 0], [1, 1]])
  rng = np.random.default_rng(2)
  preds, gts = random_masks(rng, 6, 4, 4), random_masks(rng, 6, 4, 4)
  names = ["Car", "Horse", "Car", "Horse", "Horse", "Car"]
  out = seg.object_discovery_scores(preds, gts, names)
  car, horse = [0, 2, 5], [1, 3, 4]
  assert list(out) == ["Car/P", "Car/J", "Horse/P", "Horse/J", "mean/P", "mean/J"]
  assert out["Car/P"] == pytest.approx(100 * ref_p(preds[car], gts[car]))
  assert out["Horse/J"] == pytest.approx(100 * ref_j(preds[horse], gts[horse]))
  assert out["mean/J"] == pytest.approx((out["Car/J"] + out["Horse/J"]) / 2)


# ----------------------------------------------------------------------------- boxes

def test_box_iou_matches_pixel_sets():
  rng = np.random.default_rng(3)
  corners = rng.integers(0, 9, (30, 4))
  boxes = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]),
                          np.maximum(corners[:, :2], corners[:, 2:])], 1)  # Some degenerate.
  iou = seg.box_iou(boxes[:12], boxes[12:])
  for i in range(12):
    for j in range(18):
      assert iou[i, j] == pytest.approx(ref_iou(boxes[i], boxes[12 + j]), abs=1e-12)
  nan_row = seg.box_iou(np.array([[np.nan] * 4]), boxes[:3])
  np.testing.assert_array_equal(nan_row, np.zeros((1, 3)))


@pytest.mark.parametrize("rule,connectivity", [("largest_cc", 8), ("largest_cc", 4),
                                               ("all_fg", 8)])
def test_mask_to_box_matches_flood_fill(rule, connectivity):
  rng = np.random.default_rng(4)
  for mask in random_masks(rng, 15, 9, 11, p=0.25):
    box = seg.mask_to_box(mask, rule, connectivity)
    expected = ref_box(mask.tolist(), rule, connectivity)
    assert (box is None and expected is None) or box.tolist() == expected


def test_mask_to_box_edge_cases():
  # Diagonal neighbours join under 8-connectivity only; equal sizes: first in raster order.
  mask = np.zeros((6, 8), bool)
  mask[0, 0] = mask[1, 1] = True
  mask[4, 5] = mask[4, 6] = True
  assert seg.mask_to_box(mask).tolist() == [0, 0, 2, 2]
  assert seg.mask_to_box(mask, connectivity=4).tolist() == [5, 4, 7, 5]
  assert seg.mask_to_box(mask, "all_fg").tolist() == [0, 0, 7, 5]
  assert seg.mask_to_box(np.zeros((3, 3), bool)) is None
  assert seg.mask_to_box(np.full((3, 4), 0.9), threshold=0.5).tolist() == [0, 0, 4, 3]
  boxes = seg.masks_to_boxes(np.stack([mask, np.zeros_like(mask)]), rule="all_fg")
  assert boxes[0].tolist() == [0, 0, 7, 5] and np.isnan(boxes[1]).all()
  np.testing.assert_allclose(seg.scale_boxes(boxes, (6, 8), (12, 4))[0], [0, 0, 3.5, 10])


# ----------------------------------------------------------------------------- CorLoc

def ref_corloc(preds, gts):
  hits = []
  for pred, frame_gts in zip(preds, gts):
    hits.append(not np.isnan(pred).any() and any(ref_iou(pred, g) >= 0.5 for g in frame_gts))
  return sum(hits) / len(hits)


def test_corloc_matches_brute_force():
  rng = np.random.default_rng(5)
  n = 40
  corners = rng.integers(0, 8, (n, 4))
  preds = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]),
                          np.maximum(corners[:, :2], corners[:, 2:]) + 1], 1).astype(float)
  preds[3] = np.nan
  gts = []
  for _ in range(n):
    c = rng.integers(0, 8, (int(rng.integers(1, 4)), 4))
    gts.append(np.concatenate([np.minimum(c[:, :2], c[:, 2:]),
                               np.maximum(c[:, :2], c[:, 2:]) + 1], 1))
  expected = ref_corloc(preds, gts)
  assert 0 < expected < 1
  assert seg.corloc(preds, gts) == pytest.approx(expected)


def test_corloc_edge_cases():
  pred = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2], [np.nan] * 4, [0, 0, 1.5, 1]])
  gts = [
      np.array([[0, 0, 2, 1]]),  # IoU exactly 0.5: correct.
      np.array([[0, 0, 3, 3]]),  # 4/9 < 0.5: wrong.
      np.array([[5, 5, 6, 6], [0, 0, 2, 2]]),  # Second of two gt boxes matches.
      np.array([[0, 0, 2, 2]]),  # No predicted box: wrong.
      np.array([[0, 0, 3, 1]]),  # Fractional, exactly 0.5.
  ]
  np.testing.assert_array_equal(seg.corloc_hits(pred, gts), [True, False, True, False, True])
  assert seg.corloc(pred, gts) == pytest.approx(0.6)
  assert seg.corloc(pred[1:2], gts[1:2], iou_threshold=0.4) == 1.0
  out = seg.corloc_by_class(pred, gts, ["cat", "cat", "dog", "dog", "dog"])
  assert out == {"cat": 50.0, "dog": pytest.approx(200 / 3), "mean": pytest.approx(175 / 3)}
  with pytest.raises(UserError, match="without ground-truth"):
    seg.corloc(pred[:2], [gts[0], np.zeros((0, 4))])
  with pytest.raises(UserError, match="2 predicted boxes for 1"):
    seg.corloc(pred[:2], gts[:1])


# ----------------------------------------------------------------------------- GrabCut

def _square_scene():
  rng = np.random.default_rng(0)
  h = w = 64
  image = np.clip(np.array([40, 90, 200]) + rng.normal(0, 12, (h, w, 3)), 0, 255)
  square = np.zeros((h, w), bool)
  square[18:46, 20:44] = True
  image[square] = np.clip(np.array([220, 60, 40]) + rng.normal(0, 12, (square.sum(), 3)), 0, 255)
  yy, xx = np.mgrid[:h, :w]
  # A blurry blob, off-centre and larger than the square, with noise: roughly covers it.
  soft = np.exp(-(((yy - 34) / 18.0) ** 2 + ((xx - 35) / 16.0) ** 2))
  soft += rng.uniform(0, 0.15, soft.shape)
  return image.astype(np.uint8), soft, square


def _iou(a, b):
  return (a & b).sum() / (a | b).sum()


def test_grabcut_beats_thresholded_soft_mask():
  image, soft, square = _square_scene()
  raw = seg.binarize(soft)
  refined = seg.grabcut_refine(image, soft)
  assert refined.dtype == np.bool_ and refined.shape == square.shape
  # Measured: raw 0.64, refined 1.00.
  assert _iou(raw, square) < 0.75
  assert _iou(refined, square) > 0.9
  assert _iou(refined, square) > _iou(raw, square) + 0.15
  np.testing.assert_array_equal(refined, seg.grabcut_refine(image, soft))  # Seeded RNG.


def test_grabcut_degenerate_inputs():
  image, soft, _ = _square_scene()
  assert not seg.grabcut_refine(image, np.zeros_like(soft)).any()  # Constant: no foreground.
  tiny = np.zeros_like(soft)
  tiny[0, :2] = 1.0
  np.testing.assert_array_equal(seg.grabcut_refine(image, tiny), tiny > 0.5)
  with pytest.raises(UserError, match="resize the mask"):
    seg.grabcut_refine(image, soft[:10])
  with pytest.raises(UserError, match="uint8"):
    seg.grabcut_refine(image.astype(np.float32), soft)
