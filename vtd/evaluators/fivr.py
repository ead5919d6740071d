"""FIVR-200K mAP exactly as the official `evaluation.py::evaluate` (reference §B.2).

Per query q of the annotation (and per task DSVR / CSVR / ISVR):
1. GT(q) = union of the task's labels, intersected with the dataset ids; empty -> skipped with a
   warning. (A query listed among its own positives stays in GT and is a guaranteed miss.)
2. q's result dict is sorted by similarity, descending, with a stable sort: ties keep the dict's
   insertion order.
3. Walking that list, the query itself and ids outside the dataset are skipped; r is the 1-based
   rank among the kept items, i the positives seen so far; AP = (sum of i/r at positives) / |GT|.
   Positives absent from the result dict count as misses.
4. mAP = mean over the queries present in the results (a missing query, or one not in the
   dataset, is warned about and skipped, not scored 0).

The walk is done once per query: the ranks of the kept items are tabulated, then each task sums
i/r over its positives in rank order (sequentially, so the float result is the official one).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np

from vtd.errors import UserError
from vtd.evaluators import common
from vtd.uts.data.fivr import TASKS


@dataclasses.dataclass
class FivrResult:
  """mAP per task, AP per task and query (only the evaluated queries, annotation order)."""
  map: dict[str, float]
  ap: dict[str, dict[str, float]]

  @property
  def num_queries(self) -> dict[str, int]:
    return {task: len(aps) for task, aps in self.ap.items()}


def ranked_kept(similarities: Mapping[str, float], query: str,
                dataset: set[str] | None) -> list[str]:
  """Video ids by descending similarity (stable), without the query and non-dataset ids."""
  ranked = sorted(similarities.items(), key=lambda item: item[1], reverse=True)
  return [v for v, _ in ranked if v != query and (dataset is None or v in dataset)]


def ap_from_ranks(positive_ranks: Iterable[int], num_positives: int) -> float:
  """AP = (1/|GT|) sum_j j / r_j over the retrieved positives' 1-based ranks r_1 < r_2 < ..."""
  total = 0.0
  for i, r in enumerate(sorted(positive_ranks), 1):
    total += i / r  # in rank order, as the official loop accumulates
  return total / num_positives


def average_precision(similarities: Mapping[str, float], positives: set[str], query: str,
                      dataset: set[str] | None = None) -> float:
  """AP of one query's result dict {video id: similarity} (positives already ∩ dataset)."""
  if not positives:
    raise UserError(f"query {query}: empty positive set")
  ranks = [r for r, v in enumerate(ranked_kept(similarities, query, dataset), 1)
           if v in positives]
  return ap_from_ranks(ranks, len(positives))


def _warn(what: str, queries: list[str]) -> None:
  if queries:
    shown = ", ".join(queries[:5]) + (", ..." if len(queries) > 5 else "")
    warnings.warn(f"FIVR evaluation: {len(queries)} {what}, skipped: {shown}", stacklevel=3)


def evaluate_fivr(similarities: Mapping[str, Mapping[str, float]],
                  annotation: Mapping[str, Mapping[str, list[str]]],
                  dataset_ids: Iterable[str] | None = None,
                  tasks: Sequence[str] = ("DSVR", "CSVR", "ISVR")) -> FivrResult:
  """Official FIVR mAP for each task.

  Args:
    similarities: {query id: {video id: similarity}} (the FIVR result-file format).
    annotation: {query id: {label: [video ids]}} (annotation.json).
    dataset_ids: the database ids (youtube_ids.txt); None = no filtering (every id counts).
    tasks: names from `vtd.data.fivr.TASKS`.
  """
  for task in tasks:
    if task not in TASKS:
      raise UserError(f"FIVR task {task!r}: expected one of {', '.join(TASKS)}")
  dataset = None if dataset_ids is None else set(dataset_ids)
  ap = {task: {} for task in tasks}
  missing, outside, empty = [], [], {task: [] for task in tasks}
  for query, labels in annotation.items():
    if query not in similarities:
      missing.append(query)
      continue
    if dataset is not None and query not in dataset:
      outside.append(query)
      continue
    rank_of = None  # built lazily: only when some task has positives
    for task in tasks:
      gt = set().union(*(labels.get(label, ()) for label in TASKS[task]))
      if dataset is not None:
        gt &= dataset
      if not gt:
        empty[task].append(query)
        continue
      if rank_of is None:
        kept = ranked_kept(similarities[query], query, dataset)
        rank_of = {v: r for r, v in enumerate(kept, 1)}
      ranks = [rank_of[v] for v in gt if v in rank_of]
      ap[task][query] = ap_from_ranks(ranks, len(gt))
  _warn("queries missing from the results", missing)
  _warn("queries not in the dataset", outside)
  for task in tasks:
    _warn(f"queries with an empty {task} annotation", empty[task])
  maps = {}
  for task in tasks:
    if ap[task]:
      maps[task] = float(np.mean(list(ap[task].values())))
    else:
      warnings.warn(f"FIVR evaluation: no query evaluated for {task}; mAP is nan", stacklevel=2)
      maps[task] = float("nan")
  return FivrResult(maps, ap)


