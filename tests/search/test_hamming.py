"""Tests for vtd.search.hamming: Faiss and JAX backends, NumPy reference, the tie rule."""

import jax
import numpy as np
import pytest

from vtd import sharding
from vtd.errors import UserError
from vtd.search import hamming

MISSING = hamming.MISSING_DISTANCE


def _codes(n, code_size, seed, high=256):
  return np.random.default_rng(seed).integers(0, high, (n, code_size), dtype=np.uint8)


def _naive_knn(q, g, k):
  """Unpacked bits, elementwise compare, stable argsort: the tie rule by definition."""
  h = (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(g, axis=1)[None]).sum(-1)
  order = np.argsort(h, axis=1, kind="stable")[:, :k]
  d = np.take_along_axis(h, order, 1)
  pad = k - order.shape[1]
  return (np.pad(d, ((0, 0), (0, pad)), constant_values=MISSING).astype(np.int32),
          np.pad(order, ((0, 0), (0, pad)), constant_values=-1).astype(np.int64))


def _assert_same(got, want):
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  assert got[0].dtype == np.int32 and got[1].dtype == np.int64


def _jax(nbits, codes, mesh=None, **kw):
  index = hamming.JaxHammingIndex(nbits, mesh=mesh, **kw)
  index.add(codes)
  return index


def test_numpy_reference_matches_naive():
  g, q = _codes(300, 5, 0), _codes(7, 5, 1)
  np.testing.assert_array_equal(
      hamming.hamming_distances_numpy(q, g),
      (np.unpackbits(q, axis=1)[:, None] != np.unpackbits(g, axis=1)[None]).sum(-1))
  _assert_same(hamming.numpy_knn(q, g, 40), _naive_knn(q, g, 40))
  _assert_same(hamming.numpy_knn(q, g, 400), _naive_knn(q, g, 400))  # k > ntotal


@pytest.mark.parametrize("high", [256, 4])  # random bytes; and few values: many ties
def test_faiss_and_jax_identical(high):
  g, q = _codes(700, 8, 2, high), _codes(21, 8, 3, high)
  want = _naive_knn(q, g, 50)
  faiss_index = hamming.make_index("faiss", 64)
  faiss_index.add(g)
  got_faiss = faiss_index.search(q, 50)
  jax_index = hamming.make_index("jax", 64, chunk_size=64, query_chunk=8)  # 3 query chunks
  jax_index.add(g[:300])
  jax_index.add(g[300:])  # two adds = one
  _assert_same(jax_index.search(q, 50), want)
  # One device, 11 chunks, k = 10: the scan's fast path (few rows below the running k-th
  # distance) and its fallback (a full chunk selection; once for high=256) both run.
  one_device = _jax(64, g, sharding.make_mesh(jax.devices()[:1]), chunk_size=64)
  _assert_same(one_device.search(q, 10), _naive_knn(q, g, 10))
  # Faiss: distances exactly; indices tie-aware (a documented boundary rule, not its list order).
  np.testing.assert_array_equal(got_faiss[0], want[0])
  h = hamming.hamming_distances_numpy(q, g)
  for row in range(q.shape[0]):
    last = want[0][row, -1]
    assert set(got_faiss[1][row][got_faiss[0][row] < last]) == \
        set(want[1][row][want[0][row] < last])
    assert np.all(h[row, got_faiss[1][row]] == got_faiss[0][row])
  # After the canonical re-sort, Faiss flat agrees entry for entry (earlier index wins at k).
  _assert_same(got_faiss, want)


def test_sharded_over_8_devices_equals_1_device():
  assert len(jax.devices()) == 8
  g, q = _codes(1000, 4, 4, high=8), _codes(13, 4, 5, high=8)  # 32 bits, tie-heavy
  # lax.top_k selection here (cheaper to compile); the histogram one is sharded in the others.
  one = _jax(32, g, sharding.make_mesh(jax.devices()[:1]), chunk_size=96, select="topk")
  eight = _jax(32, g, sharding.make_mesh(), chunk_size=96, select="topk")
  _assert_same(eight.search(q, 70), one.search(q, 70))
  _assert_same(eight.search(q, 70), _naive_knn(q, g, 70))


