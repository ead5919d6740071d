"""Tests for vtd.evaluators.qbnorm against a literal port of the official DIS code."""

import jax.numpy as jnp
import numpy as np
import pytest

from vtd.evaluators.qbnorm import (QueryBankStats, dis_rerank, dis_scores, dis_t2v_ranks,
                                   iter_dis_scores, querybank_stats)
from vtd.evaluators.retrieval import retrieval_metrics

N = 40  # gallery size shared by most tests, so the kernels compile few times
BANK_CHUNK = 16
QUERY_CHUNK = 7


# --- Reference: `qb_norm` of ioanacroi/qb-norm dynamic_inverted_softmax.py, line by line. ---

def _official_qb_norm(train_test, test_test, beta, k, dtype=np.float64):
  """Returns (normalized [Q, N], gated [Q] bool). Works on copies: the official code aliases
  test_test_normalized to its input and so overwrites the caller's matrix."""
  train_test = np.array(train_test, dtype)
  test_test = np.array(test_test, dtype)
  argm = np.argsort(-train_test, axis=1)  # get_retrieved_videos
  retrieved_videos = np.unique(argm[:, :k].reshape(-1))
  test_test_normalized = test_test
  with np.errstate(over="ignore", invalid="ignore"):
    train_test = np.exp(train_test * beta)
    test_test = np.exp(test_test * beta)
    normalizing_sum = np.sum(train_test, axis=0)
    argm = np.argsort(-test_test, axis=1)[:, 0]  # get_index_to_normalize
    result = np.array(list(map(lambda x: x in retrieved_videos, argm)))
    index_for_normalizing = np.nonzero(result)
    test_test_normalized[index_for_normalizing, :] = np.divide(
        test_test[index_for_normalizing, :], normalizing_sum)
  return test_test_normalized, result


def _ranking(scores):
  return np.argsort(-np.asarray(scores, np.float64), axis=1, kind="stable")


def _data(seed, num_bank=53, num_test=30, scale=0.3):
  rng = np.random.default_rng(seed)
  bank = (scale * rng.standard_normal((num_bank, N))).astype(np.float32)
  test = (scale * rng.standard_normal((num_test, N))).astype(np.float32)
  return bank, test


def _check_against_official(got, bank, test, beta, k):
  ref, gated = _official_qb_norm(bank, test, beta, k)
  assert got.dtype == np.float32 and got.shape == test.shape
  np.testing.assert_array_equal(_ranking(got), _ranking(ref))
  # Ungated rows are the raw similarities; gated rows the log of the official values.
  np.testing.assert_array_equal(got[~gated], test[~gated])
  np.testing.assert_allclose(got[gated], np.log(ref[gated]), rtol=1e-5, atol=1e-4)
  return gated


def _bank_forms(bank):
  """The same bank as an array, a JAX array, uneven pieces, an iterator and a callable."""
  splits = [5, 21, 22, 40]  # pieces of 5, 16, 1, 18, 13 rows: regrouped into 16-row blocks
  return [
      ("array", bank, None),
      ("jax", jnp.asarray(bank), None),
      ("pieces", np.split(bank, splits), None),
      ("iterator", iter(np.split(bank, splits)), None),
      ("callable", lambda start, stop: bank[start:stop], bank.shape[0]),
  ]


@pytest.mark.parametrize("beta,k", [(20.0, 1), (5.0, 3), (50.0, 2)])
def test_matches_official(beta, k):
  bank, test = _data(seed=int(beta) + k)  # M = 53: the last bank block is padded
  for name, form, num_bank in _bank_forms(bank):
    got = dis_rerank(test, form, beta=beta, k=k, bank_chunk=BANK_CHUNK,
                     query_chunk=QUERY_CHUNK, num_bank=num_bank)
    _check_against_official(got, bank, test, beta, k)  # `name` shows in a failure


