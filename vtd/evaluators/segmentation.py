"""Foreground-segmentation metrics: P and J (Object Discovery), box IoU, CorLoc (YouTube-Objects).

Protocols (reference `segmentation.md` §5, defaults §8; none of it is in the authors' code, §7):

* **P and J** (Object Discovery, Rubinstein et al. 2013; §5.3). P is pixel accuracy: the
  fraction of pixels whose foreground/background label matches the ground truth, foreground
  *and* background. J is the Jaccard index (IoU) of the foreground. Both are computed per image
  and then averaged over the images of a class with equal weight per image (not pooled over
  pixels); the class means are averaged again for the "mean" column of Table 1. An image whose
  prediction and ground truth are both empty has J = 1 (`empty="one"`, §5.3 sketch); an empty
  ground truth with a non-empty prediction scores 0. `empty="skip"` instead leaves images with
  an empty ground truth out of J's average (what some public re-implementations do); how
  Rubinstein's own code treats them is NOT FOUND. Ground truth is at the original image size:
  resize the prediction, never the ground truth.
* **Soft masks.** Binarisation is `mask > threshold` (strict). §8 #16/#20 recommend min–max
  normalising each soft mask to [0, 1] and thresholding at 0.5 (`binarize`); the metrics
  themselves only threshold, so callers choose the normalisation explicitly.
* **Boxes** are (x0, y0, x1, y1) in 0-based pixel-edge coordinates with exclusive ends: the box
  covers the pixels x0 <= x < x1, y0 <= y < y1, and its area is (x1 - x0) * (y1 - y0). A
  one-pixel box at (x, y) is (x, y, x + 1, y + 1). A missing box (no foreground) is a row of NaN.
* **Box from a mask** (§5.2: NOT FOUND; §8 #17): tight box of the largest 8-connected
  foreground component (`rule="largest_cc"`, default) or of all foreground pixels
  (`rule="all_fg"`). Ties between equally large components go to the one met first in raster
  order. An empty mask has no box (None / NaN row), which counts as a miss in CorLoc. Boxes are
  computed at mask resolution; `scale_boxes` maps them to the frame size.
* **CorLoc** (§5.2, PASCAL criterion): a frame is correct when the IoU of its predicted box with
  ANY ground-truth box of that frame is >= 0.5 (equality counts); CorLoc is the fraction of
  annotated frames that are correct, per class, and Table 2's "avg" is the mean over classes.
* **GrabCut** (§5.3, §8 #18, not from the paper): `cv2.grabCut` in mask mode, seeded with
  probable-FG where the (normalised) soft mask > 0.5, definite-FG where > 0.8, probable-BG
  elsewhere (optionally definite-BG below a third threshold), 5 iterations. Off for the headline
  tables. Runs on the CPU, outside `jit`.

Fractions are in [0, 1]; the per-class summaries (`object_discovery_scores`, `corloc_by_class`)
are in percent, like the papers' tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage

from vtd.errors import UserError
from vtd.evaluators import common

MaskBatch = np.ndarray | Sequence[np.ndarray]

# GrabCut fits 5-component GMMs with k-means; OpenCV 4.x's k-means asserts on fewer samples than
# components (5.x only asserts on an empty set), so smaller seed sets skip GrabCut.
_GRABCUT_MIN_SAMPLES = 5


# ----------------------------------------------------------------------------- masks, P and J

def normalize_minmax(soft: np.ndarray, eps: float = 1e-8) -> np.ndarray:
  """Min–max normalises each mask to [0, 1] over its last two axes (§8 #20).

  Args:
    soft: [H, W] or [N, H, W] soft masks, any real dtype.
    eps: a mask whose range is <= eps (constant) becomes all zeros, i.e. no foreground.

  Returns:
    float64 array of the same shape.
  """
  soft = np.asarray(soft, dtype=np.float64)
  lo = soft.min(axis=(-2, -1), keepdims=True)
  span = soft.max(axis=(-2, -1), keepdims=True) - lo
  return np.where(span > eps, (soft - lo) / np.maximum(span, eps), 0.0)


def binarize(soft: np.ndarray, threshold: float = 0.5, normalize: bool = True) -> np.ndarray:
  """Soft masks [..., H, W] -> bool: `x > threshold` after optional min–max per mask (§8 #16)."""
  soft = normalize_minmax(soft) if normalize else np.asarray(soft)
  return soft > threshold


def _binary(mask: np.ndarray, threshold: float | None, name: str) -> np.ndarray:
  mask = np.asarray(mask)
  if mask.dtype == np.bool_:
    return mask
  if threshold is not None:
    return mask > threshold
  if np.issubdtype(mask.dtype, np.integer) and not ((mask != 0) & (mask != 1)).any():
    return mask.astype(bool)
  hint = ("pass threshold= to binarise soft masks" if name != "gt_masks" else
          "give ground truth as bool or 0/1 masks")
  raise ValueError(f"{name} is not binary (dtype {mask.dtype}, values other than 0/1); {hint}")


def _as_batch(masks: MaskBatch) -> np.ndarray | list[np.ndarray]:
  """One stacked [N, H, W] array when possible, else a list of [H_i, W_i] arrays."""
  if isinstance(masks, np.ndarray):
    if masks.ndim == 2:
      return masks[None]
    if masks.ndim != 3:
      raise UserError(f"masks must be [H, W], [N, H, W] or a list of [H, W], got {masks.shape}")
    return masks
  items = [np.asarray(m) for m in masks]
  for m in items:
    if m.ndim != 2:
      raise UserError(f"each mask must be [H, W], got shape {m.shape}")
  return items


def _mask_counts(pred_masks: MaskBatch, gt_masks: MaskBatch, threshold: float | None):
  """Per-image (intersection, union, correct pixels, total pixels), each int64 [N]."""
  preds, gts = _as_batch(pred_masks), _as_batch(gt_masks)
  if len(preds) != len(gts):
    raise UserError(f"{len(preds)} predicted masks for {len(gts)} ground-truth masks")
  if len(preds) == 0:
    raise ValueError("no masks to evaluate")
  if isinstance(preds, np.ndarray) and isinstance(gts, np.ndarray):
    if preds.shape != gts.shape:
      raise UserError(f"predicted masks {preds.shape} and ground truth {gts.shape} differ in "
                      "shape; resize the predictions to the ground-truth size")
    p, g = _binary(preds, threshold, "pred_masks"), _binary(gts, None, "gt_masks")
    axes = (1, 2)
    return ((p & g).sum(axes, dtype=np.int64), (p | g).sum(axes, dtype=np.int64),
            (p == g).sum(axes, dtype=np.int64),
            np.full(len(p), p.shape[1] * p.shape[2], np.int64))
  counts = np.zeros((4, len(preds)), np.int64)
  for i, (pred, gt) in enumerate(zip(preds, gts)):
    if pred.shape != gt.shape:
      raise UserError(f"image {i}: predicted mask {pred.shape} and ground truth {gt.shape} "
                      "differ in shape; resize the prediction to the ground-truth size")
    p, g = _binary(pred, threshold, "pred_masks"), _binary(gt, None, "gt_masks")
    counts[:, i] = (p & g).sum(), (p | g).sum(), (p == g).sum(), p.size
  return tuple(counts)


def pixel_accuracy_per_image(pred_masks: MaskBatch, gt_masks: MaskBatch,
                             threshold: float | None = None) -> np.ndarray:
  """Per-image P: fraction of pixels labelled correctly (foreground and background).

  Args:
    pred_masks: [N, H, W] (or [H, W]) bool masks, or a list of [H_i, W_i] masks of varying
      sizes; soft (float) masks need `threshold`.
    gt_masks: ground truth in the same layout, bool or integer 0/1.
    threshold: binarise predictions as `pred > threshold`; None requires binary predictions.

  Returns:
    float64 [N] in [0, 1].
  """
  _, _, correct, total = _mask_counts(pred_masks, gt_masks, threshold)
  return correct / total


def jaccard_per_image(pred_masks: MaskBatch, gt_masks: MaskBatch,
                      threshold: float | None = None, empty: str = "one") -> np.ndarray:
  """Per-image J: |pred & gt| / |pred | gt| of the foreground.

  Args:
    pred_masks, gt_masks, threshold: as for `pixel_accuracy_per_image`.
    empty: "one": an image with empty prediction and empty ground truth scores 1 (§5.3);
      "skip": images with empty ground truth get NaN (left out of `jaccard`'s mean).

  Returns:
    float64 [N] in [0, 1], NaN where skipped.
  """
  if empty not in ("one", "skip"):
    raise ValueError(f"empty must be 'one' or 'skip', got {empty!r}")
  inter, union, _, _ = _mask_counts(pred_masks, gt_masks, threshold)
  j = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
  if empty == "skip":
    gt_area = _gt_areas(gt_masks)
    j = np.where(gt_area > 0, j, np.nan)
  return j


def _gt_areas(gt_masks: MaskBatch) -> np.ndarray:
  gts = _as_batch(gt_masks)
  if isinstance(gts, np.ndarray):
    return _binary(gts, None, "gt_masks").sum((1, 2))
  return np.array([_binary(g, None, "gt_masks").sum() for g in gts])


def pixel_accuracy(pred_masks: MaskBatch, gt_masks: MaskBatch,
                   threshold: float | None = None) -> float:
  """P: the mean over images of `pixel_accuracy_per_image` (a fraction, not percent)."""
  return float(np.mean(pixel_accuracy_per_image(pred_masks, gt_masks, threshold)))


def jaccard(pred_masks: MaskBatch, gt_masks: MaskBatch, threshold: float | None = None,
            empty: str = "one") -> float:
  """J: the mean over images of `jaccard_per_image`; NaN if every image was skipped."""
  j = jaccard_per_image(pred_masks, gt_masks, threshold, empty)
  return float(np.nanmean(j)) if np.isfinite(j).any() else float("nan")


def object_discovery_scores(pred_masks: MaskBatch, gt_masks: MaskBatch,
                            class_names: Sequence[str], threshold: float | None = None,
                            empty: str = "one") -> dict[str, float]:
  """Table-1 style summary: per-class P and J and their means over classes, in percent.

  Returns:
    {"<class>/P", "<class>/J" for each class in first-appearance order, "mean/P", "mean/J"}.
  """
  p = pixel_accuracy_per_image(pred_masks, gt_masks, threshold)
  j = jaccard_per_image(pred_masks, gt_masks, threshold, empty)
  names = np.asarray(list(class_names))
  if names.shape != p.shape:
    raise UserError(f"{names.size} class names for {p.size} images")
  out = {}
  classes = list(dict.fromkeys(names.tolist()))
  for c in classes:
    sel = names == c
    out[f"{c}/P"] = 100 * float(p[sel].mean())
    out[f"{c}/J"] = (100 * float(np.nanmean(j[sel])) if np.isfinite(j[sel]).any()
                     else float("nan"))
  out["mean/P"] = float(np.mean([out[f"{c}/P"] for c in classes]))
  out["mean/J"] = float(np.mean([out[f"{c}/J"] for c in classes]))
  return out


# ----------------------------------------------------------------------------- boxes, CorLoc

def mask_to_box(mask: np.ndarray, rule: str = "largest_cc", connectivity: int = 8,
                threshold: float | None = None) -> np.ndarray | None:
  """Tight box around the foreground of one mask.

  Args:
    mask: [H, W] bool mask (or soft mask with `threshold`).
    rule: "largest_cc": box of the largest connected component (ties: first in raster order);
      "all_fg": box of all foreground pixels.
    connectivity: 8 or 4, for "largest_cc".
    threshold: binarise a soft mask as `mask > threshold`.

  Returns:
    int64 [4] (x0, y0, x1, y1), exclusive ends, or None when the mask has no foreground.
  """
  if rule not in ("largest_cc", "all_fg"):
    raise ValueError(f"rule must be 'largest_cc' or 'all_fg', got {rule!r}")
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
  fg = _binary(mask, threshold, "mask")
  if fg.ndim != 2:
    raise UserError(f"mask must be [H, W], got {fg.shape}")
  if not fg.any():
    return None
  if rule == "largest_cc":
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    # ndimage.label numbers components in raster order of their first pixel, so argmax's
    # first-maximum rule breaks ties deterministically.
    labels, num = ndimage.label(fg, structure=structure)
    areas = np.bincount(labels.ravel(), minlength=num + 1)[1:]
    fg = labels == (int(np.argmax(areas)) + 1)
  rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
  return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.int64)


def masks_to_boxes(masks: MaskBatch, rule: str = "largest_cc", connectivity: int = 8,
                   threshold: float | None = None) -> np.ndarray:
  """`mask_to_box` over a batch: float64 [N, 4], NaN rows for masks without foreground."""
  batch = _as_batch(masks)
  out = np.full((len(batch), 4), np.nan)
  for i, m in enumerate(batch):
    box = mask_to_box(m, rule, connectivity, threshold)
    if box is not None:
      out[i] = box
  return out


def scale_boxes(boxes: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
  """Maps boxes from a [H, W] grid to another (edge coordinates scale exactly); NaN stays NaN."""
  boxes = np.asarray(boxes, dtype=np.float64)
  sx, sy = to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]
  return boxes * np.array([sx, sy, sx, sy])


def _as_boxes(boxes, name: str) -> np.ndarray:
  boxes = np.asarray(boxes, dtype=np.float64)
  if boxes.ndim == 1 and boxes.size == 4:
    boxes = boxes[None]
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise UserError(f"{name} must be [N, 4] (x0, y0, x1, y1), got shape {boxes.shape}")
  return boxes


def _inter_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Broadcast intersection and union areas of [..., 4] boxes (negative extents count as 0)."""
  iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
  area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
  inter = iw * ih
  return inter, area_a + area_b - inter


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
  """Pairwise IoU of [N, 4] and [M, 4] boxes -> float64 [N, M].

  Pairs with zero union (two empty boxes) or a NaN (missing) box have IoU 0.
  """
  a, b = _as_boxes(boxes_a, "boxes_a"), _as_boxes(boxes_b, "boxes_b")
  with np.errstate(invalid="ignore"):
    inter, union = _inter_union(a[:, None, :], b[None, :, :])
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
  return np.nan_to_num(iou, nan=0.0)


def corloc_hits(pred_boxes: np.ndarray, gt_boxes_per_image: Sequence[np.ndarray],
                iou_threshold: float = 0.5) -> np.ndarray:
  """Per frame: is IoU(pred, any gt box of the frame) >= iou_threshold?

  Args:
    pred_boxes: [N, 4], one predicted box per frame; a NaN row (no box) is a miss.
    gt_boxes_per_image: N arrays [K_i, 4], K_i >= 1 ground-truth boxes of frame i.
    iou_threshold: the PASCAL criterion 0.5; equality counts as correct.

  Returns:
    bool [N].
  """
  pred = _as_boxes(pred_boxes, "pred_boxes")
  if len(gt_boxes_per_image) != len(pred):
    raise UserError(f"{len(pred)} predicted boxes for {len(gt_boxes_per_image)} annotated frames")
  gts = [_as_boxes(g, f"gt boxes of frame {i}") if np.size(g) else np.zeros((0, 4))
         for i, g in enumerate(gt_boxes_per_image)]
  empty = [i for i, g in enumerate(gts) if len(g) == 0]
  if empty:
    raise UserError(f"frames without ground-truth boxes (not annotated frames): {empty[:5]}")
  # Pad to [N, K_max, 4] with NaN boxes: NaN compares False, so padding never hits.
  padded = np.full((len(gts), max((len(g) for g in gts), default=1), 4), np.nan)
  for i, g in enumerate(gts):
    padded[i, :len(g)] = g
  with np.errstate(invalid="ignore"):
    inter, union = _inter_union(pred[:, None, :], padded)
    # inter >= t * union instead of inter / union >= t: exact at t = 0.5 for integer boxes.
    hit = (union > 0) & (inter >= iou_threshold * union)
  return hit.any(axis=1)


def corloc(pred_boxes: np.ndarray, gt_boxes_per_image: Sequence[np.ndarray],
           iou_threshold: float = 0.5) -> float:
  """CorLoc: fraction of annotated frames whose predicted box hits a ground-truth box."""
  return float(np.mean(corloc_hits(pred_boxes, gt_boxes_per_image, iou_threshold)))


def corloc_by_class(pred_boxes: np.ndarray, gt_boxes_per_image: Sequence[np.ndarray],
                    class_names: Sequence[str], iou_threshold: float = 0.5) -> dict[str, float]:
  """Table-2 style summary in percent: {"<class>": CorLoc, ..., "mean": mean over classes}."""
  hits = corloc_hits(pred_boxes, gt_boxes_per_image, iou_threshold)
  names = np.asarray(list(class_names))
  if names.shape != hits.shape:
    raise UserError(f"{names.size} class names for {hits.size} frames")
  out = {c: 100 * float(hits[names == c].mean()) for c in dict.fromkeys(names.tolist())}
  out["mean"] = float(np.mean(list(out.values())))
  return out


# ----------------------------------------------------------------------------- GrabCut

def grabcut_refine(image_uint8: np.ndarray, soft_mask: np.ndarray, threshold: float = 0.5,
                   fg_threshold: float = 0.8, bg_threshold: float | None = None,
                   iterations: int = 5, normalize: bool = True, seed: int = 0) -> np.ndarray:
  """Refines a soft mask with GrabCut seeded from it (§5.3 suggestion, §8 #18 defaults).

  Seeds: definite-FG where s > fg_threshold, probable-FG where threshold < s <= fg_threshold,
  definite-BG where s < bg_threshold (if given), probable-BG elsewhere, with s the soft mask
  after optional min–max normalisation. If no pixel exceeds `threshold` the result is empty
  (GrabCut is skipped); if the foreground or background seeds are too few for GrabCut's GMMs,
  the thresholded mask is returned unchanged.

  Args:
    image_uint8: [H, W, 3] uint8 image (RGB or BGR: GrabCut's colour GMMs do not depend on
      the channel order).
    soft_mask: [H, W] soft mask at the image's resolution.
    threshold, fg_threshold, bg_threshold: seeding thresholds on the normalised mask.
    iterations: GrabCut iterations.
    normalize: min–max normalise the soft mask first.
    seed: seeds OpenCV's global RNG (its k-means GMM initialisation is random).

  Returns:
    bool [H, W] foreground mask.
  """
  image = np.asarray(image_uint8)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise UserError(f"grabcut_refine needs a [H, W, 3] uint8 image, got {image.dtype} "
                    f"{image.shape}")
  soft = np.asarray(soft_mask, dtype=np.float64)
  if soft.shape != image.shape[:2]:
    raise UserError(f"soft mask {soft.shape} does not match the image {image.shape[:2]}; "
                    "resize the mask to the image size first")
  if not threshold <= fg_threshold:
    raise ValueError(f"need threshold <= fg_threshold, got {threshold} > {fg_threshold}")
  if bg_threshold is not None and bg_threshold > threshold:
    raise ValueError(f"need bg_threshold <= threshold, got {bg_threshold} > {threshold}")
  if normalize:
    soft = normalize_minmax(soft)
  fg = soft > threshold
  num_fg = int(fg.sum())
  if num_fg == 0:
    return fg
  if num_fg < _GRABCUT_MIN_SAMPLES or fg.size - num_fg < _GRABCUT_MIN_SAMPLES:
    return fg
  seeds = np.full(soft.shape, cv2.GC_PR_BGD, np.uint8)
  if bg_threshold is not None:
    seeds[soft < bg_threshold] = cv2.GC_BGD
  seeds[fg] = cv2.GC_PR_FGD
  seeds[soft > fg_threshold] = cv2.GC_FGD
  bgd_model = np.zeros((1, 65), np.float64)
  fgd_model = np.zeros((1, 65), np.float64)
  cv2.setRNGSeed(seed)
  seeds, _, _ = cv2.grabCut(np.ascontiguousarray(image), seeds, None, bgd_model, fgd_model,
                            iterations, cv2.GC_INIT_WITH_MASK)
  return (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)


# ----------------------------------------------------------------------------- evaluator

COLUMNS = ("P", "J", "CorLoc")
BOX_RULES = ("largest_cc", "all_fg")


def _resize(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """A soft mask [h, w] -> float32 [H, W] (bilinear), as the students' targets are resized."""
  if mask.shape == tuple(hw):
    return mask.astype(np.float32)
  return cv2.resize(mask.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def binary_masks(masks: np.ndarray, images: Sequence[np.ndarray], *, bin_threshold: float = 0.5,
                 grabcut: bool = False) -> list[np.ndarray]:
  """Soft masks [N, s, s] -> N bool masks [H_i, W_i] at their images' original sizes: resized
  (bilinear), min–max normalised and thresholded at `bin_threshold`, or refined with GrabCut
  seeded from the soft mask. `images`: N [H_i, W_i, 3] uint8."""
  binary = []
  for mask, image in zip(masks, images):
    soft = _resize(np.asarray(mask), image.shape[:2])
    if grabcut:
      binary.append(grabcut_refine(image, soft, threshold=bin_threshold))
    else:
      binary.append(binarize(soft, bin_threshold, normalize=True))
  return binary


def held_out_set(context, split: str):
  """The held-out set `split` of an evaluator's context {split: set}; a UserError if absent."""
  test = context.get(split)
  if test is None:
    raise UserError(f"the data have no held-out {split!r} split with ground truth "
                    f"(have: {', '.join(context) or 'none'}); evaluate another split")
  return test


def score_masks(masks: np.ndarray, test, *, bin_threshold: float = 0.5,
                box_rule: str = "largest_cc", grabcut: bool = False) -> dict[str, float]:
  """P, J and CorLoc (percent) of soft masks [N, s, s] on a held-out set.

  Each mask is resized to its image's original size (the protocols never resize the ground
  truth), min–max normalised and thresholded at `bin_threshold` (or refined with GrabCut).
  P and J where the set has masks (Object Discovery protocol), CorLoc where it has boxes
  (YouTube-Objects); per image, or per class then over classes (`test.average`).

  Args:
    masks: [N, s, s] soft masks, any scale (min–max per image before thresholding).
    test: has `images` (N [H_i, W_i, 3] uint8), `masks` (N bool [H_i, W_i] or None), `boxes`
      (N [K_i, 4] or None), `class_names` (N) and `average` ("images" | "classes"), e.g.
      `vtd.segmentation.input_pipeline.TestSet`.
  """
  binary = binary_masks(masks, test.images, bin_threshold=bin_threshold, grabcut=grabcut)
  by_class = test.average == "classes"
  out = {}
  if test.masks is not None:
    if by_class:
      scores = object_discovery_scores(binary, test.masks, test.class_names)
      out.update(P=scores["mean/P"], J=scores["mean/J"])
    else:
      out.update(P=100 * pixel_accuracy(binary, test.masks), J=100 * jaccard(binary, test.masks))
  if test.boxes is not None:
    boxes = masks_to_boxes(binary, rule=box_rule)
    out["CorLoc"] = (corloc_by_class(boxes, test.boxes, test.class_names)["mean"]
                     if by_class else 100 * corloc(boxes, test.boxes))
  return out


class Evaluator:
  """P, J and CorLoc (percent) of a model's soft masks on one held-out split.

  model: has `masks(test) -> [N, s, s] soft masks`, or None when it cannot segment that set
    (the VideoPCA teacher needs the source videos of the images); e.g. the predictors of
    `vtd.segmentation.evaluate`.
  context: {split name: test set} (`vtd.segmentation.input_pipeline.TestSet`); a split the
    data do not have (a real test set has no "val") is a UserError.
  Info: the set's name and image count.
  """

  interface = "masks"  # What a model needs to be scored (`vtd.evaluators.common.for_model`).

  def __init__(self, split: str = "test", bin_threshold: float = 0.5,
               box_rule: str = "largest_cc", grabcut: bool = False):
    if box_rule not in BOX_RULES:
      raise TypeError(f"box_rule must be one of {BOX_RULES}, got {box_rule!r}")
    self.split, self.bin_threshold = split, float(bin_threshold)
    self.box_rule, self.grabcut = box_rule, bool(grabcut)
    self.columns = COLUMNS
    self.headers = COLUMNS

  def run(self, model, context):
    test = held_out_set(context, self.split)
    masks = model.masks(test)
    if masks is None:
      return common.EvalResult(metrics={})
    return common.EvalResult(
        metrics=score_masks(masks, test, bin_threshold=self.bin_threshold,
                            box_rule=self.box_rule, grabcut=self.grabcut),
        info={"set": test.name, "images": len(test)})