def test_chunk_boundaries_and_padding_never_returned():
  # 8 devices x 2 chunks of 32 rows: 33 rows per device, the last device has 26 and the padded
  # tail; k = 50 > rows per device, so every device's list holds padding rows before the merge.
  n, k = 257, 50
  # Gallery codes are all ones, queries all zeros: zero padding rows would be the nearest
  # (distance 0) if they were not masked.
  nbits = 24
  g = np.full((n, 3), 255, np.uint8)
  g[::7, 0] = 0  # some variety: distance 16 instead of 24
  q = np.zeros((3, 3), np.uint8)
  got = _jax(nbits, g, chunk_size=32).search(q, k)
  _assert_same(got, _naive_knn(q, g, k))
  assert np.all(got[1] < n)
  assert np.all((got[1] >= 0) == (np.arange(k) < n)[None])
  assert np.all(got[0][:, n:] == MISSING)


def test_matmul_distance_with_top_k():
  # The accelerator default (here with f32 on CPU); popcount + top_k is tested above.
  g, q = _codes(200, 6, 6, high=16), _codes(9, 6, 7, high=16)
  mesh = sharding.make_mesh(jax.devices()[:2])
  got = _jax(48, g, mesh, distance="matmul", select="topk", chunk_size=64).search(q, 33)
  _assert_same(got, _naive_knn(q, g, 33))


@pytest.fixture
def one_faiss_thread():
  # Faiss's OpenMP threads spin against JAX's on a busy 2-core box (seconds for ms of work).
  import faiss  # pylint: disable=g-import-not-at-top
  before = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(1)
  yield
  faiss.omp_set_num_threads(before)


def test_faiss_approximate_kinds(one_faiss_thread):  # pylint: disable=unused-argument,redefined-outer-name
  g = _codes(600, 8, 10)
  q = g[:20] ^ np.uint8(1)  # planted near-duplicates at distance 8
  exact = hamming.make_index("faiss", 64)
  exact.add(g)
  want = exact.search(q, 5)
  ivf = hamming.make_index("faiss", 64, "ivf4", nprobe=4)  # nprobe = nlist: exhaustive
  ivf.add(g)
  d, i = ivf.search(q, 5)
  np.testing.assert_array_equal(d, want[0])  # the same distances; ties may pick other rows
  np.testing.assert_array_equal(i[:, 0], np.arange(20))
  hnsw = hamming.make_index("faiss", 64, "hnsw16")
  hnsw.add(g)
  d, i = hnsw.search(q, 5)
  h = hamming.hamming_distances_numpy(q, g)
  assert np.all(np.take_along_axis(h, i, 1) == d)
  assert np.all(np.diff(d, axis=1) >= 0)
  assert np.mean(i[:, 0] == np.arange(20)) > 0.9


def test_empty_and_errors():
  index = hamming.make_index("jax", 16)
  d, i = index.search(np.zeros((2, 2), np.uint8), 3)
  assert np.all(d == MISSING) and np.all(i == -1)
  with pytest.raises(UserError, match="uint8"):
    index.add(np.zeros((2, 3), np.uint8))
  with pytest.raises(UserError, match="kind"):
    hamming.make_index("faiss", 16, "lsh")
  with pytest.raises(UserError, match="flat"):
    hamming.make_index("jax", 16, "hnsw8")
  with pytest.raises(UserError, match="backend"):
    hamming.make_index("torch", 16)
  with pytest.raises(UserError, match="training codes"):
    hamming.make_index("faiss", 16, "ivf100").add(np.zeros((10, 2), np.uint8))
