"""UTS retrieval: the methods of the paper's Table 1 (rows model/method) and their Table 3 costs.

Methods (`shared/reference/retrieval_uts_qbnorm.md` §A.7-A.8):
  GV        video = L2-normalised mean of L2-normalised GAP frame features; cosine.
  RMAC+GV   the same with R-MAC frame features.
  FRP       the frame-level pipeline (Algorithm 1) on LSH codes of the R-MAC frame features.
Every method yields FIVR result dicts (similarity > 0 only, as the official scripts), scored
with the official protocol by the `fivr` evaluator (vtd/evaluators/fivr.py). Query time is the
wall time of scoring all queries against the database (a second, warm call: compilation
excluded) divided by the number of queries (index building and feature extraction excluded);
storage is the bytes a method keeps per database video.
"""

from __future__ import annotations

import dataclasses
import time
import ml_collections
import numpy as np

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


@dataclasses.dataclass
class MethodScores:
  """One retrieval method run by one network: what the FIVR evaluator scores.

  Attributes:
    similarities: {query id: {video id: similarity}} for the queries of every split, in the
      FIVR result-file format (similarity > 0 only).
    bytes_per_video: what the method stores per database video (paper Table 3).
    query_ms: wall time per query, ms (all queries scored at once, warm; index building and
      feature extraction excluded).
  """
  similarities: dict[str, dict[str, float]]
  bytes_per_video: float
  query_ms: float


def retrieve(config: ml_collections.ConfigDict, collection: input_pipeline.VideoCollection,
             features: extract_lib.FrameFeatures, seed: int
             ) -> tuple[dict[str, MethodScores], lsh_lib.LSH]:
  """GV, RMAC+GV and FRP of one network's frame features, for every query of every split.

  Reads `config.lsh` and `config.retrieval`; `seed` draws the LSH rotation and the R-MAC
  whitening sample. Returns ({method: scores}, the fitted LSH).
  """
  position = {v: i for i, v in enumerate(collection.video_ids)}
  query_ids = list(collection.query_ids) + list(collection.val_query_ids)
  missing = [q for q in query_ids if q not in position]
  if missing:
    raise UserError(f"queries not in the database: {missing[:5]}; every FIVR query must be "
                    "one of the database videos")
  query_rows = np.array([position[q] for q in query_ids], np.int64)
  num_videos = len(collection)
  fv = features.frame_video
  frames_per_video = fv.size / max(1, len(np.unique(fv)))
  rcfg = config.retrieval
  rmac = features.features["rmac"]
  if rcfg.rmac_whitening == "pca":
    rmac = whiten_frames(rmac, rcfg.rmac_whitening_frames, seed, rcfg.rmac_whitening_dim)
  sims, timing = {}, {}
  for method, frame_features in (("GV", features.features["gap"]), ("RMAC+GV", rmac)):
    dense, seconds = _gv(frame_features, fv, query_rows, num_videos)
    sims[method] = frame_level.similarity_dict(dense, query_ids, collection.video_ids)
    timing[method] = seconds
  lsh = lsh_lib.fit_lsh(seed, rmac.shape[1], config.lsh.nbits, rotate=config.lsh.rotate,
                        train_thresholds=config.lsh.train_thresholds, train_features=rmac)
  codes = lsh_lib.encode(rmac, lsh)
  sims["FRP"], timing["FRP"] = _frp(config, codes, fv, query_rows, query_ids, collection)
  storage = {"GV": 4 * features.features["gap"].shape[1],
             "RMAC+GV": 4 * rmac.shape[1],  # After whitening, if any.
             "FRP": lsh.code_size * frames_per_video}
  return {m: MethodScores(similarities=sims[m], bytes_per_video=float(storage[m]),
                          query_ms=1000 * timing[m] / len(query_rows)) for m in METHODS}, lsh
