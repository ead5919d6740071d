"""Mask-scoring quality: how well a scorer (EvalSeg-Net) ranks candidate masks by their true J.

EvalSeg-Net does not segment: it scores candidate masks (it regresses cos(student mask,
Multi-Net mask), reference `segmentation.md` §3.2), and the next generation trains on the
masks it scores best. What matters is therefore whether its score ranks masks by their true
quality, and how much better the masks it would keep are than all candidates. On a held-out
split with ground-truth masks, the scorer scores its candidates (e.g. every student's mask of
every image) and this evaluator compares the scores with each candidate's J:

  score_vs_J/spearman   rank correlation of score and J over all candidates
  score_vs_J/pearson    linear correlation of score and J
  J/all                 mean J (percent) of all candidates
  J/kept                mean J of the `keep_fraction` best-scored candidates (what the global
                        top-fraction selection keeps; ties go to the earlier candidate, as there)
  J/best                mean J of the `keep_fraction` candidates with the highest J: what a
                        perfect scorer would keep (J/all <= J/kept <= J/best for a useful one)
  score_vs_cos/pearson  correlation of the score with what it regresses (cos to the Multi-Net
                        mask), where the scorer gives it: is the regression itself learnt?

A candidate's J follows the segmentation evaluator's protocol (`segmentation.binary_masks`):
resized to its image's original size, min–max normalised, `> bin_threshold`; an empty
prediction of an empty ground truth scores 1. Means are over candidates (each one image's mask
from one source), not per class. A correlation is NaN when the scores or the J are constant.
Sets without ground-truth masks (YouTube-Objects has boxes only) give no metrics.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from vtd.evaluators import common
from vtd.evaluators import segmentation
from vtd.segmentation import selection

COLUMNS = ("score_vs_J/spearman", "score_vs_J/pearson", "J/all", "J/kept", "J/best",
           "score_vs_cos/pearson")
HEADERS = ("Spearman(score, J)", "Pearson(score, J)", "J all", "J kept", "J best",
           "Pearson(score, cos)")
FORMATS = {c: ".2f" for c in COLUMNS if not c.startswith("J/")}


@dataclasses.dataclass
class ScoredCandidates:
  """Candidate masks of a held-out set's images and a scorer's scores of them.

  Attributes:
    masks: [C, s, s] soft candidate masks (any scale: min–max per mask before thresholding).
    image_of: [C] int, the image (index into the set's images) each candidate segments.
    scores: [C] the scorer's scores (higher = better).
    targets: [C] what the scorer regresses (EvalSeg-Net: cos to the Multi-Net mask), or None.
  """
  masks: np.ndarray
  image_of: np.ndarray
  scores: np.ndarray
  targets: np.ndarray | None = None


def pearson(a: np.ndarray, b: np.ndarray) -> float:
  """Pearson correlation of two [N] arrays; NaN when either is constant."""
  a = np.asarray(a, np.float64) - np.mean(a)
  b = np.asarray(b, np.float64) - np.mean(b)
  denom = np.sqrt((a * a).sum() * (b * b).sum())
  return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation (Pearson of average ranks, so ties share a rank); NaN when
  either is constant."""
  return pearson(stats.rankdata(a), stats.rankdata(b))


def scoring_quality(scores: np.ndarray, j: np.ndarray, keep_fraction: float,
                    targets: np.ndarray | None = None) -> dict[str, float]:
  """The module's metrics from scores [C] and the candidates' J [C] (percent)."""
  scores, j = np.asarray(scores, np.float64), np.asarray(j, np.float64)
  kept = selection.top_fraction(scores, keep_fraction)
  best = selection.top_fraction(j, keep_fraction)
  out = {"score_vs_J/spearman": spearman(scores, j), "score_vs_J/pearson": pearson(scores, j),
         "J/all": float(j.mean()), "J/kept": float(j[kept].mean()),
         "J/best": float(j[best].mean())}
  if targets is not None:
    out["score_vs_cos/pearson"] = pearson(scores, targets)
  return out


class Evaluator:
  """Mask-scoring quality (module docstring) of a scorer on one held-out split.

  model: has `score_candidates(test) -> ScoredCandidates`, or None when it cannot score that
    set; e.g. `vtd.segmentation.evaluate.EvalSegScorer`.
  context: {split name: test set} (`vtd.segmentation.input_pipeline.TestSet`, with `images`
    and ground-truth `masks`); a split the data do not have is a UserError.
  Info: the set's name, its image count, and the candidate and kept counts.
  """

  interface = "score_candidates"  # What a model needs to be scored (`common.for_model`).

  def __init__(self, split: str = "test", keep_fraction: float = 0.1,
               bin_threshold: float = 0.5):
    if not 0 < keep_fraction <= 1:
      raise TypeError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    self.split, self.keep_fraction = split, float(keep_fraction)
    self.bin_threshold = float(bin_threshold)
    self.columns, self.headers, self.formats = COLUMNS, HEADERS, FORMATS

  def run(self, model, context) -> common.EvalResult:
    test = segmentation.held_out_set(context, self.split)
    if test.masks is None:
      return common.EvalResult(metrics={})
    scored = model.score_candidates(test)
    if scored is None or len(scored.scores) == 0:
      return common.EvalResult(metrics={})
    image_of = np.asarray(scored.image_of)
    binary = segmentation.binary_masks(scored.masks, [test.images[i] for i in image_of],
                                       bin_threshold=self.bin_threshold)
    j = 100 * segmentation.jaccard_per_image(binary, [test.masks[i] for i in image_of])
    metrics = scoring_quality(scored.scores, j, self.keep_fraction, scored.targets)
    return common.EvalResult(
        metrics=metrics,
        info={"set": test.name, "images": len(test), "candidates": int(j.size),
              "kept": int(selection.top_fraction(j, self.keep_fraction).size)})
