"""QB-Norm with Dynamic Inverted Softmax (DIS) for text-to-video retrieval inference.

Bogolin et al., "Cross Modal Retrieval with Querybank Normalisation", CVPR 2022; semantics of
`qb_norm` in `dynamic_inverted_softmax.py` of the official code (ioanacroi/qb-norm):

  A          = union over querybank rows i of the top-k gallery indices of S_bank[i]
  norm[j]    = sum_i exp(beta * S_bank[i, j])                       (S_bank: [M, N])
  out[q, :]  = exp(beta * S_test[q, :]) / norm   if argmax_j S_test[q, j] in A
             = S_test[q, :]                      otherwise          (S_test: [Q, N])

The querybank is typically the training captions, the gallery the N test videos. Rows end up
on different scales, so the result is only meaningful for ranking the videos of one query
(t2v), never for comparing rows/columns (v2t).

Decisions:
* Log space. Gated rows are returned as beta * S_test - logsumexp_i(beta * S_bank[:, j]), the
  log of the official value. log is monotone, so within a row the ranking is exactly the
  official one, but nothing overflows: the official float32 exp(beta * s) is inf for
  beta * s > 88.7 (e.g. beta = 200), after which its rankings degenerate. Ungated rows keep the
  raw similarities, as officially.
* Streaming. The bank is consumed in blocks of `bank_chunk` rows (an array, an iterable of
  [m_i, N] pieces, or a callable producing rows [start, stop)), keeping a running per-column,
  max-shifted logsumexp and a running `active` mask [N]; the [M, N] matrix never has to exist.
  Test queries are scored `query_chunk` rows at a time. Blocks are zero-padded to a fixed shape
  (one compilation) and padding rows are masked out of both the logsumexp and the top-k. The
  default chunks (512 bank, 256 test rows: ~6 and ~3 MB at N = 3,000) were the fastest measured
  on CPU, where cache-sized blocks transfer and reduce faster than large ones; on an
  accelerator larger chunks amortise dispatch better.
* Ties. For k = 1 the activation set holds every column that is a maximum of some bank row,
  and a query is gated when any of its maxima is in the set; for k > 1 `jax.lax.top_k`
  (lowest index first among equal values). The official code uses NumPy's default argsort,
  which is not stable, so on exact ties it may pick either; continuous similarities do not
  tie. The gate looks at argmax S_test rather than the official argmax exp(beta * S_test): the
  same unless exp over/underflows, creating ties that only the official code has.
* Precision. Everything is float32 (inputs are converted per block), with the official
  x = fl32(beta * S) as the exponent. The normaliser is kept as a float32 pair (TwoSum over
  blocks, log taken on the mantissa), accurate to ~5e-8 (the exp's own rounding); the
  official float32 column sum of M exponentials is off by up to ~1e-5 relative for M = 130k.
  `dis_scores` values are float32 log-space numbers of magnitude ~10-30, so they resolve
  ~1e-6: ranking them creates ties the official linear values do not have; `dis_t2v_ranks`
  ranks with exact comparisons instead (measured in `bench/qbnorm_dis.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from vtd import chunking
from vtd.evaluators import common
from vtd.evaluators import retrieval

BankSims = Any  # [M, N] array | iterable of [m_i, N] arrays | callable (start, stop) -> [m, N]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["log_norm", "active", "log_norm_lo"],
                   meta_fields=["beta", "k", "num_bank"])
@dataclasses.dataclass(frozen=True)
class QueryBankStats:
  """What DIS needs from the querybank (a pytree).

  Attributes:
    log_norm: [N] float32, logsumexp_i(beta * S_bank[i, j]) = log of the official
      normalizing_sum.
    active: [N] bool, the activation set A (gallery items in some bank row's top-k).
    beta: inverse temperature the stats were computed with.
    k: top-k used for the activation set.
    num_bank: M, number of querybank rows consumed.
    log_norm_lo: [N] float32, the rounding error of log_norm: log_norm + log_norm_lo is the
      log-normaliser to ~1e-8 (a float32 pair), which `dis_t2v_ranks` compares with.
  """
  log_norm: jax.Array
  active: jax.Array
  beta: float
  k: int
  num_bank: int
  log_norm_lo: jax.Array | None = None


def _row_bias(num_rows: jax.Array, chunk: int) -> jax.Array:
  """[chunk, 1]: 0 for the real rows, -inf for padding (exp(-inf) = 0, never a max)."""
  return jnp.where(jnp.arange(chunk) < num_rows, 0.0, -jnp.inf)[:, None]


# x = fl32(beta * S), the official float32 product, as a kernel of its own so that it is
# rounded in memory: inside one kernel XLA:CPU contracts beta * S - c into a fused
# multiply-add (even across an optimization barrier), which is not fl32(beta * S) - c and
# breaks exact ties in the ranks (`dis_t2v_ranks`).
_scale = jax.jit(lambda sims, beta: beta * sims)


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """a + b = s + e exactly (Knuth's TwoSum; XLA:CPU does not reassociate float adds)."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


@functools.partial(jax.jit, static_argnames=("rows", "cols", "k"))
def _bank_update(window: jax.Array, shift: jax.Array, num_rows: jax.Array, beta: jax.Array,
                 run_max: jax.Array, run_sum: jax.Array, run_err: jax.Array,
                 active: jax.Array, *, rows: int, cols: int, k: int):
  """Adds one bank block ([rows, cols] at `shift` in a `chunking.host_row_windows` window) to
  the running column max, the running sum (a float32 pair: logsumexp = max + log(sum + err))
  and the activation set.

  One kernel, two passes over the block: the column max of S itself (fl32(beta * .) is
  monotone, so beta * max S is the max of the official x = fl32(beta * S)), then the
  exponentials. (Taking the max of beta * S instead made XLA:CPU materialise the product.)
  """
  block = chunking.block_from_window(window, shift, rows, cols)
  real = (jnp.arange(rows) < num_rows)[:, None]
  bias = jnp.where(real, 0.0, -jnp.inf)  # padding rows: exp(-inf) = 0, never a max
  new_max = jnp.maximum(run_max, beta * jnp.max(block + bias, axis=0))
  # A column that is still all -inf would give inf - inf = nan; any finite shift works there.
  shift_to = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
  # XLA:CPU's own reduction over the block's rows is accurate enough (the normaliser's
  # measured error, ~5e-8, is the exp's); the blocks are accumulated exactly (TwoSum).
  part = jnp.sum(jnp.exp(beta * block + bias - shift_to), axis=0)
  scale = jnp.exp(jnp.where(jnp.isfinite(run_max), run_max, shift_to) - shift_to)
  total, err = _two_sum(run_sum * scale, part)
  run_err = run_err * scale + err
  if k == 1:
    # The columns holding a row maximum, as a column-wise max of hits: XLA:CPU's row
    # argmax / top_k is ~4x slower. (A row with tied maxima marks all of them.)
    hit = jnp.where(real & (block == jnp.max(block, axis=1, keepdims=True)), 1.0, 0.0)
    return new_max, total, run_err, active | (jnp.max(hit, axis=0) > 0)
  _, top = jax.lax.top_k(block, k)  # [rows, k]; beta > 0 so S and beta * S rank alike
  top = jnp.where(real, top, cols)  # padding rows scatter to index N: dropped
  return new_max, total, run_err, active.at[top.reshape(-1)].set(True, mode="drop")


_LN2_HI = np.float32(0.693145751953125)        # ln 2 with its last 12 mantissa bits zero,
_LN2_LO = np.float32(1.4286068203094173e-06)   # so e * _LN2_HI is exact for |e| < 2^12


@jax.jit
def _log_norm(run_max: jax.Array, run_sum: jax.Array, run_err: jax.Array):
  """log-normaliser run_max + log(sum + err) as a float32 pair (hi, lo), ~1e-8 accurate:
  log(x) = e ln 2 + log(m) with m in [0.5, 1), so float32 log only sees |log m| < 0.7."""
  mant, expo = jnp.frexp(run_sum)
  expo = expo.astype(jnp.float32)
  hi, lo = _two_sum(run_max, expo * _LN2_HI)
  hi, e = _two_sum(hi, jnp.log(mant))
  lo = lo + e + expo * _LN2_LO + run_err / run_sum
  return _two_sum(hi, lo)


def _gate(test: jax.Array, active: jax.Array) -> jax.Array:
  """[Q] bool: the row's best video is in the activation set (a row max + a masked any;
  XLA:CPU's row argmax / top_k is ~2x slower). Tied maxima: gated if any of them is active."""
  return jnp.any((test == jnp.max(test, axis=1, keepdims=True)) & active, axis=1)


def _dis_body(test, log_norm, log_norm_lo, active, beta):
  gated = _gate(test, active)
  return jnp.where(gated[:, None], (beta * test - log_norm) - log_norm_lo, test)


_dis_kernel = jax.jit(_dis_body)


@functools.partial(jax.jit, static_argnames=("rows", "cols"))
def _dis_window_kernel(window, shift, log_norm, log_norm_lo, active, beta, *, rows, cols):
  """`_dis_kernel` of the block in a `chunking.host_row_windows` window (read in place)."""
  return _dis_body(chunking.block_from_window(window, shift, rows, cols), log_norm,
                   log_norm_lo, active, beta)


def _check_beta_k(beta: float, k: int) -> None:
  if not beta > 0:
    raise ValueError(f"beta must be > 0, got {beta}")
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be an integer >= 1, got {k!r}")


def _pieces(bank_sims: BankSims, bank_chunk: int, num_bank: int | None) -> Iterator[Any]:
  """The bank as a stream of [m, N] row blocks."""
  if callable(bank_sims):
    if num_bank is None:
      raise ValueError("num_bank (M) is required when bank_sims is a callable")
    for start in range(0, num_bank, bank_chunk):
      stop = min(start + bank_chunk, num_bank)
      piece = bank_sims(start, stop)
      if piece.shape[0] != stop - start:
        raise ValueError(f"bank_sims({start}, {stop}) returned shape {piece.shape}, expected "
                         f"{stop - start} rows")
      yield piece
  elif num_bank is not None:
    raise ValueError("num_bank is only for a callable bank_sims (M is known otherwise)")
  elif hasattr(bank_sims, "shape"):
    for start in range(0, bank_sims.shape[0], bank_chunk):
      yield bank_sims[start:start + bank_chunk]
  else:
    yield from bank_sims


def _blocks(pieces: Iterable[Any], chunk: int) -> Iterator[tuple[Any, int]]:
  """Regroups pieces into (block [chunk, N] float32, number of real rows), zero-padded."""
  pending: list[Any] = []
  count = 0

  def flush():
    parts = [p.astype(jnp.float32) if isinstance(p, jax.Array) else np.asarray(p, np.float32)
             for p in pending]
    xp = jnp if any(isinstance(p, jax.Array) for p in parts) else np
    block = parts[0] if len(parts) == 1 else xp.concatenate(parts)
    if count < chunk:
      block = xp.pad(block, ((0, chunk - count), (0, 0)))
    return block, count

  for piece in pieces:
    if np.ndim(piece) != 2:
      raise ValueError(f"similarities must be [rows, N] blocks, got shape {np.shape(piece)}")
    while piece.shape[0]:
      take = min(chunk - count, piece.shape[0])
      pending.append(piece[:take])
      piece, count = piece[take:], count + take
      if count == chunk:
        yield flush()
        pending, count = [], 0
  if count:
    yield flush()


def querybank_stats(bank_sims: BankSims, *, beta: float = 20.0, k: int = 1,
                    bank_chunk: int = 512, num_bank: int | None = None) -> QueryBankStats:
  """Streams the querybank similarities into the DIS statistics.

  Args:
    bank_sims: S_bank as an [M, N] array (NumPy or JAX, sliced `bank_chunk` rows at a time),
      an iterable of [m_i, N] row pieces, or a callable (start, stop) -> [stop - start, N].
    beta: inverse temperature (> 0).
    k: gallery items per bank row that enter the activation set (1 <= k <= N).
    bank_chunk: rows per jitted call; extra memory is O(bank_chunk * N).
    num_bank: M; only (and then necessarily) given for a callable.

  Returns:
    QueryBankStats with log_norm [N], active [N].
  """
  _check_beta_k(beta, k)
  if bank_chunk < 1:
    raise ValueError(f"bank_chunk must be >= 1, got {bank_chunk}")
  state, num_gallery, total = None, None, 0
  beta_arr = jnp.float32(beta)
  if (not callable(bank_sims) and num_bank is None and isinstance(bank_sims, np.ndarray)
      and bank_sims.ndim == 2 and bank_sims.shape[0] > 0):
    # A host matrix is read in place (aligned zero-copy windows), block by block.
    chunk = min(bank_chunk, bank_sims.shape[0])
    windows = ((w, shift, rows, bank_sims.shape[1]) for _, rows, w, shift in
               chunking.host_row_windows(bank_sims, chunk, np.float32))
  else:
    if hasattr(bank_sims, "shape") and not callable(bank_sims) and bank_sims.shape[0] > 0:
      bank_chunk = min(bank_chunk, bank_sims.shape[0])
    chunk = bank_chunk

    def padded(blocks):
      for block, rows in blocks:
        flat = block.reshape(-1)
        size = chunking.window_size(block.shape[0], block.shape[1], 4)
        xp = jnp if isinstance(flat, jax.Array) else np
        yield xp.pad(flat, (0, size - flat.shape[0])), 0, rows, block.shape[1]
    windows = padded(_blocks(_pieces(bank_sims, chunk, num_bank), chunk))
  for window, shift, rows, cols in windows:
    if state is None:
      num_gallery = cols
      if k > num_gallery:
        raise ValueError(f"k={k} exceeds the N={num_gallery} gallery items")
      state = (jnp.full(num_gallery, -jnp.inf, jnp.float32), jnp.zeros(num_gallery, jnp.float32),
               jnp.zeros(num_gallery, jnp.float32), jnp.zeros(num_gallery, bool))
    elif cols != num_gallery:
      raise ValueError(f"bank pieces disagree on N: {cols} after {num_gallery}")
    state = _bank_update(jax.device_put(window), np.int32(shift), np.int32(rows), beta_arr,
                         *state, rows=chunk, cols=num_gallery, k=k)
    total += rows
  if state is None:
    raise ValueError("the querybank is empty (M = 0)")
  run_max, run_sum, run_err, active = state
  log_norm, log_norm_lo = _log_norm(run_max, run_sum, run_err)
  return QueryBankStats(log_norm=log_norm, active=active, beta=float(beta), k=k,
                        num_bank=total, log_norm_lo=log_norm_lo)


def _check_test(shape: tuple[int, ...], stats: QueryBankStats) -> None:
  num_gallery = stats.log_norm.shape[0]
  if len(shape) != 2 or shape[1] != num_gallery:
    raise ValueError(f"test_sims has shape {shape} but the querybank is "
                     f"({stats.num_bank}, {num_gallery}) = [M, N]: expected [Q, {num_gallery}]")


def dis_scores(test_sims: Any, stats: QueryBankStats) -> jax.Array:
  """DIS scores of test queries, in log space (see module docstring).

  Jitted; each new Q compiles once, so stream fixed-size chunks (as `iter_dis_scores` does).

  Args:
    test_sims: [Q, N] S_test of a chunk of test queries against the gallery.
    stats: from `querybank_stats` (its beta is used).

  Returns:
    [Q, N] float32: beta * S_test - log_norm for gated rows, S_test (float32) otherwise.
  """
  _check_test(tuple(test_sims.shape), stats)
  lo = jnp.zeros_like(stats.log_norm) if stats.log_norm_lo is None else stats.log_norm_lo
  return _dis_kernel(jnp.asarray(test_sims, jnp.float32), stats.log_norm, lo, stats.active,
                     jnp.float32(stats.beta))


def iter_dis_scores(test_sims: Any, stats: QueryBankStats, *,
                    query_chunk: int = 256) -> Iterator[tuple[int, np.ndarray]]:
  """Yields (start, scores [q, N] NumPy float32) for consecutive row chunks of test_sims [Q, N].

  Chunks are padded to `query_chunk` rows for the kernel (one compilation); extra memory is
  O(query_chunk * N), so the scores can be consumed (e.g. by RetrievalAccumulator) piecewise.
  """
  _check_test(tuple(test_sims.shape), stats)
  if query_chunk < 1:
    raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
  num_queries, num_gallery = test_sims.shape
  chunk = min(query_chunk, num_queries)
  if not isinstance(test_sims, jax.Array):
    # Host rows are read in place (aligned zero-copy windows), not copied chunk by chunk.
    lo = jnp.zeros_like(stats.log_norm) if stats.log_norm_lo is None else stats.log_norm_lo
    beta = jnp.float32(stats.beta)
    for start, rows, window, shift in chunking.host_row_windows(np.asarray(test_sims), chunk,
                                                                np.float32):
      yield start, np.asarray(_dis_window_kernel(
          jax.device_put(window), np.int32(shift), stats.log_norm, lo, stats.active, beta,
          rows=chunk, cols=num_gallery))[:rows]
    return
  pieces = (test_sims[s:s + chunk] for s in range(0, num_queries, chunk))
  for start, (block, rows) in zip(range(0, num_queries, chunk), _blocks(pieces, chunk)):
    yield start, np.asarray(dis_scores(block, stats))[:rows]


def dis_rerank(test_sims: Any, bank_sims: BankSims, *, beta: float = 20.0, k: int = 1,
               bank_chunk: int = 512, query_chunk: int = 256, num_bank: int | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
  """QB-Norm + DIS in one call: `querybank_stats` then `iter_dis_scores`.

  Args:
    test_sims: [Q, N] S_test.
    bank_sims, beta, k, bank_chunk, num_bank: as for `querybank_stats`.
    query_chunk: test rows per jitted call.
    out: optional [Q, N] float32 NumPy array to write into; may be test_sims itself (each
      chunk is read before it is overwritten), which, like the official code, avoids a copy.

  Returns:
    [Q, N] float32 NumPy scores (`out` if given); rank each row, never columns.
  """
  shape = tuple(test_sims.shape)
  _check_beta_k(beta, k)
  if hasattr(bank_sims, "shape") and len(shape) == 2 and bank_sims.shape[-1] != shape[-1]:
    # Fail before streaming the whole bank.
    raise ValueError(f"test_sims has shape {shape} but bank_sims has shape "
                     f"{tuple(bank_sims.shape)}: both must be [*, N] over the same gallery")
  if out is None:
    out = np.empty(shape, np.float32)
  elif out.shape != shape or out.dtype != np.float32:
    raise ValueError(f"out must be float32 of shape {shape}, got {out.dtype} {out.shape}")
  stats = querybank_stats(bank_sims, beta=beta, k=k, bank_chunk=bank_chunk, num_bank=num_bank)
  for start, scores in iter_dis_scores(test_sims, stats, query_chunk=query_chunk):
    out[start:start + scores.shape[0]] = scores
  return out


@functools.partial(jax.jit, static_argnames=("captions_per_video",))
def _dis_rank_counts(test: jax.Array, x: jax.Array, start: jax.Array, log_norm: jax.Array,
                     log_norm_lo: jax.Array, active: jax.Array, beta: jax.Array, *,
                     captions_per_video: int):
  """Per row of a [C, N] chunk: #videos scoring >, == the own video under DIS, and the gate.

  Gated rows compare the official quantities exp(x_j) / norm_j with x = fl32(beta * S) (the
  official float32 product) exactly: x_j - l_j > x_g - l_g is evaluated as
  (x_j - x_g) - ((l_j - l_g) + (lo_j - lo_g)) with l + lo the float32-pair log-normaliser.
  Near a tie both differences are small and nearly equal, so every subtraction there is
  exact (Sterbenz) and the sign is the sign of the exact difference (up to the ~1e-8 of the
  normaliser). Ungated rows compare the raw similarities, as officially.
  """
  chunk, num_gallery = test.shape
  rows = start + jnp.arange(chunk)
  own = jnp.minimum(rows // captions_per_video, num_gallery - 1)[:, None]
  gated = _gate(test, active)
  del beta  # (x = fl32(beta * test), computed by `_scale`)
  lhs = x - jnp.take_along_axis(x, own, axis=1)
  rhs = (log_norm - log_norm[own]) + (log_norm_lo - log_norm_lo[own])
  delta = jnp.where(gated[:, None], lhs - rhs, test - jnp.take_along_axis(test, own, axis=1))
  greater, equal = retrieval._encoded_counts(delta > 0, delta == 0, 1)  # pylint: disable=protected-access
  return greater, equal, gated


def dis_t2v_ranks(test_sims: Any, stats: QueryBankStats, *, captions_per_video: int,
                  query_chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """t2v ranks of every query's own video after QB-Norm + DIS, with exact comparisons.

  The float32 log-space scores of `dis_scores` resolve values to ~1e-6 (their magnitude is
  ~10-30), coarser than the official float32 linear values (~6e-8 relative), so ranking them
  creates ties the official code does not have. This ranks with the comparison of
  `_dis_rank_counts` instead: exact for the official quantities with an exact normaliser.

  Args:
    test_sims: [Q, N] S_test, Q = N * K rows ordered video-major (row q is a caption of
      video q // K, as in `retrieval.retrieval_metrics`).
    stats: from `querybank_stats`.
    captions_per_video: K.
    query_chunk: rows per kernel call.

  Returns:
    (ranks [Q] float64, 0-based, ties averaged as the CE metrics do; gated [Q] bool).
  """
  _check_test(tuple(test_sims.shape), stats)
  num_queries = test_sims.shape[0]
  chunk = min(query_chunk, num_queries)
  lo = jnp.zeros_like(stats.log_norm) if stats.log_norm_lo is None else stats.log_norm_lo
  ranks, gates = np.empty(num_queries), np.empty(num_queries, bool)
  pieces = (test_sims[s:s + chunk] for s in range(0, num_queries, chunk))
  for start, (block, rows) in zip(range(0, num_queries, chunk), _blocks(pieces, chunk)):
    block = jax.device_put(block)
    beta = jnp.float32(stats.beta)
    greater, equal, gated = _dis_rank_counts(
        block, _scale(block, beta), np.int32(start), stats.log_norm, lo, stats.active, beta,
        captions_per_video=captions_per_video)
    ranks[start:start + rows] = (np.asarray(greater)[:rows]
                                 + (np.asarray(equal)[:rows] - 1) / 2)
    gates[start:start + rows] = np.asarray(gated)[:rows]
  return ranks, gates


# ---- the "qbnorm" evaluator (config.evals.<name>.type = "qbnorm") ----------------------------


class Evaluator:
  """t2v retrieval after QB-Norm with Dynamic Inverted Softmax (querybank = a split's captions).

  model: has `bank_similarities(bank, gallery) -> (fn(start, stop) -> [rows, N_v], num_bank)`
    and `accumulate(split, *, query_chunk, transform) -> RetrievalAccumulator`
    (e.g. `vtd.teachtext.evaluate.Scorer`).
  context: has `split(name)`.
  DIS rows live on different scales, so only t2v (per-query ranking) is meaningful.
  """

  def __init__(self, split: str = "test", bank: str = "train", beta: float = 20.0, k: int = 1,
               bank_chunk: int = 512, query_chunk: int = 2048, curve_max_k: int = 100):
    self.split, self.bank, self.beta, self.k = split, bank, beta, k
    self.bank_chunk, self.query_chunk, self.curve_max_k = bank_chunk, query_chunk, curve_max_k
    self.columns = tuple(f"t2v/{c}" for c in retrieval.COLUMNS)
    self.headers = tuple(f"t2v {h}" for h in retrieval.HEADERS)

  def run(self, model: Any, context: Any) -> common.EvalResult:
    gallery = context.split(self.split)
    bank_sims, num_bank = model.bank_similarities(context.split(self.bank), gallery)
    stats = querybank_stats(bank_sims, beta=self.beta, k=self.k, bank_chunk=self.bank_chunk,
                            num_bank=num_bank)
    acc = model.accumulate(gallery, query_chunk=self.query_chunk,
                           transform=lambda sims: dis_scores(sims, stats))
    result = retrieval.from_ranks({"t2v": acc.ranks()["t2v"]}, ("t2v",), self.curve_max_k)
    result.info["querybank_size"] = int(num_bank)
    return result