def precision_recall_curve(similarities: Mapping[str, Mapping[str, float]],
                           annotation: Mapping[str, Mapping[str, list[str]]],
                           dataset_ids: Iterable[str] | None, task: str,
                           num_points: int = 21) -> tuple[np.ndarray, np.ndarray]:
  """Mean interpolated precision-recall curve of one task over the evaluated queries.

  Ranks and ground truth as `evaluate_fivr`. Per query, precision at recall level R is the
  highest precision at any rank whose recall is >= R (0 where the recall never reaches R:
  positives missing from the results); the curve is the mean over the queries of
  `evaluate_fivr` (same skips).

  Returns:
    (recall levels [num_points] in [0, 1], mean interpolated precision [num_points]).
  """
  levels = np.linspace(0.0, 1.0, num_points)
  dataset = None if dataset_ids is None else set(dataset_ids)
  curves = []
  for query, labels in annotation.items():
    if query not in similarities or (dataset is not None and query not in dataset):
      continue
    gt = set().union(*(labels.get(label, ()) for label in TASKS[task]))
    if dataset is not None:
      gt &= dataset
    if not gt:
      continue
    kept = ranked_kept(similarities[query], query, dataset)
    curve = np.zeros(num_points)
    if kept:
      hits = np.cumsum([v in gt for v in kept], dtype=np.float64)
      precision = hits / np.arange(1, len(kept) + 1)
      recall = hits / len(gt)  # Non-decreasing along the ranking.
      # Interpolation: the best precision at this rank or deeper (running max from the end).
      best = np.maximum.accumulate(precision[::-1])[::-1]
      first = np.searchsorted(recall, levels, side="left")  # First rank with recall >= R.
      reached = first < len(kept)
      curve[reached] = best[first[reached]]
    curves.append(curve)
  if not curves:
    return levels, np.full(num_points, np.nan)
  return levels, np.mean(curves, axis=0)


class Evaluator:
  """FIVR mAP (DSVR / CSVR / ISVR, in percent) of one retrieval method on one split's queries,
  with the paper's Table 3 costs and precision-recall curves per task.

  config.evals.<name> = dict(type="fivr", split="test"|"val", tasks="DSVR,CSVR,ISVR",
                             pr_points=21)

  `model` (vtd/uts/retrieval.py `MethodScores`): `similarities` {query id: {video id: sim}}
  (FIVR result-file format, every query of every split), `bytes_per_video` (what the method
  stores per database video) and `query_ms` (wall time per query).
  `context` (vtd/uts/input_pipeline.py `VideoCollection`): `split_queries(split)` ->
  (query ids, annotation) and `dataset_ids`.
  """

  def __init__(self, split: str = "test", tasks: str = "DSVR,CSVR,ISVR", pr_points: int = 21):
    self.split = split
    self.tasks = tuple(t.strip() for t in str(tasks).split(",") if t.strip())
    for task in self.tasks:
      if task not in TASKS:
        raise UserError(f"FIVR evaluator task {task!r}: expected some of {', '.join(TASKS)}")
    if pr_points < 2:
      raise UserError(f"FIVR evaluator pr_points={pr_points}: need at least 2 recall levels")
    self.pr_points = int(pr_points)
    self.columns = self.tasks + ("bytes_per_video", "query_ms")
    self.headers = tuple(f"{t} mAP" for t in self.tasks) + ("bytes/video", "query ms")

  def run(self, model, context) -> "common.EvalResult":
    queries, annotation = context.split_queries(self.split)
    sims = {q: model.similarities[q] for q in queries if q in model.similarities}
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # Skips are counted in `info` instead.
      result = evaluate_fivr(sims, annotation, context.dataset_ids, self.tasks)
      curves = {task: precision_recall_curve(sims, annotation, context.dataset_ids, task,
                                             self.pr_points) for task in self.tasks}
    metrics = {task: 100.0 * result.map[task] for task in self.tasks}
    metrics.update(bytes_per_video=float(model.bytes_per_video),
                   query_ms=float(model.query_ms))
    return common.EvalResult(
        metrics=metrics,
        curves={"precision_recall": {task: {"recall": r.tolist(), "precision": p.tolist()}
                                     for task, (r, p) in curves.items()}},
        info={"queries": result.num_queries})
