"""Mask-scoring quality: correlations and kept-mask J against hand-computed values."""

import numpy as np
import pytest
from scipy import stats

from vtd.errors import UserError
from vtd.evaluators import common
from vtd.evaluators import mask_scoring
from vtd.segmentation import input_pipeline


def _box(h, w, y0, y1, x0, x1):
  m = np.zeros((h, w), bool)
  m[y0:y1, x0:x1] = True
  return m


def _test_set(masks=True):
  """Two 8 x 8 images; image 0's object is rows/cols 0..3, image 1's rows 4..7, cols 0..7."""
  gt = [_box(8, 8, 0, 4, 0, 4), _box(8, 8, 4, 8, 0, 8)]
  images = [np.zeros((8, 8, 3), np.uint8) for _ in gt]
  return input_pipeline.TestSet(name="toy", images=images, masks=gt if masks else None,
                                boxes=None, class_names=["a", "b"], average="images",
                                split="test")


# Four candidates at the images' size, with J (percent) 100, 50, 0 (image 0) and 50 (image 1).
CANDIDATES = np.stack([
    _box(8, 8, 0, 4, 0, 4),   # image 0: exact -> J 100
    _box(8, 8, 0, 4, 0, 8),   # image 0: twice the object -> J 50
    _box(8, 8, 4, 8, 4, 8),   # image 0: disjoint -> J 0
    _box(8, 8, 4, 8, 0, 4),   # image 1: half the object -> J 50
]).astype(np.float32)
IMAGE_OF = np.array([0, 0, 0, 1])
TRUE_J = np.array([100.0, 50.0, 0.0, 50.0])


class _Scorer:
  def __init__(self, scores, targets=None):
    self.scores, self.targets = np.asarray(scores, float), targets

  def score_candidates(self, test):
    return mask_scoring.ScoredCandidates(masks=CANDIDATES, image_of=IMAGE_OF,
                                         scores=self.scores, targets=self.targets)


def test_a_perfect_scorer_keeps_the_best_masks():
  ev = mask_scoring.Evaluator(split="test", keep_fraction=0.25)
  out = ev.run(_Scorer([0.9, 0.5, 0.1, 0.6], targets=np.array([1.0, 0.5, 0.0, 0.5])),
               {"test": _test_set()})
  m = out.metrics
  assert m["score_vs_J/spearman"] == pytest.approx(
      stats.spearmanr([0.9, 0.5, 0.1, 0.6], TRUE_J).correlation)
  assert m["score_vs_J/pearson"] == pytest.approx(np.corrcoef([0.9, 0.5, 0.1, 0.6], TRUE_J)[0, 1])
  assert m["J/all"] == pytest.approx(50.0)
  assert m["J/kept"] == pytest.approx(100.0) and m["J/best"] == pytest.approx(100.0)
  assert m["score_vs_cos/pearson"] == pytest.approx(
      np.corrcoef([0.9, 0.5, 0.1, 0.6], [1.0, 0.5, 0.0, 0.5])[0, 1])
  assert list(m) == list(ev.columns)
  assert out.info == {"set": "toy", "images": 2, "candidates": 4, "kept": 1}


def test_a_reversed_scorer_keeps_the_worst():
  out = mask_scoring.Evaluator(keep_fraction=0.5).run(_Scorer([0.1, 0.5, 0.9, 0.4]),
                                                      {"test": _test_set()})
  m = out.metrics
  # Ranks of J: 4, 2.5, 1, 2.5 (ties averaged); of the scores: 1, 3, 4, 2.
  assert m["score_vs_J/spearman"] == pytest.approx(stats.spearmanr([0.1, 0.5, 0.9, 0.4],
                                                                   TRUE_J).correlation)
  assert m["score_vs_J/spearman"] < -0.6
  assert m["J/kept"] == pytest.approx((0.0 + 50.0) / 2)  # Scores 0.9 and 0.5 kept.
  assert m["J/best"] == pytest.approx((100.0 + 50.0) / 2)
  assert "score_vs_cos/pearson" not in m  # The scorer gives no regression targets.


def test_constant_scores_have_no_correlation():
  m = mask_scoring.Evaluator().run(_Scorer([0.3] * 4), {"test": _test_set()}).metrics
  assert np.isnan(m["score_vs_J/spearman"]) and np.isnan(m["score_vs_J/pearson"])
  assert m["J/kept"] == pytest.approx(100.0)  # keep_fraction 0.1 of 4 -> 1, the first on ties.


def test_j_uses_the_original_size_and_min_max():
  """Candidates at 4 x 4 are resized to the 8 x 8 images, min–max normalised, > 0.5."""

  class Small:
    def score_candidates(self, test):
      small = np.zeros((1, 4, 4), np.float32)
      small[0, :2, :2] = 0.2  # Faint, but min–max makes it the foreground: image 0 exactly.
      return mask_scoring.ScoredCandidates(masks=small, image_of=np.array([0]),
                                           scores=np.array([1.0]))

  m = mask_scoring.Evaluator().run(Small(), {"test": _test_set()}).metrics
  assert m["J/all"] == pytest.approx(100.0)


def test_sets_without_masks_models_without_scores_and_missing_splits():
  ev = mask_scoring.Evaluator(split="test")
  assert ev.run(_Scorer([1, 2, 3, 4]), {"test": _test_set(masks=False)}).metrics == {}

  class CannotScore:
    def score_candidates(self, test):
      return None

  assert ev.run(CannotScore(), {"test": _test_set()}).metrics == {}
  with pytest.raises(UserError, match="the data have no held-out 'val' split"):
    mask_scoring.Evaluator(split="val").run(_Scorer([1, 2, 3, 4]), {"test": _test_set()})


def test_only_scorers_are_scored_and_settings_are_checked():
  evals = common.from_config({
      "test": dict(type="segmentation", split="test"),
      "scoring": dict(type="mask_scoring", split="test", keep_fraction=0.2)})

  class Predictor:
    def masks(self, test):
      return None

  assert list(common.for_model(evals, _Scorer([0.0]))) == ["scoring"]
  assert list(common.for_model(evals, Predictor())) == ["test"]
  with pytest.raises(UserError, match=r"config.evals.s: keep_fraction must be in \(0, 1\], "
                                      "got 0"):
    common.from_config({"s": dict(type="mask_scoring", split="test", keep_fraction=0)})
  described = common.describe(evals, {"test": dict(type="segmentation", split="test"),
                                      "scoring": dict(type="mask_scoring", split="test")})
  assert "formats" not in described["test"]
  assert described["scoring"]["formats"]["score_vs_J/spearman"] == ".2f"
  assert "J/kept" not in described["scoring"]["formats"]  # One decimal, like P / J / CorLoc.
