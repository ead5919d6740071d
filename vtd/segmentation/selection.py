"""Module C and the labels it passes on: which (frame, mask) pairs each generation trains on.

`shared/reference/segmentation.md` §3-4; every rule the papers leave open is a named choice
here, exposed in `configs/segmentation.py` (the measurements behind each default are in
docs/segmentation.md).

* **Generation 1** (§3.1): rank every training frame by the mean of the non-zero values of its
  VideoPCA soft mask and keep the top `keep_fraction` (10 %: Table 1), globally or within
  each video (the ranking scope is not in the papers, §8 #5).
* **Student output -> [0, 1] mask** (`normalise`): what turns a student's raw regression output
  (in target units / target_scale, so 1 = 255) into a soft mask for Multi-Net, EvalSeg-Net and
  the next generation's labels. The public inference script clips at 255 and byte-scales the
  mask (a per-image min-max, §2.1); per-image min-max makes a near-empty output a full-range
  mask, so `student_scale` divides by one per-student scale instead (not from the paper).
* **Multi-Net** (§4): the pixel-wise product of the students' [0, 1] masks, optionally put back
  on one student's scale (its S-th root) before it is thresholded or used as a label.
* **EvalSeg-Net's training set** (§3.2, §8 #13): the masks of every student on a random subset
  of the training frames, labelled by cos(mask, Multi-Net mask); the other frames are scored.
* **Generation >= 2** (§3.2): keep the candidate masks whose EvalSeg-Net score is >= a
  threshold (the public README: 80 of 100) or the top `keep_fraction`, globally or within each
  video; each kept mask becomes a label of its frame, so a frame can contribute one pair per
  student. How a kept [0, 1] mask becomes a target (`next_targets`): as it is ("soft", the
  public code's byte-scaled PNG), or with everything below a threshold set to exactly 0
  ("gated", the shape of VideoPCA's hysteresis-gated teacher masks) or binarised ("binary");
  not from the papers (docs/segmentation.md measures why it matters at CPU size).

Shapes: F frames, S students, [*, s, s] masks at the working size.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from vtd.errors import UserError

NORMALISATIONS = ("minmax", "div_scale_clip", "student_scale")
SELECTIONS = ("threshold", "top_fraction")
COMBINES = ("product", "geometric_mean")
SCOPES = ("global", "per_video")
TARGET_RULES = ("soft", "gated", "binary")


# ----------------------------------------------------------------------------- scores, masks

def nonzero_mean_scores(masks: np.ndarray) -> np.ndarray:
  """Generation-1 selection score [N]: mean of the non-zero values of each soft mask (0 if none).

  VideoPCA's hysteresis gating sets everything outside the kept components to exactly 0, so
  "non-zero" needs no threshold (reference §3.1).
  """
  flat = masks.reshape(masks.shape[0], -1)
  nonzero = flat > 0
  count = nonzero.sum(axis=1)
  return np.where(count > 0, (flat * nonzero).sum(axis=1) / np.maximum(count, 1), 0.0)


def top_fraction(scores: np.ndarray, fraction: float, minimum: int = 1) -> np.ndarray:
  """Indices of the highest `fraction` of scores (at least `minimum`), best first (stable)."""
  if not 0 < fraction <= 1:
    raise ValueError(f"keep fraction must be in (0, 1], got {fraction}")
  k = min(scores.size, max(minimum, int(round(fraction * scores.size))))
  return np.argsort(-scores, kind="stable")[:k]


def top_fraction_per_group(scores: np.ndarray, groups: np.ndarray, fraction: float,
                           minimum: int = 1) -> np.ndarray:
  """The highest `fraction` of scores within each group (e.g. video), at least one per group
  with members; best first overall (stable), at least `minimum` in total."""
  if not 0 < fraction <= 1:
    raise ValueError(f"keep fraction must be in (0, 1], got {fraction}")
  groups = np.asarray(groups)
  keep = []
  for g in np.unique(groups):
    members = np.flatnonzero(groups == g)
    k = max(1, int(round(fraction * members.size)))
    keep.append(members[np.argsort(-scores[members], kind="stable")[:k]])
  keep = np.concatenate(keep)
  if keep.size < minimum:  # Top up from the global ranking.
    rest = np.setdiff1d(np.argsort(-scores, kind="stable"), keep, assume_unique=True)
    keep = np.concatenate([keep, rest[:minimum - keep.size]])
  return keep[np.argsort(-scores[keep], kind="stable")]


def keep_best(scores: np.ndarray, fraction: float, scope: str, groups: np.ndarray,
              minimum: int = 1) -> np.ndarray:
  """`top_fraction` over everything (scope "global") or within each group ("per_video")."""
  if scope == "global":
    return top_fraction(scores, fraction, minimum)
  if scope == "per_video":
    return top_fraction_per_group(scores, groups, fraction, minimum)
  raise UserError(f"selection scope must be one of {SCOPES}, got {scope!r}")


def student_scale(raw: np.ndarray, quantile: float) -> float:
  """One student's output scale: the `quantile` of its per-image maxima over [N, s, s] outputs.

  Used by `normalise(..., "student_scale")`: a mask as confident as the student's typical
  confident mask reaches 1, a near-empty output stays near 0.
  """
  peaks = raw.reshape(raw.shape[0], -1).max(axis=1)
  return float(max(np.quantile(peaks, quantile), 1e-6))


def constant_fraction(raw: np.ndarray, tolerance: float = 1e-6) -> float:
  """Fraction of the images [N, s, s] on which a student's output is constant (max - min <=
  tolerance, in target units / target_scale): per-image min-max turns such an output into an
  empty mask. Near 1 means a dead ReLU head (0 everywhere), which zeroes the Multi-Net
  product and EvalSeg-Net's labels."""
  flat = np.asarray(raw, np.float32).reshape(raw.shape[0], -1)
  return float(np.mean(flat.max(axis=1) - flat.min(axis=1) <= tolerance))


