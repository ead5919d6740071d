"""Tests for vtd.evaluators.retrieval against a literal port of the official CE procedure."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from vtd import chunking
from vtd.evaluators import retrieval
from vtd.evaluators.retrieval import RetrievalAccumulator, metrics_from_ranks, retrieval_metrics

KEYS = ("R1", "R5", "R10", "R50", "MdR", "MnR", "geometric_mean_R1-R5-R10", "num_queries")


# --- Brute-force reference: the official model/metric.py procedure, one row at a time. ---

def _averaged_rank(row_dists, gt_dist):
  order = np.argsort(row_dists, kind="stable")
  positions = np.nonzero(row_dists[order] == gt_dist)[0]
  return positions.mean()  # break_ties == "averaging"


def _ref_cols2metrics(cols, num_queries):
  m = {
      "R1": 100 * float(np.sum(cols == 0)) / num_queries,
      "R5": 100 * float(np.sum(cols < 5)) / num_queries,
      "R10": 100 * float(np.sum(cols < 10)) / num_queries,
      "R50": 100 * float(np.sum(cols < 50)) / num_queries,
      "MdR": np.median(cols) + 1,
      "MnR": np.mean(cols) + 1,
  }
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # log(0) when a recall is 0
    m["geometric_mean_R1-R5-R10"] = float(
        scipy.stats.mstats.gmean([m["R1"], m["R5"], m["R10"]]))
  m["num_queries"] = float(num_queries)
  return m


def reference(sims, query_mask=None):
  sims = np.asarray(sims)
  num_queries, num_videos = sims.shape
  k = num_queries // num_videos
  mask = np.ones((num_videos, k), bool) if query_mask is None else np.asarray(query_mask, bool)
  flat_mask = mask.reshape(-1)
  dists = -sims
  t2v = np.array([_averaged_rank(dists[q], dists[q, q // k]) for q in range(num_queries)])
  t2v = t2v[flat_mask]  # masked queries dropped after ranking
  v2t = []
  for i in range(num_videos):
    col = dists[:, i].copy()
    col[~flat_mask] = 1e8  # MISSING_VAL
    min_rank = np.inf
    for j in range(i * k, (i + 1) * k):
      if col[j] == 1e8:
        continue
      min_rank = min(min_rank, _averaged_rank(col, col[j]))
    v2t.append(min_rank)
  return {"t2v": _ref_cols2metrics(t2v, flat_mask.sum()),
          "v2t": _ref_cols2metrics(np.array(v2t), num_videos)}


def assert_metrics_equal(got, want):
  assert set(got) == {"t2v", "v2t"}
  for direction in ("t2v", "v2t"):
    assert tuple(got[direction]) == KEYS
    for key in KEYS:
      assert isinstance(got[direction][key], float), (direction, key)
      np.testing.assert_allclose(got[direction][key], want[direction][key], rtol=1e-12,
                                 err_msg=f"{direction} {key}")


def _random_mask(rng, num_videos, k, drop=0.3):
  mask = rng.random((num_videos, k)) > drop
  mask[0, 0] = True
  return mask


# --- Agreement with the reference. ---

@pytest.mark.parametrize("num_videos,k", [(1, 1), (9, 1), (7, 3), (6, 5)])
@pytest.mark.parametrize("masked", [False, True])
def test_random_sims_match_reference(num_videos, k, masked):
  rng = np.random.default_rng(num_videos * 10 + k)
  sims = rng.standard_normal((num_videos * k, num_videos)).astype(np.float32)
  # Give the ground truth an edge so the recalls are not all tiny.
  sims[np.arange(num_videos * k), np.arange(num_videos * k) // k] += 1.0
  mask = _random_mask(rng, num_videos, k) if masked else None
  want = reference(sims, mask)
  for chunk in (4, 2048):
    assert_metrics_equal(retrieval_metrics(sims, mask, query_chunk=chunk), want)


@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 35, 1000])
def test_many_ties_match_reference(chunk):
  rng = np.random.default_rng(chunk)
  num_videos, k = 7, 5
  sims = np.round(rng.random((num_videos * k, num_videos)), 1).astype(np.float32)
  mask = _random_mask(rng, num_videos, k)
  want = reference(sims, mask)
  assert_metrics_equal(retrieval_metrics(sims, mask, query_chunk=chunk), want)
  # Quantised this coarsely, some ground truths must be tied at a fractional rank.
  t2v_ranks_fractional = want["t2v"]["MnR"] != round(want["t2v"]["MnR"])
  assert t2v_ranks_fractional or want["v2t"]["MnR"] != round(want["v2t"]["MnR"])


def test_constant_sims_all_tied():
  num_videos, k = 6, 3
  sims = np.zeros((num_videos * k, num_videos), np.float32)
  got = retrieval_metrics(sims, query_chunk=4)
  assert_metrics_equal(got, reference(sims))
  # Every t2v rank is the mean position (N_v - 1) / 2 and no query is a hit at 1.
  assert got["t2v"]["MnR"] == (num_videos - 1) / 2 + 1
  assert got["t2v"]["R1"] == 0.0
  assert got["v2t"]["MdR"] == (num_videos * k - 1) / 2 + 1


def test_video_without_captions_has_infinite_v2t_rank():
  rng = np.random.default_rng(0)
  num_videos, k = 4, 2
  sims = rng.standard_normal((num_videos * k, num_videos)).astype(np.float32)
  mask = np.ones((num_videos, k), bool)
  mask[2] = False
  got = retrieval_metrics(sims, mask, query_chunk=3)
  assert_metrics_equal(got, reference(sims, mask))
  assert got["v2t"]["MnR"] == np.inf
  assert got["v2t"]["num_queries"] == num_videos
  assert got["t2v"]["num_queries"] == mask.sum()


def test_jax_and_float64_inputs():
  rng = np.random.default_rng(1)
  sims64 = np.round(rng.standard_normal((15, 5)), 2)
  sims32 = sims64.astype(np.float32)
  mask = _random_mask(rng, 5, 3)
  want = reference(sims32, mask)  # float64 is compared as float32 unless x64 is enabled
  assert_metrics_equal(retrieval_metrics(jnp.asarray(sims32), mask, query_chunk=4), want)
  if not retrieval.jax.config.jax_enable_x64:
    assert_metrics_equal(retrieval_metrics(sims64, mask, query_chunk=4), want)


# --- Known values. ---

@pytest.mark.parametrize("k", [1, 4])
def test_identity_like_sims_are_perfect(k):
  num_videos = 8
  sims = np.repeat(np.eye(num_videos, dtype=np.float32), k, axis=0)
  # Distinct own scores: a video's own captions must not tie with each other (see below).
  sims *= 1 + 0.01 * np.arange(num_videos * k, dtype=np.float32)[:, None]
  got = retrieval_metrics(sims)
  for direction in ("t2v", "v2t"):
    assert got[direction]["R1"] == 100.0
    assert got[direction]["MdR"] == 1.0
    assert got[direction]["MnR"] == 1.0
    assert got[direction]["geometric_mean_R1-R5-R10"] == pytest.approx(100.0)
  assert got["t2v"]["num_queries"] == num_videos * k
  assert got["v2t"]["num_queries"] == num_videos


def test_v2t_own_captions_tied_with_each_other():
  # Official v2t averages ties among the video's own captions too: with K equal best captions
  # the rank is (K - 1) / 2, never 0, even though the retrieval is perfect.
  num_videos, k = 5, 4
  sims = np.repeat(np.eye(num_videos, dtype=np.float32), k, axis=0)
  got = retrieval_metrics(sims)
  assert got["t2v"]["R1"] == 100.0
  assert got["v2t"]["R1"] == 0.0
  assert got["v2t"]["MnR"] == (k - 1) / 2 + 1
  assert_metrics_equal(got, reference(sims))


def test_hand_made_3x3_with_ties():
  sims = np.array([[1.0, 1.0, 0.0],    # gt tied with video 1 -> positions {0, 1} -> rank 0.5
                   [0.0, 2.0, 0.0],    # unique best -> rank 0
                   [0.5, 0.5, 0.5]],   # tied with everything -> positions {0, 1, 2} -> rank 1
                  np.float32)
  got = retrieval_metrics(sims)
  t2v = got["t2v"]
  # Official R1 counts rank == 0 only: the 0.5 rank is not a hit at 1.
  assert t2v["R1"] == pytest.approx(100 / 3)
  assert t2v["R5"] == 100.0
  assert t2v["MdR"] == 1.5  # median(0, 0.5, 1) + 1
  assert t2v["MnR"] == 1.5  # mean(0, 0.5, 1) + 1
  assert t2v["geometric_mean_R1-R5-R10"] == pytest.approx((100 / 3 * 100 * 100) ** (1 / 3))
  # Each video's own caption is strictly best in its column.
  assert got["v2t"]["R1"] == 100.0


def test_hand_made_two_captions_with_mask():
  # Captions c0, c1 of video 0; c2, c3 of video 1, c3 missing (its 0.7 must be ignored).
  sims = np.array([[0.3, 0.9],
                   [0.5, 0.5],
                   [0.5, 0.1],
                   [0.7, 0.2]], np.float32)
  mask = np.array([[True, True], [True, False]])
  got = retrieval_metrics(sims, mask)
  # t2v: c0 -> 1, c1 ties 0.5 vs 0.5 -> 0.5, c2 -> 1.
  assert got["t2v"]["num_queries"] == 3.0
  assert got["t2v"]["R1"] == 0.0
  assert got["t2v"]["MdR"] == 2.0
  assert got["t2v"]["MnR"] == pytest.approx(2.5 / 3 + 1)
  assert got["t2v"]["geometric_mean_R1-R5-R10"] == 0.0
  # v2t video 0: column [0.3, 0.5, 0.5, missing]; c1 ties with c2 -> 0.5, c0 -> 2; min 0.5.
  # v2t video 1: column [0.9, 0.5, 0.1, missing]; its only caption c2 -> 2.
  assert got["v2t"]["R1"] == 0.0
  assert got["v2t"]["R5"] == 100.0
  assert got["v2t"]["MdR"] == 2.25
  assert got["v2t"]["MnR"] == 2.25
  assert_metrics_equal(got, reference(sims, mask))


def test_metrics_from_ranks_matches_official_cols2metrics():
  rng = np.random.default_rng(3)
  ranks = np.floor(rng.exponential(8.0, size=101) * 2) / 2  # half-integers, some zeros
  got = metrics_from_ranks(ranks)
  want = _ref_cols2metrics(ranks, ranks.size)
  assert tuple(got) == KEYS
  for key in KEYS:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)
  assert metrics_from_ranks(np.array([0.5, 3.0]))["R1"] == 0.0


# --- Streaming. ---

def test_accumulator_chunk_by_chunk_equals_one_shot():
  rng = np.random.default_rng(4)
  num_videos, k = 9, 4
  sims = np.round(rng.standard_normal((num_videos * k, num_videos)), 1).astype(np.float32)
  mask = _random_mask(rng, num_videos, k)
  want = retrieval_metrics(sims, mask)
  gt = sims[np.arange(num_videos * k), np.arange(num_videos * k) // k].reshape(num_videos, k)
  acc = RetrievalAccumulator(gt, mask, query_chunk=5)
  bounds = [0, 3, 4, 15, 22, 36]  # uneven pieces, some larger than query_chunk
  pieces = list(zip(bounds[:-1], bounds[1:]))
  for i in rng.permutation(len(pieces)):  # any order
    lo, hi = pieces[i]
    chunk = sims[lo:hi]
    acc.update(lo, jnp.asarray(chunk) if i % 2 else chunk)
  assert acc.num_queries == num_videos * k
  assert_metrics_equal(acc.result(), want)
  assert_metrics_equal(want, reference(sims, mask))


# --- Errors. ---

def test_shape_errors():
  with pytest.raises(ValueError, match="not a multiple of N_v"):
    retrieval_metrics(np.zeros((7, 3), np.float32))
  with pytest.raises(ValueError, match=r"query_mask has shape \(3, 3\), expected"):
    retrieval_metrics(np.zeros((6, 3), np.float32), np.ones((3, 3), bool))
  with pytest.raises(ValueError, match="non-empty"):
    retrieval_metrics(np.zeros(6, np.float32))
  with pytest.raises(ValueError, match="no caption as valid"):
    retrieval_metrics(np.zeros((6, 3), np.float32), np.zeros((3, 2), bool))
  with pytest.raises(ValueError, match="at least one rank"):
    metrics_from_ranks(np.array([]))


def test_accumulator_errors():
  sims = np.arange(12, dtype=np.float32).reshape(6, 2)
  gt = sims[np.arange(6), np.arange(6) // 3].reshape(2, 3)
  with pytest.raises(ValueError, match="query_chunk"):
    RetrievalAccumulator(gt, query_chunk=0)
  with pytest.raises(ValueError, match="gt_sims"):
    RetrievalAccumulator(gt.reshape(-1))
  acc = RetrievalAccumulator(gt, query_chunk=4)
  with pytest.raises(ValueError, match=r"must be \[q, N_v=2\]"):
    acc.update(0, sims[:, :1])
  with pytest.raises(ValueError, match="outside"):
    acc.update(4, sims[:3])
  acc.update(0, sims[:4])
  with pytest.raises(ValueError, match="overlap"):
    acc.update(3, sims[3:5])
  with pytest.raises(ValueError, match="2 of 6 query rows were never added"):
    acc.result()
  acc.update(4, sims[4:])
  acc.result()
  bad = RetrievalAccumulator(gt + 1)
  bad.update(0, sims)
  with pytest.raises(ValueError, match="different from gt_sims"):
    bad.result()


def test_non_float_sims_rejected():
  with pytest.raises(ValueError, match="floating point"):
    retrieval_metrics(np.zeros((6, 3), np.int64))


# --- Reading host memory in place. ---

@pytest.mark.parametrize("offset", [0, 1, 3, 5, 8, 15])
def test_misaligned_host_buffer_read_in_place(offset, monkeypatch):
  """Rows that start anywhere relative to the 64-byte alignment are read through aligned
  windows of the caller's own memory (zero-copy) and give the reference metrics; only
  edge blocks are copied."""
  rng = np.random.default_rng(offset)
  num_videos, k = 6, 7  # N_v * 4 bytes = 24: row starts cycle through the alignments.
  storage = np.round(rng.standard_normal(num_videos * k * num_videos + 16), 1).astype(
      np.float32)
  sims = storage[offset:offset + num_videos * k * num_videos].reshape(num_videos * k,
                                                                      num_videos)
  mask = _random_mask(rng, num_videos, k)
  shared = []
  windows = chunking.host_row_windows

  def spying(array, *args):
    for item in windows(array, *args):
      shared.append(np.shares_memory(item[2], storage))
      yield item
  monkeypatch.setattr(chunking, "host_row_windows", spying)
  got = retrieval_metrics(sims, mask, query_chunk=4)
  assert_metrics_equal(got, reference(sims, mask))
  assert len(shared) == -(-num_videos * k // 4)
  # Copied: at most the first block and the last two (a window reaches 64 bytes past its
  # block's end, beyond the buffer there).
  assert sum(shared) >= len(shared) - 3


def test_encoded_counts_exact_at_every_width():
  """One-sum (#greater, #equal) decoding is exact in the float32, int32 and two-sum regimes."""
  rng = np.random.default_rng(0)
  for n in (1, 7, 4095, 4096, 40000):
    greater = rng.random((3, n)) < 0.3
    equal = ~greater & (rng.random((3, n)) < 0.5)
    equal[0] = ~greater[0]  # every entry counted: the largest code of this width
    g, e = retrieval._encoded_counts(jnp.asarray(greater), jnp.asarray(equal), 1)
    np.testing.assert_array_equal(np.asarray(g), greater.sum(1))
    np.testing.assert_array_equal(np.asarray(e), equal.sum(1))
