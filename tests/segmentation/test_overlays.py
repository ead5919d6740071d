"""Overlay PNGs: readable tiles, a header, the mask's own scale, a ground-truth column."""

import cv2
import numpy as np
import pytest

from vtd.segmentation import overlays


def _inputs(n=3, s=32):
  rng = np.random.default_rng(0)
  images = rng.integers(60, 200, (n, s, s, 3), dtype=np.uint8)
  full = np.zeros((n, s, s), np.float32)
  full[:, 8:24, 8:24] = 1.0
  faint = full * 0.05  # A near-empty mask: must stay dark, not become a full one.
  gt = np.zeros((n, 40, 50), bool)  # Ground truth at another (original) size.
  gt[:, 10:30, 10:40] = True
  return images, {"teacher": full, "gen1/dilate_unet": faint}, gt


def test_layout_and_own_scale():
  images, columns, gt = _inputs()
  grid = overlays.render(images, columns, gt_masks=gt, image_ids=["a", "b", "c"], tile=96)
  header, footer = 34, 20
  assert grid.shape == (header + 3 * 96 + footer, 4 * 96, 3)  # image, GT, 2 models
  assert grid[:header].max() > 200  # Titles are drawn in the header row.
  row0 = grid[header:header + 96]
  tile = lambda j: row0[:, j * 96:(j + 1) * 96].astype(float)
  inside = (slice(30, 66), slice(30, 66))  # Centre of the 8..24 square at 3x.
  green_full = tile(2)[inside][..., 1].mean() - tile(2)[inside][..., 0].mean()
  green_faint = tile(3)[inside][..., 1].mean() - tile(3)[inside][..., 0].mean()
  assert green_full > 100 and green_faint < 30  # Own scale, no per-tile min-max.
  # The ground-truth tile is green where the (resized) ground truth is.
  gt_tile = tile(1)
  assert gt_tile[40:50, 30:60, 1].mean() - gt_tile[40:50, 30:60, 0].mean() > 100
  assert gt_tile[2:8, 2:8, 1].mean() < 120  # Background: the darkened image only.


def test_without_ground_truth_and_small_tiles_rejected():
  images, columns, _ = _inputs()
  assert overlays.render(images, columns, tile=128).shape[1] == 3 * 128
  with pytest.raises(ValueError, match="96"):
    overlays.render(images, columns, tile=64)


def test_pick_rows_prefers_different_videos():
  video_index = np.array([0, 0, 0, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(overlays.pick_rows(video_index, 3), [0, 3, 5])
  assert len(set(video_index[overlays.pick_rows(video_index, 5)][:3])) == 3
  assert len(overlays.pick_rows(video_index, 20)) == 8


def test_write_png(tmp_path):
  images, columns, gt = _inputs()
  path = tmp_path / "sub" / "o.png"
  overlays.write(str(path), images, columns, gt_masks=gt)
  png = cv2.imread(str(path))
  assert png is not None and png.shape[1] == 4 * 128


def test_pick_spread_rows_starts_mid_video_and_alternates_videos():
  video_index = np.array([0] * 8 + [1] * 4)
  rows = overlays.pick_spread_rows(video_index, 4)
  np.testing.assert_array_equal(rows, [4, 10, 2, 9])  # middles, then quarter points
  every = overlays.pick_spread_rows(video_index, 100)
  assert sorted(every.tolist()) == list(range(12))