def normalise(raw: np.ndarray, rule: str, scale: float | None = None) -> np.ndarray:
  """Student outputs [N, s, s] (target units / target_scale) -> masks in [0, 1] (float32).

  Args:
    raw: the outputs, 1.0 = the top of the teacher's target range.
    rule: "minmax" per image (the public inference script's byte-scaling); "div_scale_clip",
      clip(raw, 0, 1) (the reference's /255 and clip); "student_scale", clip(raw / scale, 0, 1)
      with `scale` from `student_scale` (not from the paper).
    scale: required for "student_scale".
  """
  raw = np.asarray(raw, np.float32)
  if rule == "minmax":
    lo = raw.min(axis=(1, 2), keepdims=True)
    hi = raw.max(axis=(1, 2), keepdims=True)
    return (raw - lo) / np.maximum(hi - lo, 1e-8)
  if rule == "div_scale_clip":
    return np.clip(raw, 0.0, 1.0)
  if rule == "student_scale":
    if scale is None:
      raise ValueError("normalise(rule='student_scale') needs the student's scale")
    return np.clip(raw / scale, 0.0, 1.0)
  raise UserError(f"config.multinet.normalisation must be one of {NORMALISATIONS}, got {rule!r}")


def normalise_all(raws: Sequence[np.ndarray], rule: str,
                  scales: Sequence[float | None] | None = None) -> list[np.ndarray]:
  """`normalise` of each student's outputs [N, s, s] with its own scale (None: no scales)."""
  scales = list(scales) if scales is not None else [None] * len(raws)
  return [normalise(raw, rule, scale) for raw, scale in zip(raws, scales)]


def next_targets(masks: np.ndarray, rule: str, threshold: float) -> np.ndarray:
  """Kept [0, 1] masks [N, s, s] -> the next generation's targets [N, s, s] in [0, 1].

  "soft": unchanged. "gated": values <= `threshold` become exactly 0, the rest keep their
  soft value (like VideoPCA's masks, zero outside the kept components). "binary": 1 above
  `threshold`, else 0.
  """
  masks = np.asarray(masks, np.float32)
  if rule == "soft":
    return masks
  if rule == "gated":
    return np.where(masks > threshold, masks, 0.0).astype(np.float32)
  if rule == "binary":
    return (masks > threshold).astype(np.float32)
  raise UserError(f"config.evalseg.target_rule must be one of {TARGET_RULES}, got {rule!r}")


