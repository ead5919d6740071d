"""PNG overlays people can read: rows = images from different videos, columns = masks.

Layout: a header row names the columns (two lines: generation, model); then one row per image,
the first column the image itself (with its id), then the ground truth where there is one,
then each model. A mask tile shows the image darkened, the soft mask in green *on its own scale*
(value 1 = full green; no per-tile min-max, so a near-empty mask stays dark) and, in yellow, the
outline of the binary mask the metrics score (per-image min-max, > threshold); the ground-truth
tile shows the true mask the same way. A footer says so.
"""

from __future__ import annotations

import cv2
import numpy as np

from vtd import artifacts

DISPLAY_NAMES = {"lowres_net": "LowRes-Net", "fconv": "FConv", "basic_unet": "BasicU-Net",
                 "dilate_unet": "DilateU-Net", "dense_unet": "DenseU-Net",
                 "multinet": "Multi-Net", "teacher": "VideoPCA"}
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE, _YELLOW, _GREY = (255, 255, 255), (255, 230, 0), (170, 170, 170)


def pick_rows(video_index: np.ndarray, count: int) -> np.ndarray:
  """Up to `count` image indices, one per video first (in video order), then repeats."""
  video_index = np.asarray(video_index)
  first = np.unique(video_index, return_index=True)[1]
  rest = np.setdiff1d(np.arange(video_index.size), first)
  return np.concatenate([np.sort(first), rest])[:count]


def pick_spread_rows(video_index: np.ndarray, count: int) -> np.ndarray:
  """Up to `count` frame indices of training videos, round-robin over the videos: each video's
  middle frame first, then its quarter points, then the rest (first and last frames, often
  fades or titles in real footage, come last)."""
  video_index = np.asarray(video_index)
  fractions = (0.5, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875)
  queues = []
  for v in np.unique(video_index):
    members = np.flatnonzero(video_index == v)
    picks = list(dict.fromkeys(members[min(int(f * members.size), members.size - 1)]
                               for f in fractions))
    queues.append(picks + [m for m in members if m not in picks])
  order = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
  return np.asarray(order[:count], dtype=np.int64)


def _title(name: str) -> tuple[str, str]:
  """"gen2/dilate_unet" -> ("gen 2", "DilateU-Net"); "teacher" -> ("teacher", "VideoPCA")."""
  if "/" in name:
    gen, model = name.split("/", 1)
    return gen.replace("gen", "gen "), DISPLAY_NAMES.get(model, model)
  return {"teacher": "teacher"}.get(name, ""), DISPLAY_NAMES.get(name, name)


def _text(img: np.ndarray, text: str, xy: tuple[int, int], scale: float, colour,
          max_width: int) -> None:
  """Draws `text` shrunk to fit `max_width` px (never overlapping the next column)."""
  while scale > 0.25 and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > max_width:
    scale -= 0.05
  cv2.putText(img, text, xy, _FONT, scale, colour, 1, cv2.LINE_AA)


def _mask_tile(image: np.ndarray, soft: np.ndarray, binary: np.ndarray | None) -> np.ndarray:
  """Darkened image + green soft mask (own scale, clipped to [0, 1]) + yellow binary outline."""
  tile = image.astype(np.float32) * 0.4
  tile[..., 1] += 190.0 * np.clip(soft, 0.0, 1.0)
  tile = np.clip(tile, 0, 255).astype(np.uint8)
  if binary is not None and binary.any():
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tile, contours, -1, _YELLOW, 1)
  return tile


def render(images: np.ndarray, columns: dict[str, np.ndarray], *,
           gt_masks: np.ndarray | list[np.ndarray] | None = None, image_ids: list[str] | None = None,
           threshold: float = 0.5, tile: int = 128) -> np.ndarray:
  """The overlay grid as an RGB uint8 array.

  Args:
    images: [N, H, W, 3] uint8 RGB, one row each.
    columns: title -> [N, h, w] soft masks in [0, 1] on their own scale.
    gt_masks: N bool ground-truth masks [H_i, W_i] of any size (a column), or None.
    image_ids: N labels written on the image tiles.
    threshold: binarisation of the scored mask (after per-image min-max).
    tile: tile side in px (>= 96).
  """
  if tile < 96:
    raise ValueError(f"tile must be >= 96 px, got {tile}")
  n = images.shape[0]
  titles = [("", "image")] + ([("", "ground truth")] if gt_masks is not None else [])
  titles += [_title(name) for name in columns]
  resize = lambda a, interp: cv2.resize(a, (tile, tile), interpolation=interp)
  rows = []
  for i in range(n):
    image = resize(images[i], cv2.INTER_LINEAR)
    first = image.copy()
    if image_ids is not None:
      _text(first, image_ids[i], (3, tile - 5), 0.35, _WHITE, tile - 6)
    tiles = [first]
    if gt_masks is not None:
      gt = resize(gt_masks[i].astype(np.uint8), cv2.INTER_NEAREST) > 0
      tiles.append(_mask_tile(image, gt.astype(np.float32), gt))
    for masks in columns.values():
      soft = resize(masks[i].astype(np.float32), cv2.INTER_LINEAR)
      span = float(soft.max() - soft.min())
      binary = (soft - soft.min()) / span > threshold if span > 1e-8 else None
      tiles.append(_mask_tile(image, soft, binary))
    rows.append(np.concatenate(tiles, axis=1))
  grid = np.concatenate(rows, axis=0)
  header = np.zeros((34, grid.shape[1], 3), np.uint8)
  for j, (top, bottom) in enumerate(titles):
    _text(header, top, (j * tile + 4, 13), 0.42, _GREY, tile - 8)
    _text(header, bottom, (j * tile + 4, 29), 0.45, _WHITE, tile - 8)
  footer = np.zeros((20, grid.shape[1], 3), np.uint8)
  _text(footer, f"green: soft mask on its own scale (0-1); yellow: binary mask scored "
                f"(per-image min-max > {threshold})", (4, 14), 0.4, _GREY, grid.shape[1] - 8)
  return np.concatenate([header, grid, footer])


def write(path, images: np.ndarray, columns: dict[str, np.ndarray], **kwargs) -> None:
  """`render` to a PNG at `path` (a local path or URI; written atomically)."""
  ok, png = cv2.imencode(".png", cv2.cvtColor(render(images, columns, **kwargs),
                                              cv2.COLOR_RGB2BGR))
  if not ok:
    raise ValueError(f"OpenCV could not encode the overlay {path}")
  artifacts.write_atomic(path, lambda f: f.write(png.tobytes()))