def test_stats_and_streamed_scores():
  bank, test = _data(seed=3)
  stats = querybank_stats(bank, beta=20.0, k=2, bank_chunk=BANK_CHUNK)
  assert isinstance(stats, QueryBankStats) and stats.num_bank == 53 and stats.k == 2
  z = 20.0 * bank.astype(np.float64)
  np.testing.assert_allclose(stats.log_norm, np.log(np.exp(z).sum(0)), rtol=1e-6)
  top2 = np.argsort(-bank, axis=1)[:, :2]
  np.testing.assert_array_equal(np.nonzero(stats.active)[0], np.unique(top2))
  # Query chunks (padded last one) give the same as one call on the whole matrix.
  starts, parts = zip(*iter_dis_scores(test, stats, query_chunk=QUERY_CHUNK))
  assert starts == tuple(range(0, 30, QUERY_CHUNK))
  np.testing.assert_array_equal(np.concatenate(parts), np.asarray(dis_scores(test, stats)))
  # In place, as the official code does.
  inplace = test.copy()
  assert dis_rerank(inplace, bank, k=2, bank_chunk=BANK_CHUNK, query_chunk=QUERY_CHUNK,
                    out=inplace) is inplace
  np.testing.assert_array_equal(inplace, np.concatenate(parts))


