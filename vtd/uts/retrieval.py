"""UTS retrieval and its FIVR evaluation: the paper's Table 1 (methods x models) and Table 3.

Methods (`shared/reference/retrieval_uts_qbnorm.md` §A.7-A.8):
  GV        video = L2-normalised mean of L2-normalised GAP frame features; cosine.
  RMAC+GV   the same with R-MAC frame features.
  FRP       the frame-level pipeline (Algorithm 1) on LSH codes of the R-MAC frame features.
Every method writes FIVR result dicts (similarity > 0 only, as the official scripts) and is
scored with the official protocol (vtd/evaluators/fivr.py). Query time is the wall time of
scoring all queries against the database (a second, warm call: compilation excluded) divided
by the number of queries (index building and feature extraction excluded); storage is the bytes a method keeps per database video.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ml_collections
import numpy as np

from vtd import artifacts
from vtd.evaluators import fivr as fivr_eval
from vtd.search import frame_level
from vtd.search import hamming
from vtd.search import lsh as lsh_lib
from vtd.errors import UserError
from vtd.uts import extract as extract_lib
from vtd.uts import input_pipeline
from vtd.uts import models

METHODS = ("GV", "RMAC+GV", "FRP")


def _gv(features: np.ndarray, frame_video: np.ndarray, query_rows: np.ndarray,
        num_videos: int) -> tuple[np.ndarray, float]:
  """Dense [Q, V] GV cosines and the query time (s, all queries)."""
  vectors = frame_level.global_vectors(features, frame_video, num_videos)
  return _timed(lambda: frame_level.global_vector_similarities(vectors[query_rows], vectors))


def _timed(fn):
  """(fn(), seconds of a second, warm call): compilation and first-touch costs excluded."""
  fn()
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def _frp(config: ml_collections.ConfigDict, codes: np.ndarray, frame_video: np.ndarray,
         query_rows: np.ndarray, query_ids: list[str],
         collection: input_pipeline.VideoCollection
         ) -> tuple[dict[str, dict[str, float]], float]:
  rcfg = config.retrieval
  index = hamming.make_index(rcfg.backend, config.lsh.nbits, rcfg.index)
  if hasattr(index, "train"):
    index.train(codes)
  index.add(codes)
  # Query frames: the frames of the query videos, numbered by query.
  query_of_video = np.full(len(collection), -1, np.int64)
  query_of_video[query_rows] = np.arange(len(query_rows))
  is_query_frame = query_of_video[frame_video] >= 0
  return _timed(lambda: frame_level.frame_level_similarities(
      index, frame_video, collection.video_ids, codes[is_query_frame],
      query_of_video[frame_video[is_query_frame]], query_ids,
      nbits=config.lsh.nbits, top_n=rcfg.top_n, exclude_self=rcfg.exclude_self,
      batch_frames=rcfg.batch_frames))


def whiten_frames(features: np.ndarray, num_fit: int, seed: int, dim: int = 0) -> np.ndarray:
  """PCA-whitening of frame descriptors fitted on (a sample of) the database's own frames, then
  L2: [F, D] -> [F, D'], D' = the `dim` leading components (0 = min(D, rank)). Unsupervised, like the teacher's PCA (eqs. 1-3);
  the classic R-MAC pipeline whitens its descriptors the same way (reference §A.3)."""
  rng = np.random.default_rng(seed)
  rows = rng.permutation(len(features))[:num_fit or len(features)]
  dim = min(dim or features.shape[1], features.shape[1], len(rows) - 1)
  w, b = models.fit_pca_whitening(features[rows], dim, eps=1e-6)
  out = (features.astype(np.float64) @ w + b).astype(np.float32)
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def evaluate_models(config: ml_collections.ConfigDict,
                    collection: input_pipeline.VideoCollection,
                    features: dict[str, extract_lib.FrameFeatures], out_dir: str
                    ) -> dict[str, Any]:
  """Scores every (model, method) on the FIVR tasks; writes the LSH and result files.

  Test and validation queries are scored in one pass (query time: per query over both);
  each row has "test" (the test queries and annotation) and, when the collection has
  validation queries, "val" (theirs). Result files hold the test queries only.
  """
  position = {v: i for i, v in enumerate(collection.video_ids)}
  query_ids = list(collection.query_ids) + list(collection.val_query_ids)
  missing = [q for q in query_ids if q not in position]
  if missing:
    raise ValueError(f"queries not in the database: {missing[:5]}")
  query_rows = np.array([position[q] for q in query_ids], np.int64)
  num_videos = len(collection)
  splits = {"test": (collection.query_ids, collection.annotation)}
  if collection.val_query_ids:
    splits["val"] = (collection.val_query_ids, collection.val_annotation)
  out: dict[str, Any] = {}
  for model, feats in features.items():
    fv = feats.frame_video
    frames_per_video = fv.size / max(1, len(np.unique(fv)))
    rmac = feats.features["rmac"]
    if config.retrieval.rmac_whitening == "pca":
      rmac = whiten_frames(rmac, config.retrieval.rmac_whitening_frames, config.seed,
                           config.retrieval.rmac_whitening_dim)
    elif config.retrieval.rmac_whitening != "none":
      raise UserError(f"config.retrieval.rmac_whitening must be none|pca, got "
                      f"{config.retrieval.rmac_whitening!r}")
    sims = {}
    timing = {}
    for method, frame_features in (("GV", feats.features["gap"]), ("RMAC+GV", rmac)):
      dense, seconds = _gv(frame_features, fv, query_rows, num_videos)
      sims[method] = frame_level.similarity_dict(dense, query_ids, collection.video_ids)
      timing[method] = seconds
    lsh = lsh_lib.fit_lsh(config.seed, rmac.shape[1], config.lsh.nbits,
                          rotate=config.lsh.rotate,
                          train_thresholds=config.lsh.train_thresholds, train_features=rmac)
    lsh_lib.save_lsh(os.path.join(out_dir, f"{model}_lsh.npz"), lsh)
    codes = lsh_lib.encode(rmac, lsh)
    sims["FRP"], timing["FRP"] = _frp(config, codes, fv, query_rows, query_ids, collection)
    storage = {"GV": 4 * feats.features["gap"].shape[1],
               "RMAC+GV": 4 * rmac.shape[1],  # After whitening, if any.
               "FRP": lsh.code_size * frames_per_video}
    for method in METHODS:
      row = {"storage_bytes_per_video": float(storage[method]),
             "query_ms_per_video": 1000 * timing[method] / len(query_rows)}
      for split, (queries, annotation) in splits.items():
        split_sims = {q: sims[method][q] for q in queries}
        if split == "test":
          artifacts.write_json_atomic(
              os.path.join(out_dir, f"{model}_{method}_results.json"), split_sims)
        res = fivr_eval.evaluate_fivr(split_sims, annotation, collection.dataset_ids)
        row[split] = {task: 100 * v for task, v in res.map.items()}
        row["queries" if split == "test" else "val_queries"] = res.num_queries
      out[f"{model}/{method}"] = row
  return out


def format_results(results: dict[str, Any], workdir: str) -> str:
  """The Table 1 + Table 3 shaped markdown table of one run."""
  lines = [f"UTS FIVR mAP, test queries (validation in brackets) ({workdir})", "",
           "| method | model | DSVR | CSVR | ISVR | bytes/video | query ms/video |",
           "|---|---|---|---|---|---|---|"]
  for method in METHODS:
    for name, res in results.items():
      model, _, m = name.partition("/")
      if m != method:
        continue
      t, v = res["test"], res.get("val")
      cells = [f"{t[k]:.1f}" + (f" ({v[k]:.1f})" if v else "") for k in ("DSVR", "CSVR", "ISVR")]
      lines.append(f"| {method} | {model} | {' | '.join(cells)} | "
                   f"{res['storage_bytes_per_video']:.0f} | {res['query_ms_per_video']:.2f} |")
  return "\n".join(lines)
