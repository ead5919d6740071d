"""Text-video retrieval metrics (R@k, median/mean rank) as defined by Collaborative Experts.

Follows `t2v_metrics`, `v2t_metrics` and `cols2metrics` in `model/metric.py` of the official
Collaborative-Experts / TeachText code (albanie/collaborative-experts), including its
"averaging" tie breaking: when the ground truth shares its score with other items, its rank is
the mean of the tied sorted positions.

Layout: `sims` is [N_q, N_v] with N_q = N_v * K caption rows ordered video-major (row q is a
caption of video q // K) and `query_mask` [N_v, K] marks which caption slots exist.

Instead of sorting, ranks use the closed form of the averaged tie position,
  rank = #(scores > gt) + (#(scores == gt) - 1) / 2,
which equals the official value exactly (both are a half-integer computed without rounding).
Counts are accumulated over blocks of query rows by jitted kernels, so the extra memory is
O(query_chunk * N_v) and the similarity matrix never has to exist in one piece (see
`RetrievalAccumulator`). Each block is read once, both directions counted in the same kernel;
host (NumPy) memory is read in place (`device_put` aliases aligned host buffers on CPU), so a
matrix already in memory is not copied at all. For v2t only the best-scoring caption of each video needs counting
(see `_block_counts`), which costs N_v comparisons per row rather than N_v * K.

Comparisons are exact, in the (floating) dtype of the given similarities. The one conversion:
a float64 NumPy input is converted to float32 when JAX's x64 mode is disabled, chunk by chunk
and identically for the ground-truth values, so ties are judged on the float32 values.
Similarities must be finite, and (as in the official code, which gives missing captions a
distance of 1e8) larger than -1e8.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vtd import chunking
from vtd.evaluators import common

Metrics = dict[str, float]

def metrics_from_ranks(ranks: np.ndarray) -> Metrics:
  """Recall@k, median and mean rank from 0-based (possibly half-integer) ranks.

  As the official `cols2metrics`: R1 counts ranks equal to 0, so a rank of 0.5 (the ground
  truth tied with one other item at the top) is not a hit at 1, while R5/R10/R50 count
  rank < k. Ranks may be inf (a video without any caption, as in the official v2t code).

  Args:
    ranks: [N] ranks, 0 = ground truth retrieved first.

  Returns:
    Dict with "R1", "R5", "R10", "R50" (percent), "MdR", "MnR" (1-based),
    "geometric_mean_R1-R5-R10" and "num_queries" (= N), all python floats.
  """
  ranks = np.asarray(ranks, dtype=np.float64).reshape(-1)
  num = ranks.size
  if num == 0:
    raise ValueError("metrics_from_ranks needs at least one rank")
  # Same expressions as cols2metrics (100 * count / n) so the floats agree to the last bit.
  out = {
      "R1": 100 * float(np.sum(ranks == 0)) / num,
      "R5": 100 * float(np.sum(ranks < 5)) / num,
      "R10": 100 * float(np.sum(ranks < 10)) / num,
      "R50": 100 * float(np.sum(ranks < 50)) / num,
      "MdR": float(np.median(ranks) + 1),
      "MnR": float(np.mean(ranks) + 1),
  }
  recalls = np.array([out["R1"], out["R5"], out["R10"]])
  # scipy.stats.mstats.gmean (scipy >= 1.11) returns 0 when any entry is 0; computed here
  # directly to skip its log(0) warning and depend on no scipy version.
  out["geometric_mean_R1-R5-R10"] = (
      float(np.exp(np.mean(np.log(recalls)))) if recalls.min() > 0 else 0.0)
  out["num_queries"] = float(num)
  return out


def _compute_dtype(dtype: Any) -> np.dtype:
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"similarities must be floating point, got dtype {dtype}")
  # float64/int64 become 32-bit unless jax_enable_x64; we convert on the host ourselves so the
  # ground truth and the chunks go through the same (elementwise, deterministic) conversion.
  return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


# Similarities per kernel call (rows x N_v; 4 MiB in float32). Measured on the 2-core dev CPU
# at N_v = 2,990: 128-512 rows per block are within noise of each other, 2,048 rows ~1.5x
# slower (the block no longer stays in cache between the row and the column pass); fewer
# entries per call leave small matrices dominated by the per-call overhead.
_BLOCK_ENTRIES = 2**20


def _encoded_counts(greater: jax.Array, equal: jax.Array, axis: int) -> tuple[jax.Array,
                                                                            jax.Array]:
  """(#greater, #equal) along `axis` of two disjoint boolean arrays, as int32, in ONE sum.

  Each entry is encoded as 1 (greater), m (equal) or 0 with m a power of two > the axis
  length n, so sum = #greater + m * #equal is decoded exactly with a mask and a shift. One
  plain sum is what XLA:CPU reduces fastest; two sums (or a variadic reduce) over the same
  comparisons were 2-4x slower. float32 holds the code exactly while n * m <= 2^24 (n < 4,096)
  and vectorises best on CPUs without AVX2; int32 up to n * m < 2^31; beyond that two sums.
  """
  n = greater.shape[axis]
  m = 1 << n.bit_length()
  if n * m > 2**31 - 1:
    return (jnp.sum(greater, axis, dtype=jnp.int32), jnp.sum(equal, axis, dtype=jnp.int32))
  if n * m <= 2**24:
    code = jnp.where(greater, jnp.float32(1), jnp.where(equal, jnp.float32(m), 0))
    # The sum as a product with ones: XLA:CPU then writes the codes with a (multi-threaded)
    # elementwise loop and sums them with the matmul library, 1.5-2x faster than its fused
    # reduction of the same codes (measured). Exact: every partial sum is an integer < 2^24.
    ones = jnp.ones((n,), jnp.float32)
    code = (jnp.matmul(code, ones, precision=jax.lax.Precision.HIGHEST) if axis == 1 else
            jnp.matmul(ones, code, precision=jax.lax.Precision.HIGHEST))
  else:
    code = jnp.sum(jnp.where(greater, 1, jnp.where(equal, m, 0)), axis, dtype=jnp.int32)
  code = code.astype(jnp.int32)
  return code & (m - 1), code >> (m.bit_length() - 1)


def _valid_rows(start: jax.Array, num_rows: jax.Array, mask_flat: jax.Array,
                chunk: int) -> jax.Array:
  # mask_flat carries `chunk` False padding entries, so the slice is never clamped.
  offsets = jnp.arange(chunk, dtype=jnp.int32)
  return (offsets < num_rows) & jax.lax.dynamic_slice(mask_flat, (start,), (chunk,))


def _block_counts(sims: jax.Array, start: jax.Array, num_rows: jax.Array, gt_flat: jax.Array,
                  mask_flat: jax.Array, best: jax.Array, v2t: jax.Array, mismatch: jax.Array,
                  captions_per_video: int):
  """t2v and v2t tie counts of the query rows [start, start + num_rows) in one block.

  Args:
    sims: [C, N_v] similarities; rows >= num_rows are padding.
    start: scalar int32, index of the block's first query row.
    num_rows: scalar int32, number of real rows in the block.
    gt_flat: [N_q + C] own-video similarity of every caption (padded).
    mask_flat: [N_q + C] caption validity (False padded).
    best: [N_v] highest own-video similarity among each video's valid captions.
    v2t: [2, N_v] int32 running counts of valid captions scoring >, == `best`.
    mismatch: scalar int32 running count of valid rows whose own-video score differs from
      gt_flat.
    captions_per_video: K.

  Returns:
    t2v: [2, C] int32, per row the number of videos scoring >, == its own video; the updated
    v2t and mismatch.
  """
  chunk, num_videos = sims.shape
  rows = start + jnp.arange(chunk, dtype=jnp.int32)
  gt_video = jnp.minimum(rows // captions_per_video, num_videos - 1)
  own = jnp.take_along_axis(sims, gt_video[:, None], axis=1)
  # t2v: every video competes, whatever its captions' masks.
  t2v = jnp.stack(_encoded_counts(sims > own, sims == own, 1))
  # The streaming API takes the ground truth separately; if it is not bit-identical to the
  # matrix entries, the tie counts are meaningless (NaNs also land here).
  valid = _valid_rows(start, num_rows, mask_flat, chunk)
  expected = jax.lax.dynamic_slice(gt_flat, (start,), (chunk,))
  mismatch = mismatch + jnp.sum(valid & (own[:, 0] != expected), dtype=jnp.int32)
  # v2t: only valid captions compete (missing ones sit at distance 1e8, behind everything).
  # One threshold per video suffices: the video's rank is the min over its captions' ranks,
  # and the averaged rank strictly decreases as the caption's score increases (a caption with
  # score s < s* is beaten by all captions scoring >= s*), so the min is attained by the
  # caption with the highest score `best`. This needs N_v instead of N_v * K comparisons/row.
  valid = valid[:, None]
  v2t = v2t + jnp.stack(_encoded_counts((sims > best) & valid, (sims == best) & valid, 0))
  return t2v, v2t, mismatch


@functools.partial(jax.jit, static_argnames=("chunk", "num_videos", "captions_per_video"))
def _window_counts(window: jax.Array, shift: jax.Array, *args, chunk: int, num_videos: int,
                   captions_per_video: int):
  """`_block_counts` of the [C, N_v] block at `shift` in a flat window
  (`chunking.host_row_windows`): a view of the caller's memory or a padded copy."""
  sims = chunking.block_from_window(window, shift, chunk, num_videos)
  return _block_counts(sims, *args, captions_per_video=captions_per_video)


class RetrievalAccumulator:
  """Streams query-row chunks of the similarity matrix and computes t2v and v2t metrics.

  Usage, when the [N_q, N_v] matrix is produced in pieces (e.g. one text batch at a time):

    acc = RetrievalAccumulator(gt_sims, query_mask)
    for start, chunk in pieces:        # chunk: [q, N_v] = sims[start:start + q]
      acc.update(start, chunk)
    metrics = acc.result()             # {"t2v": {...}, "v2t": {...}}

  Every query row must be passed exactly once, in any order. Each update is split into pieces
  of at most `query_chunk` rows and padded to exactly `query_chunk` rows, so the jitted kernels
  compile once; set `query_chunk` to the streaming batch size to avoid padding waste.

  Args:
    gt_sims: [N_v, K] own-video similarity of each caption, gt_sims[i, k] = sims[i * K + k, i].
      Must be bit-identical to the entries later passed to `update` (`result` checks).
    query_mask: [N_v, K] bool, False for caption slots that do not exist; None = all exist.
    query_chunk: rows per kernel call; extra memory is O(query_chunk * N_v).
  """

  def __init__(self, gt_sims: Any, query_mask: Any = None, *, query_chunk: int = 2048):
    gt = np.asarray(gt_sims)
    if gt.ndim != 2 or gt.size == 0:
      raise ValueError(f"gt_sims must be a non-empty [N_v, K] matrix, got shape {gt.shape}")
    num_videos, k = gt.shape
    if query_mask is None:
      mask = np.ones((num_videos, k), dtype=bool)
    else:
      mask = np.asarray(query_mask).astype(bool)
      if mask.shape != (num_videos, k):
        raise ValueError(f"query_mask has shape {mask.shape}, expected [N_v, K] = "
                         f"{(num_videos, k)}")
    if not mask.any():
      raise ValueError("query_mask marks no caption as valid")
    if num_videos >= 2**24:
      raise ValueError(f"N_v={num_videos} too large: t2v counts are summed in float32")
    if query_chunk < 1:
      raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")

    self._dtype = _compute_dtype(gt.dtype)
    gt = gt.astype(self._dtype)
    self._num_videos, self._k = num_videos, k
    self._num_queries = num_videos * k
    self._chunk = min(query_chunk, self._num_queries)
    self._mask = mask

    self._block = min(max(8, _BLOCK_ENTRIES // num_videos // 8 * 8), self._chunk)
    pad = self._block
    self._gt_flat = jnp.asarray(np.concatenate([gt.reshape(-1), np.zeros(pad, self._dtype)]))
    self._mask_flat = jnp.asarray(np.concatenate([mask.reshape(-1), np.zeros(pad, bool)]))
    self._has_caption = mask.any(axis=1)
    # Videos without captions get any threshold; their rank is set to inf in result().
    filled = np.where(mask, gt, gt[mask].min())
    self._best = jnp.asarray(filled.max(axis=1))

    self._seen = np.zeros(self._num_queries, dtype=bool)
    self._t2v_parts: list[tuple[int, int, jax.Array]] = []
    self._v2t = jnp.zeros((2, num_videos), jnp.int32)  # (#greater, #equal) per video
    self._mismatch = jnp.zeros((), jnp.int32)

  @property
  def num_queries(self) -> int:
    """N_q = N_v * K, the number of caption rows (valid or not)."""
    return self._num_queries

  @property
  def query_chunk(self) -> int:
    """Rows per kernel call (padded chunk size)."""
    return self._chunk

  def update(self, query_start: int, sims_chunk: Any) -> None:
    """Adds rows [query_start, query_start + q) of the similarity matrix.

    Args:
      query_start: index of the chunk's first caption row.
      sims_chunk: [q, N_v] similarities (NumPy or JAX), compared in its dtype as converted by
        JAX's canonicalisation (see module docstring); same dtype as `gt_sims` expected.
    """
    shape = tuple(sims_chunk.shape)
    if len(shape) != 2 or shape[1] != self._num_videos:
      raise ValueError(f"sims_chunk must be [q, N_v={self._num_videos}], got shape {shape}")
    stop = query_start + shape[0]
    if query_start < 0 or stop > self._num_queries:
      raise ValueError(f"rows [{query_start}, {stop}) outside [0, N_q={self._num_queries})")
    if self._seen[query_start:stop].any():
      raise ValueError(f"rows [{query_start}, {stop}) overlap rows already added")
    self._seen[query_start:stop] = True
    if isinstance(sims_chunk, jax.Array):
      for lo in range(query_start, stop, self._chunk):  # Device slices: one piece at a time.
        hi = min(lo + self._chunk, stop)
        self._add_device_rows(lo, sims_chunk[lo - query_start:hi - query_start])
    else:
      self._add_host_rows(query_start, np.asarray(sims_chunk))
    # The kernels may read the caller's own buffer (zero-copy): finish before returning, so
    # the caller is free to overwrite it.
    jax.block_until_ready((self._v2t, self._mismatch))

  def _kernel_args(self, start: int, num_rows: int) -> tuple[Any, ...]:
    return (np.int32(start), np.int32(num_rows), self._gt_flat, self._mask_flat, self._best,
            self._v2t, self._mismatch)

  def _record(self, start: int, num_rows: int, outputs: tuple[jax.Array, ...]) -> None:
    # t2v counts stay on device until result(): no host sync per block.
    t2v, self._v2t, self._mismatch = outputs
    self._t2v_parts.append((start, num_rows, t2v))

  def _add_window(self, start: int, rows: int, window: Any, shift: int) -> None:
    self._record(start, rows, _window_counts(
        jax.device_put(window), np.int32(shift), *self._kernel_args(start, rows),
        chunk=self._block, num_videos=self._num_videos, captions_per_video=self._k))

  def _add_device_rows(self, start: int, piece: jax.Array) -> None:
    size = chunking.window_size(self._block, self._num_videos, self._dtype.itemsize)
    for lo in range(0, piece.shape[0], self._block):
      part = piece[lo:lo + self._block].astype(self._dtype).reshape(-1)
      self._add_window(start + lo, min(self._block, piece.shape[0] - lo),
                       jnp.pad(part, (0, size - part.shape[0])), 0)

  def _add_host_rows(self, start: int, piece: np.ndarray) -> None:
    """Host rows, block by block, read in place where possible (`host_row_windows`)."""
    for lo, rows, window, shift in chunking.host_row_windows(piece, self._block, self._dtype):
      self._add_window(start + lo, rows, window, shift)

  def _check_complete(self) -> None:
    if not self._seen.all():
      missing = int((~self._seen).sum())
      raise ValueError(f"{missing} of {self._num_queries} query rows were never added")
    if int(self._mismatch):
      raise ValueError(f"{int(self._mismatch)} valid captions have an own-video similarity "
                       "different from gt_sims (or NaN); gt_sims must hold exactly "
                       "sims[i * K + k, i] in the same dtype")

  def _all_t2v_ranks(self) -> np.ndarray:
    """[N_q] t2v rank of every caption row, valid or not."""
    t2v_gt = np.zeros(self._num_queries, np.int64)
    t2v_eq = np.zeros(self._num_queries, np.int64)
    for start, num_rows, counts in self._t2v_parts:
      counts = np.asarray(counts)
      t2v_gt[start:start + num_rows] = counts[0, :num_rows]
      t2v_eq[start:start + num_rows] = counts[1, :num_rows]
    # Mean of the tied positions count_gt, ..., count_gt + count_eq - 1 (count_eq >= 1: the
    # ground truth ties with itself).
    return t2v_gt + (t2v_eq - 1) / 2

  def caption_ranks(self) -> np.ndarray:
    """[N_v, K] 0-based t2v rank of each caption's own video (tie-averaged, as `result`);
    inf for caption slots that do not exist."""
    self._check_complete()
    ranks = self._all_t2v_ranks().reshape(self._num_videos, self._k)
    return np.where(self._mask, ranks, np.inf)

  def ranks(self) -> dict[str, np.ndarray]:
    """{"t2v": [valid captions], "v2t": [N_v]} 0-based tie-averaged ranks of the queries.

    t2v has one query per valid caption; v2t one per video, ranked by its best caption.
    """
    self._check_complete()
    # Masked queries are dropped after ranking, as officially.
    t2v_ranks = self._all_t2v_ranks()[self._mask.reshape(-1)]
    v2t = np.asarray(self._v2t).astype(np.int64)
    v2t_ranks = v2t[0] + (v2t[1] - 1) / 2
    # The official loop leaves min_rank = inf for a video with no valid caption.
    v2t_ranks = np.where(self._has_caption, v2t_ranks, np.inf)
    return {"t2v": t2v_ranks, "v2t": v2t_ranks}

  def result(self) -> dict[str, Metrics]:
    """Metrics for both directions: {"t2v": metrics, "v2t": metrics} (see metrics_from_ranks)."""
    return {d: metrics_from_ranks(r) for d, r in self.ranks().items()}


def _gather_gt(sims: Any, k: int, query_chunk: int) -> np.ndarray:
  """[N_v, K] own-video similarities gt[i, j] = sims[i * K + j, i], without fancy indexing.

  Copies only the diagonal blocks [B * K, B] to the host, with basic slices that work for NumPy
  and for JAX arrays, also ones sharded over an Auto mesh.
  """
  num_videos = sims.shape[1]
  block = max(1, query_chunk // k)
  parts = []
  for v0 in range(0, num_videos, block):
    v1 = min(v0 + block, num_videos)
    tile = np.asarray(sims[v0 * k:v1 * k, v0:v1])
    rows = np.arange((v1 - v0) * k)
    parts.append(tile[rows, rows // k])
  return np.concatenate(parts).reshape(num_videos, k)


def retrieval_metrics(sims: Any, query_mask: Any = None, *,
                      query_chunk: int = 2048) -> dict[str, Metrics]:
  """Text-to-video and video-to-text retrieval metrics of a similarity matrix.

  Args:
    sims: [N_q, N_v] similarities (NumPy or JAX array), N_q = N_v * K, rows video-major:
      row q is a caption of video q // K. JAX arrays may be on one device or sharded over an
      Auto mesh (Explicit-sharded arrays cannot be sliced unevenly: reshard them first).
    query_mask: [N_v, K] bool, False for caption slots that do not exist (their rows are
      ignored); None = all exist.
    query_chunk: query rows processed per jitted call; bounds the extra memory to
      O(query_chunk * N_v).

  Returns:
    {"t2v": metrics, "v2t": metrics}, each as returned by `metrics_from_ranks`.
  """
  shape = tuple(sims.shape)
  if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
    raise ValueError(f"sims must be a non-empty [N_q, N_v] matrix, got shape {shape}")
  num_queries, num_videos = shape
  if num_queries % num_videos:
    raise ValueError(f"N_q={num_queries} is not a multiple of N_v={num_videos}: sims rows "
                     "must be K captions per video, video-major")
  k = num_queries // num_videos
  if query_mask is not None and tuple(np.shape(query_mask)) != (num_videos, k):
    raise ValueError(f"query_mask has shape {tuple(np.shape(query_mask))}, expected "
                     f"[N_v, K] = {(num_videos, k)} for sims of shape {shape}")
  if not isinstance(sims, jax.Array):
    sims = np.asarray(sims)
  acc = RetrievalAccumulator(_gather_gt(sims, k, query_chunk), query_mask,
                             query_chunk=query_chunk)
  # Host memory goes in whole (read in place, block by block; at most one block is copied at a
  # time); device arrays one query_chunk slice at a time.
  acc.update(0, sims)
  return acc.result()


# ---- the "retrieval" evaluator (config.evals.<name>.type = "retrieval") ----------------------

COLUMNS = ("R1", "R5", "R10", "R50", "MdR", "MnR", "geometric_mean_R1-R5-R10")
HEADERS = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "Geom")


def recall_curve(ranks: np.ndarray, max_k: int) -> list[float]:
  """R@K in percent for K = 1..max_k, with the official rules (R@1 counts rank == 0, R@K for
  K > 1 counts rank < K), so the curve passes through the table's R@1/5/10/50."""
  ranks = np.asarray(ranks, np.float64)
  curve = [100 * float(np.sum(ranks == 0)) / ranks.size]
  curve += [100 * float(np.sum(ranks < k)) / ranks.size for k in range(2, max_k + 1)]
  return [round(c, 3) for c in curve]


class Evaluator:
  """Text-to-video and video-to-text retrieval metrics of one split (CE's metric.py).

  model: has `accumulate(split, *, query_chunk, transform=None) -> RetrievalAccumulator`
    (e.g. `vtd.teachtext.evaluate.Scorer`).
  context: has `split(name)` (e.g. a `RetrievalDataset`).
  Curves: R@K for K = 1..`curve_max_k` per direction, for `vtd.plots.recall_at_k`.
  """

  def __init__(self, split: str = "test", directions: tuple[str, ...] = ("t2v", "v2t"),
               query_chunk: int = 2048, curve_max_k: int = 100):
    unknown = [d for d in directions if d not in ("t2v", "v2t")]
    if unknown:
      raise TypeError(f"directions must be t2v and/or v2t, got {unknown}")
    self.split, self.directions = split, tuple(directions)
    self.query_chunk, self.curve_max_k = query_chunk, curve_max_k
    self.columns = tuple(f"{d}/{c}" for d in self.directions for c in COLUMNS)
    self.headers = tuple(f"{d} {h}" for d in self.directions for h in HEADERS)

  def run(self, model: Any, context: Any) -> common.EvalResult:
    acc = model.accumulate(context.split(self.split), query_chunk=self.query_chunk)
    return from_ranks(acc.ranks(), self.directions, self.curve_max_k)


def from_ranks(ranks: dict[str, np.ndarray], directions: Sequence[str], curve_max_k: int
               ) -> common.EvalResult:
  """Flat metrics ("t2v/R1", ...) and R@K curves of per-direction ranks."""
  metrics = {f"{d}/{k}": v for d in directions for k, v in metrics_from_ranks(ranks[d]).items()}
  curves = {d: recall_curve(ranks[d], curve_max_k) for d in directions}
  return common.EvalResult(metrics=metrics, curves={"recall_at_k": curves})
