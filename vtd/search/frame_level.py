"""Video similarity from frame codes: UTS's frame-level retrieval pipeline (FRP, Algorithm 1,
reference §A.7) and the global-vector (GV) baseline.

FRP: for query video q with F frames, score(v) = (1/F) sum_m max_{g in TopN(f_m), video(g) = v}
sim(f_m, g), TopN = the N nearest gallery frames by Hamming distance (ties -> lower gallery
index, `vtd.search.hamming`), sim = 1 - h/nbits by default. Each gallery video counts at most
once per query frame, with its best frame. Videos that score 0 are omitted, like the official
FIVR `calculate_similarities.py` (they are "not retrieved").

All query frames of a batch of query videos go through one k-NN call; the aggregation is one
int64 sort of (query, video, frame, distance) keys and two segment reductions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vtd import chunking
from vtd.errors import UserError
from vtd.search.hamming import HammingIndex

FRAME_SIMS = ("one_minus_hamming", "simhash_cos", "vote")


def frame_similarity(h: np.ndarray, nbits: int, kind: str = "one_minus_hamming") -> np.ndarray:
  """Hamming distances -> float64 frame similarities (non-increasing in h).

  one_minus_hamming: 1 - h/nbits (in [0, 1]); simhash_cos: cos(pi h / nbits), SimHash's cosine
  estimate; vote: 1 (a pure vote).
  """
  h = np.asarray(h, np.float64)
  if kind == "one_minus_hamming":
    return 1.0 - h / nbits
  if kind == "simhash_cos":
    return np.cos(np.pi * h / nbits)
  if kind == "vote":
    return np.ones_like(h)
  raise UserError(f"frame_sim {kind!r}: expected one of {', '.join(FRAME_SIMS)}")


@dataclasses.dataclass
class VideoScores:
  """Sparse query-video scores (COO, sorted by (query, video), only score > 0).

  Attributes:
    query: [M] int64 query video numbers in [0, num_queries).
    video: [M] int64 gallery video numbers in [0, num_videos).
    score: [M] float64 scores.
  """
  query: np.ndarray
  video: np.ndarray
  score: np.ndarray
  num_queries: int
  num_videos: int

  def dense(self) -> np.ndarray:
    """[num_queries, num_videos] float64, 0 where omitted."""
    out = np.zeros((self.num_queries, self.num_videos))
    out[self.query, self.video] = self.score
    return out

  def to_dict(self, query_ids: Sequence[str], video_ids: Sequence[str]
              ) -> dict[str, dict[str, float]]:
    """FIVR result format: query id -> {video id: similarity}, videos in database order."""
    out = {q: {} for q in query_ids}
    for q, v, s in zip(self.query.tolist(), self.video.tolist(), self.score.tolist()):
      out[query_ids[q]][video_ids[v]] = s
    return out


def similarity_dict(scores: np.ndarray, query_ids: Sequence[str], video_ids: Sequence[str]
                    ) -> dict[str, dict[str, float]]:
  """Dense [Q, V] scores -> FIVR result dict, keeping only similarity > 0 (database order)."""
  scores = np.asarray(scores)
  out = {}
  for row, q in enumerate(query_ids):
    nz = np.flatnonzero(scores[row] > 0)
    out[q] = dict(zip((video_ids[v] for v in nz), scores[row, nz].astype(np.float64).tolist()))
  return out


def _batches(sizes: np.ndarray, batch_frames: int) -> list[tuple[int, int]]:
  """Consecutive [start, stop) query-video ranges of <= batch_frames frames (or one video)."""
  out, start, total = [], 0, 0
  for i, s in enumerate(sizes.tolist()):
    if i > start and total + s > batch_frames:
      out.append((start, i))
      start, total = i, 0
    total += s
  if start < len(sizes):
    out.append((start, len(sizes)))
  return out


def frame_level_scores(index: HammingIndex, gallery_frame_video: Any, num_videos: int,
                       query_codes: Any, query_frame_video: Any, num_queries: int, *,
                       nbits: int, top_n: int = 1000, frame_sim: str = "one_minus_hamming",
                       query_self_video: Any = None, batch_frames: int = 8192) -> VideoScores:
  """Algorithm 1 for many query videos.

  Args:
    index: a Hamming index holding the gallery frame codes (row i = gallery frame i).
    gallery_frame_video: [N_f] int, video number in [0, num_videos) of each gallery frame.
    query_codes: uint8 [F, code_size] codes of all query frames.
    query_frame_video: [F] int, query video number in [0, num_queries) of each query frame.
    nbits: code length (the similarity is 1 - h/nbits).
    top_n: frames retrieved per query frame (N = 1000 in the paper).
    query_self_video: [num_queries] int, the gallery video of each query (-1: none); its frames
      are removed from the ranking before the top N is taken (`frp.exclude_self`). None: keep.
    batch_frames: query frames per k-NN call (whole query videos per call).
  """
  gfv = np.asarray(gallery_frame_video, np.int64)
  qfv = np.asarray(query_frame_video, np.int64)
  if gfv.shape != (index.ntotal,):
    raise UserError(f"gallery_frame_video has shape {gfv.shape}, the index holds "
                    f"{index.ntotal} frames")
  if qfv.shape != (np.shape(query_codes)[0],):
    raise UserError(f"query_frame_video has shape {qfv.shape}, expected "
                    f"({np.shape(query_codes)[0]},)")
  if (gfv.size and (gfv.min() < 0 or gfv.max() >= num_videos)) or \
     (qfv.size and (qfv.min() < 0 or qfv.max() >= num_queries)):
    raise UserError("frame -> video numbers out of range")
  frame_similarity(np.zeros(1), nbits, frame_sim)  # validates frame_sim
  self_video = None
  if query_self_video is not None:
    self_video = np.asarray(query_self_video, np.int64)
    if self_video.shape != (num_queries,):
      raise UserError(f"query_self_video has shape {self_video.shape}, expected ({num_queries},)")
  frames_per_video = np.bincount(gfv, minlength=num_videos)
  frames_per_query = np.bincount(qfv, minlength=num_queries)
  order = np.argsort(qfv, kind="stable")  # frames grouped by query video
  codes = np.asarray(query_codes)[order]
  qfv = qfv[order]
  starts = np.concatenate([[0], np.cumsum(frames_per_query)])
  h_bits = int(nbits).bit_length()
  v_bits = max(1, int(num_videos - 1).bit_length())
  k_search = top_n  # one k for every batch (one compilation for the jax backend)
  if self_video is not None:
    # Enough extra neighbours to still have N after the query's own frames are removed.
    k_search += int(frames_per_video[self_video[self_video >= 0]].max(initial=0))
  parts = []
  for q0, q1 in _batches(frames_per_query, batch_frames) if index.ntotal else ():
    f0, f1 = starts[q0], starts[q1]
    if f1 == f0:
      continue
    rows_qv = qfv[f0:f1]
    k = max(1, min(k_search, index.ntotal))
    dist, idx = index.search(codes[f0:f1], k)
    vid = gfv[idx]  # idx -1 (missing) reads the last frame's video: masked below
    keep = None
    if self_video is not None or idx[:, -1].min() < 0:
      keep = idx >= 0
      if self_video is not None:
        keep &= vid != self_video[rows_qv][:, None]
      keep &= np.cumsum(keep, axis=1) <= top_n  # the first N remaining hits
    # Key (query, video, frame, distance): one sort groups hits by (query frame, video) with the
    # smallest distance (= the best similarity) first, and (query, video) pairs contiguously.
    frame_in_q = np.arange(f0, f1) - starts[rows_qv]
    f_bits = max(1, int(frames_per_query[q0:q1].max() - 1).bit_length())
    q_bits = max(1, int(q1 - q0 - 1).bit_length())
    if q_bits + v_bits + f_bits + h_bits > 63:
      raise UserError("frame_level_scores: batch too large for the int64 sort key; lower "
                      "batch_frames")
    row_key = ((rows_qv - q0) << (v_bits + f_bits) | frame_in_q) << h_bits
    key = (vid << (f_bits + h_bits) | dist) | row_key[:, None]  # [F_b, k]
    key = np.sort(key[keep] if keep is not None else key.ravel())
    group = key >> h_bits
    first = np.concatenate([[True], group[1:] != group[:-1]])
    sims = frame_similarity(key[first] & ((1 << h_bits) - 1), nbits, frame_sim)
    pair = group[first] >> f_bits
    pstart = np.flatnonzero(np.concatenate([[True], pair[1:] != pair[:-1]]))
    total = np.add.reduceat(sims, pstart) if sims.size else sims
    pair = pair[pstart]
    qv = (pair >> v_bits) + q0
    parts.append((qv, pair & ((1 << v_bits) - 1), total / frames_per_query[qv]))
  if not parts:
    empty = np.zeros(0, np.int64)
    return VideoScores(empty, empty, np.zeros(0), num_queries, num_videos)
  qv, v, s = (np.concatenate(x) for x in zip(*parts))
  pos = s > 0  # zero-score videos are not retrieved (official result files keep sim > 0)
  return VideoScores(qv[pos], v[pos], s[pos], num_queries, num_videos)


def frame_level_similarities(index: HammingIndex, gallery_frame_video: Any,
                             video_ids: Sequence[str], query_codes: Any, query_frame_video: Any,
                             query_ids: Sequence[str], *, nbits: int, top_n: int = 1000,
                             frame_sim: str = "one_minus_hamming", exclude_self: bool = False,
                             batch_frames: int = 8192) -> dict[str, dict[str, float]]:
  """`frame_level_scores` in the FIVR result format: {query id: {video id: similarity}}.

  exclude_self drops the gallery frames of the video whose id equals the query id.
  """
  self_video = None
  if exclude_self:
    pos = {v: i for i, v in enumerate(video_ids)}
    self_video = np.array([pos.get(q, -1) for q in query_ids], np.int64)
  scores = frame_level_scores(index, gallery_frame_video, len(video_ids), query_codes,
                              query_frame_video, len(query_ids), nbits=nbits, top_n=top_n,
                              frame_sim=frame_sim, query_self_video=self_video,
                              batch_frames=batch_frames)
  return scores.to_dict(list(query_ids), list(video_ids))


def global_vectors(features: Any, frame_video: Any, num_videos: int) -> np.ndarray:
  """GV: [F, D] frame features -> [num_videos, D] float32, the L2-normalised mean of the
  L2-normalised frames of each video (zero for a video without frames)."""
  x = jnp.asarray(features, jnp.float32)
  seg = jnp.asarray(frame_video, jnp.int32)

  @jax.jit
  def run(x, seg):
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    total = jax.ops.segment_sum(x, seg, num_segments=num_videos)
    count = jax.ops.segment_sum(jnp.ones_like(seg, jnp.float32), seg, num_segments=num_videos)
    mean = total / jnp.maximum(count, 1.0)[:, None]
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
  return np.asarray(run(x, seg))


def global_vector_similarities(query_vectors: Any, database_vectors: Any, *,
                               chunk_size: int = 65536) -> np.ndarray:
  """Cosine similarities [Q, V] float32 of GV vectors (re-normalised), database in chunks."""
  def unit(a):
    a = np.asarray(a, np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  q, db = unit(query_vectors), unit(database_vectors)
  if db.shape[0] == 0:
    return np.zeros((q.shape[0], 0), np.float32)
  qj = jnp.asarray(q)
  fn = jax.jit(lambda c: jnp.dot(c, qj.T, precision=jax.lax.Precision.HIGHEST))
  return np.ascontiguousarray(chunking.chunked_apply(fn, db, chunk_size).T)
