"""PNG overlays for a quick look: each row a test image | teacher | students | Multi-Net."""

from __future__ import annotations

import os

import cv2
import numpy as np


def write(path: str, images: np.ndarray, masks: dict[str, np.ndarray], count: int = 6) -> None:
  """Writes a grid: rows = the first `count` images; columns = the image, then each mask.

  Args:
    path: output .png.
    images: [N, S, S, 3] uint8 RGB.
    masks: column title -> [N, s, s] soft masks in [0, 1] (min-max normalised for display).
    count: number of rows.
  """
  n = min(count, images.shape[0])
  s = images.shape[1]
  rows = []
  for i in range(n):
    tiles = [images[i]]
    for m in masks.values():
      soft = cv2.resize(m[i].astype(np.float32), (s, s), interpolation=cv2.INTER_LINEAR)
      soft = (soft - soft.min()) / max(float(soft.max() - soft.min()), 1e-8)
      tint = images[i].astype(np.float32) * 0.35
      tint[..., 1] += 165.0 * soft  # Green where the mask is on.
      tiles.append(np.clip(tint, 0, 255).astype(np.uint8))
    rows.append(np.concatenate(tiles, axis=1))
  grid = np.concatenate(rows, axis=0)
  header = np.zeros((14, grid.shape[1], 3), np.uint8)
  for j, title in enumerate(["image", *masks]):
    cv2.putText(header, title.split("/")[-1][:10], (j * s + 2, 11), cv2.FONT_HERSHEY_PLAIN, 0.7,
                (255, 255, 255), 1)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  cv2.imwrite(path, cv2.cvtColor(np.concatenate([header, grid]), cv2.COLOR_RGB2BGR))
