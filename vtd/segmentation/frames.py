"""The frame table of a segmentation run: every training frame, its teacher mask, its source.

All stages after VideoPCA work on single frames (students see images, not videos), at one
working size S x S. The table stores frames at the *augmentation* size A >= S (random S x S
crops of it are the reference's resize-then-crop augmentation) and the teacher's soft masks
at the same size, so crops of image and target stay aligned.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from vtd import artifacts


@dataclasses.dataclass
class FrameTable:
  """Training frames of all videos.

  Attributes:
    images: [F, A, A, 3] uint8 frames at the augmentation size A.
    teacher: [F, A, A] float32 VideoPCA soft masks in [0, 1] (resized like the frames).
    scores: [F] generation-1 selection score (mean of the non-zero teacher values).
    video_index, frame_index: [F] where each frame comes from.
    gt_masks: [F, A, A] bool ground truth when the data have it (synthetic), else None; used
      only to *report* selection quality, never for training.
  """
  images: np.ndarray
  teacher: np.ndarray
  scores: np.ndarray
  video_index: np.ndarray
  frame_index: np.ndarray
  gt_masks: np.ndarray | None = None

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def save(self, path) -> None:
    arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if getattr(self, f.name) is not None}
    artifacts.save_npz_atomic(path, **arrays)

  @classmethod
  def load(cls, path) -> "FrameTable":
    return cls(**artifacts.load_npz(path))


def resize_images(images: np.ndarray | list[np.ndarray], size: int) -> np.ndarray:
  """[N, H, W, 3] uint8 (or N images of any sizes) -> [N, size, size, 3] (area interpolation,
  as for video frames)."""
  if isinstance(images, np.ndarray) and images.shape[1:3] == (size, size):
    return images
  return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


def resize_masks(masks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """[N, h, w] float masks -> [N, H, W] with bilinear interpolation (the reference's targets)."""
  h, w = hw
  if masks.shape[1:3] == (h, w):
    return masks.astype(np.float32)
  return np.stack([cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
                   for m in masks])