def multinet(masks: list[np.ndarray], combine: str = "product") -> np.ndarray:
  """Multi-Net of the students' [N, s, s] masks in [0, 1] (§4).

  "product": the pixel-wise product (the paper). "geometric_mean": its S-th root, i.e. the
  product on one student's scale: the same pixel order (so the same soft ranking), but a 0.5
  threshold means what it means for one student (every student at 0.5) instead of 0.5 ** S,
  and cosine labels are not dominated by the few pixels where all students peak (not from
  the paper; docs/segmentation.md).
  """
  product = np.prod(np.stack(masks), axis=0)
  if combine == "product":
    return product
  if combine == "geometric_mean":
    return product ** (1.0 / len(masks))
  raise UserError(f"config.multinet.combine must be one of {COMBINES}, got {combine!r}")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-row cosine similarity [N] of flattened masks [N, ...] (0 when either is all zero)."""
  a = a.reshape(a.shape[0], -1).astype(np.float64)
  b = b.reshape(b.shape[0], -1).astype(np.float64)
  denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
  return np.where(denom > 0, (a * b).sum(1) / np.maximum(denom, 1e-12), 0.0)


# ----------------------------------------------------------------------------- EvalSeg-Net

def split_frames(num_frames: int, train_fraction: float, minimum: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(EvalSeg-Net training frames, frames it scores): a random `train_fraction` (at least
  `minimum`) and the rest, both sorted. Disjoint, so EvalSeg-Net never scores what it saw."""
  rng = np.random.default_rng(seed)
  count = min(num_frames - 1, max(minimum, int(round(train_fraction * num_frames))))
  train = np.sort(rng.permutation(num_frames)[:count])
  return train, np.setdiff1d(np.arange(num_frames), train)


@dataclasses.dataclass
class Candidates:
  """Every student's mask on a set of frames, flattened student-major.

  Attributes:
    masks: [S * n, s, s] masks in [0, 1]; row i is student i // n on frames[i % n].
    frames: [n] frame indices (into the frame table).
    num_students: S.
  """
  masks: np.ndarray
  frames: np.ndarray
  num_students: int

  @property
  def frame_of(self) -> np.ndarray:
    """[S * n] frame index of every candidate."""
    return np.tile(self.frames, self.num_students)

  @property
  def student_of(self) -> np.ndarray:
    """[S * n] student index of every candidate."""
    return np.repeat(np.arange(self.num_students), self.frames.size)


def candidates(stack: np.ndarray, frames: np.ndarray) -> Candidates:
  """Candidates of students' masks `stack` [S, F, s, s] on `frames` [n]."""
  s, _, h, w = stack.shape
  return Candidates(stack[:, frames].reshape(-1, h, w), np.asarray(frames), s)


def cosine_labels(cand: Candidates, multi: np.ndarray) -> np.ndarray:
  """EvalSeg-Net labels [S * n]: cos(candidate, Multi-Net mask of its frame) (§3.2)."""
  return cosine(cand.masks, multi[cand.frame_of])


# ----------------------------------------------------------------------------- generation >= 2

def choose(scores: np.ndarray, rule: str, threshold: float, keep_fraction: float,
           minimum: int, scope: str = "global", groups: np.ndarray | None = None
           ) -> np.ndarray:
  """Indices of the kept candidates, best first.

  Args:
    scores: [N] EvalSeg-Net scores in cos units.
    rule: "threshold" (score >= threshold) or "top_fraction" (the best keep_fraction).
    threshold, keep_fraction: the rule's parameter.
    minimum: fewer kept masks than this (a batch) is a UserError.
    scope: for "top_fraction": "global" ranking, or "per_video" (the best keep_fraction of
      each video's candidates; `groups` [N] gives the videos).
    groups: [N] video of each candidate (for scope "per_video").
  """
  if rule == "threshold":
    order = np.argsort(-scores, kind="stable")
    chosen = order[scores[order] >= threshold]
  elif rule == "top_fraction":
    chosen = keep_best(scores, keep_fraction, scope, groups)
  else:
    raise UserError(f"config.evalseg.selection must be one of {SELECTIONS}, got {rule!r}")
  if chosen.size < minimum:
    fix = ("lower config.evalseg.threshold or use --config.evalseg.selection=top_fraction"
           if rule == "threshold" else "raise config.evalseg.keep_fraction")
    raise UserError(f"EvalSeg-Net kept {chosen.size} masks (< {minimum}, one batch) with "
                    f"selection={rule}" + (f" (threshold {threshold})" if rule == "threshold"
                                          else "") + f"; {fix}")
  return chosen


def kept_per_student(cand: Candidates, chosen: np.ndarray, names: list[str]) -> dict[str, int]:
  """How many kept masks each student supplied."""
  counts = np.bincount(cand.student_of[chosen], minlength=len(names))
  return {name: int(c) for name, c in zip(names, counts)}