def test_gate_on_for_some_rows_only():
  bank, test = _data(seed=4)
  rows = np.arange(bank.shape[0])
  bank[rows, N // 2 + rows % (N // 2)] += 5.0  # row i peaks at video 20 + i mod 20
  # A = second half; the zero rows padding the last block (53 = 3 * 16 + 5) must not add 0.
  stats = querybank_stats(bank, beta=20.0, bank_chunk=BANK_CHUNK)
  np.testing.assert_array_equal(np.asarray(stats.active), np.arange(N) >= N // 2)
  test[::2, N // 2:] += 5.0  # even rows peak in A (gated), odd rows outside (raw)
  test[1::2, :N // 2] += 5.0
  test[1, 0] += 1.0  # argmax at video 0: raw, unless padding leaked into A
  got = dis_rerank(test, bank, beta=20.0, k=1, bank_chunk=BANK_CHUNK, query_chunk=QUERY_CHUNK)
  gated = _check_against_official(got, bank, test, 20.0, 1)
  np.testing.assert_array_equal(gated, np.arange(30) % 2 == 0)


def test_large_beta_stays_finite():
  bank, test = _data(seed=5)  # |s| up to ~1: exp(200 s) overflows float32 (max exp ~ 88.7)
  naive, _ = _official_qb_norm(bank, test, 200.0, 1, dtype=np.float32)
  assert not np.isfinite(naive).all()
  got = dis_rerank(test, bank, beta=200.0, k=1, bank_chunk=BANK_CHUNK, query_chunk=QUERY_CHUNK)
  assert np.isfinite(got).all()
  _check_against_official(got, bank, test, 200.0, 1)  # float64 reference does not overflow


def test_hub_is_demoted_and_t2v_r1_improves():
  rng = np.random.default_rng(6)
  num_videos, captions, hub = N, 2, 0
  test = 0.1 * rng.standard_normal((num_videos * captions, num_videos))
  test[np.arange(num_videos * captions), np.arange(num_videos * captions) // captions] += 0.5
  test[:, hub] += 0.45  # the hub is close to every query
  bank = 0.1 * rng.standard_normal((300, num_videos))
  bank[np.arange(300), np.arange(300) % num_videos] += 0.5
  bank[:, hub] += 0.45
  test, bank = test.astype(np.float32), bank.astype(np.float32)
  before = retrieval_metrics(test)["t2v"]["R1"]
  after = retrieval_metrics(dis_rerank(test, bank, query_chunk=QUERY_CHUNK))["t2v"]["R1"]
  assert before < 70 and after > before + 20, (before, after)


def test_errors():
  bank, test = _data(seed=7)
  with pytest.raises(ValueError, match=r"\(30, 40\).*\(53, 41\)"):
    dis_rerank(test, np.zeros((53, N + 1), np.float32))
  stats = querybank_stats(bank, bank_chunk=BANK_CHUNK)
  with pytest.raises(ValueError, match=r"\(30, 39\).*\(53, 40\)"):
    dis_scores(test[:, :-1], stats)
  with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
    querybank_stats(bank, k=0)
  with pytest.raises(ValueError, match="k=41 exceeds the N=40"):
    querybank_stats(bank, k=N + 1, bank_chunk=BANK_CHUNK)
  for beta in (0.0, -1.0):
    with pytest.raises(ValueError, match="beta must be > 0"):
      dis_rerank(test, bank, beta=beta)
  for empty in (np.zeros((0, N), np.float32), []):
    with pytest.raises(ValueError, match="querybank is empty"):
      querybank_stats(empty)
  with pytest.raises(ValueError, match="num_bank .* is required"):
    querybank_stats(lambda start, stop: bank[start:stop])
  with pytest.raises(ValueError, match="returned shape"):
    querybank_stats(lambda start, stop: bank[:2], num_bank=10)
  with pytest.raises(ValueError, match="disagree on N"):
    querybank_stats([bank[:16], bank[:16, :-1]], bank_chunk=BANK_CHUNK)


# --- Exactness of the normaliser and the ranks; host rows read in place. ---

def _float64_dis_ranks(bank, test, beta, k_cap):
  """GT ranks of the exact DIS of the official float32 quantities x = fl32(beta * S)."""
  x_bank = (bank * np.float32(beta)).astype(np.float64)
  ell = np.log(np.exp(x_bank - x_bank.max(0)).sum(0)) + x_bank.max(0)
  active = np.zeros(bank.shape[1], bool)
  active[bank.argmax(1)] = True
  gate = active[test.argmax(1)]
  key = np.where(gate[:, None], (test * np.float32(beta)).astype(np.float64) - ell, test)
  own = key[np.arange(len(key)), np.arange(len(key)) // k_cap][:, None]
  return (key > own).sum(1) + ((key == own).sum(1) - 1) / 2, ell


def test_log_norm_pair_and_exact_ranks():
  rng = np.random.default_rng(11)
  n, k_cap = 40, 3
  bank = (0.3 * rng.standard_normal((2000, n))).astype(np.float32)
  test = (0.3 * rng.standard_normal((n * k_cap, n))).astype(np.float32)
  # Near-ties: two videos per row whose official values differ only through their
  # normalisers (equal x, columns 0 and 1 with different banks).
  test[:, 1] = test[:, 0]
  stats = querybank_stats(bank, beta=20.0, bank_chunk=BANK_CHUNK)
  want, ell = _float64_dis_ranks(bank, test, 20.0, k_cap)
  pair = np.asarray(stats.log_norm, np.float64) + np.asarray(stats.log_norm_lo, np.float64)
  assert np.abs(pair - ell).max() < 2e-7  # float32 alone: ~1e-6
  got, gated = dis_t2v_ranks(test, stats, captions_per_video=k_cap, query_chunk=QUERY_CHUNK)
  np.testing.assert_array_equal(got, want)
  assert gated.any()


def test_host_rows_read_in_place_at_any_alignment():
  bank, test = _data(seed=12)
  stats = querybank_stats(bank, beta=20.0, bank_chunk=BANK_CHUNK)
  want = np.asarray(dis_scores(jnp.asarray(test), stats))
  for offset in (0, 1, 5, 13):
    storage = np.zeros(test.size + 16, np.float32)
    view = storage[offset:offset + test.size].reshape(test.shape)
    view[...] = test
    parts = [p for _, p in iter_dis_scores(view, stats, query_chunk=4)]
    np.testing.assert_array_equal(np.concatenate(parts), want)
