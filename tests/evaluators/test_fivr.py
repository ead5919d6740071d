"""Tests for vtd.evaluators.fivr against a brute-force transcription of the official procedure."""

import random
import warnings

import numpy as np
import pytest

from vtd.errors import UserError
from vtd.evaluators import fivr
from vtd.evaluators.fivr import evaluate_fivr

LABELS = {"DSVR": ("ND", "DS"), "CSVR": ("ND", "DS", "CS"), "ISVR": ("ND", "DS", "CS", "IS")}


def reference(annotation, results, labels, dataset):
  """The official evaluate() loop (mAP part), written out: {query: AP} and mAP."""
  aps = {}
  for query, gt_sets in annotation.items():
    if query not in results or query not in dataset:
      continue
    gt = set()
    for label in labels:
      gt |= set(gt_sets.get(label, []))
    gt &= dataset
    if not gt:
      continue
    i, ri, s = 0.0, 0, 0.0
    for video, _ in sorted(results[query].items(), key=lambda x: x[1], reverse=True):
      if video == query or video not in dataset:
        continue
      ri += 1
      if video in gt:
        i += 1.0
        s += i / ri
    aps[query] = s / len(gt)
  return aps, (float(np.mean(list(aps.values()))) if aps else float("nan"))


def test_hand_computed():
  ann = {"q": {"ND": ["a"], "DS": ["c", "e"], "IS": ["d"]}}
  res = {"q": {"q": 1.0, "a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}}
  out = evaluate_fivr(res, ann, dataset_ids=["q", "a", "b", "c", "d", "e"])
  # DSVR: GT {a, c, e}; ranks (query skipped) a=1, c=3; e missing -> (1/1 + 2/3) / 3.
  assert out.map["DSVR"] == pytest.approx((1 + 2 / 3) / 3, abs=1e-15)
  assert out.map["CSVR"] == out.map["DSVR"]  # no CS label
  # ISVR: GT {a, c, d, e}: (1/1 + 2/3 + 3/4) / 4.
  assert out.map["ISVR"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 4, abs=1e-15)
  assert out.ap["DSVR"] == {"q": out.map["DSVR"]}
  assert out.num_queries == {"DSVR": 1, "CSVR": 1, "ISVR": 1}


def test_ties_keep_insertion_order():
  ann = {"q": {"ND": ["y"]}}
  assert evaluate_fivr({"q": {"x": 0.5, "y": 0.5}}, ann, ["q", "x", "y"]).map["DSVR"] == 0.5
  assert evaluate_fivr({"q": {"y": 0.5, "x": 0.5}}, ann, ["q", "x", "y"]).map["DSVR"] == 1.0


def test_dataset_filtering_and_self():
  # "z" is not in the dataset: skipped while walking (ranks close up) and dropped from GT.
  ann = {"q": {"DS": ["b", "z", "q"]}}  # a query listing itself: kept in GT, never found
  res = {"q": {"z": 0.99, "q": 0.95, "a": 0.9, "b": 0.8}}
  out = evaluate_fivr(res, ann, ["q", "a", "b"], tasks=("DSVR",))
  assert out.map["DSVR"] == pytest.approx((1 / 2) / 2, abs=1e-15)  # GT {b, q}; b at rank 2
  # Without a dataset list nothing is filtered: GT {b, z, q}; z rank 1, b rank 3.
  out = evaluate_fivr(res, ann, None, tasks=("DSVR",))
  assert out.map["DSVR"] == pytest.approx((1 + 2 / 3) / 3, abs=1e-15)


def test_missing_and_empty_queries_warn_and_are_skipped():
  ann = {"q1": {"ND": ["a"]}, "q2": {"ND": ["a"]}, "q3": {"IS": ["a"]}, "q4": {"ND": ["zz"]}}
  res = {"q1": {"a": 1.0}, "q3": {"a": 1.0}, "q4": {"a": 1.0}}
  with pytest.warns(UserWarning) as record:
    out = evaluate_fivr(res, ann, ["q1", "q2", "q3", "q4", "a"])
  text = " ".join(str(w.message) for w in record)
  assert "missing from the results" in text and "q2" in text
  assert "empty DSVR annotation" in text and "q3" in text and "q4" in text
  assert set(out.ap["DSVR"]) == {"q1"} and set(out.ap["ISVR"]) == {"q1", "q3"}
  assert out.map["ISVR"] == 1.0
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    out = evaluate_fivr({}, ann, None, tasks=("DSVR",))
  assert np.isnan(out.map["DSVR"]) and "mAP is nan" in str(record[-1].message)


def test_random_against_reference():
  rng = random.Random(0)
  videos = [f"v{i}" for i in range(60)]
  queries = videos[:8] + ["outside"]
  dataset = (set(videos[:55]) | {"outside"}) - {"v3"}  # v3: a query not in the dataset
  labels = ("ND", "DS", "CS", "IS", "DA")
  ann = {q: {lab: rng.sample(videos, rng.randint(0, 6)) for lab in labels if rng.random() < 0.7}
         for q in queries}
  res = {}
  for q in queries[:-2]:  # the last two are missing from the results
    chosen = rng.sample(videos + [q], rng.randint(5, 50))
    # Coarse similarities: many ties, resolved by insertion order.
    res[q] = {v: rng.choice([0.1, 0.2, 0.5, 0.9]) for v in chosen}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = evaluate_fivr(res, ann, dataset)
  for task, labs in LABELS.items():
    aps, mean = reference(ann, res, labs, dataset)
    assert out.ap[task] == aps  # exact: the same float operations in the same order
    assert out.map[task] == mean
    assert list(out.ap[task]) == [q for q in ann if q in aps]


def test_average_precision_helper_and_errors():
  assert fivr.average_precision({"a": 0.1, "b": 0.9}, {"a"}, "q") == 0.5
  with pytest.raises(UserError, match="empty"):
    fivr.average_precision({"a": 0.1}, set(), "q")
  with pytest.raises(UserError, match="task"):
    evaluate_fivr({}, {"q": {}}, tasks=("XSVR",))
