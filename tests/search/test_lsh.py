"""Tests for vtd.search.lsh: Faiss IndexLSH semantics (reference §F)."""

import faiss
import jax
import numpy as np
import pytest

from vtd.errors import UserError
from vtd.search import lsh as lshlib


def _x(n, d, seed=0):
  return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("d,nbits", [(32, 16), (32, 32), (16, 40)])
def test_rotation_is_orthonormal_or_tight_frame(d, nbits):
  a = lshlib.fit_lsh(0, d, nbits).rotation.astype(np.float64)
  assert a.shape == (nbits, d)
  if nbits <= d:
    np.testing.assert_allclose(a @ a.T, np.eye(nbits), atol=1e-5)  # orthonormal rows
  else:
    np.testing.assert_allclose(a.T @ a, np.eye(d), atol=1e-5)  # tight frame


@pytest.mark.parametrize("d,nbits", [(64, 64), (32, 96)])
def test_expected_hamming_is_angle_over_pi(d, nbits):
  # SimHash: P(bit differs) = angle / pi; averaged over many random pairs and rotations.
  rng = np.random.default_rng(1)
  n = 3000
  x = rng.standard_normal((n, d))
  # Pairs with angles spread over (0, pi): y = cos(t) x + sin(t) u, u orthogonal to x.
  t = rng.uniform(0.05, np.pi - 0.05, n)
  u = rng.standard_normal((n, d))
  u -= (u * x).sum(1, keepdims=True) / (x * x).sum(1, keepdims=True) * x
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  y = np.cos(t)[:, None] * x + np.sin(t)[:, None] * u
  errs = []
  for seed in range(4):
    lsh = lshlib.fit_lsh(seed, d, nbits)
    bx = np.asarray(lshlib.encode_bits(x, lsh))
    by = np.asarray(lshlib.encode_bits(y, lsh))
    errs.append((bx != by).mean(1) - t / np.pi)
  errs = np.concatenate(errs)
  assert abs(errs.mean()) < 0.004
  assert np.abs(errs).mean() < 0.05


@pytest.mark.parametrize("d,nbits,rotate", [(32, 48, True), (32, 20, True), (32, 24, False)])
def test_codes_equal_faiss_given_the_same_rotation(d, nbits, rotate):
  x = _x(200, d)
  ours = lshlib.fit_lsh(3, d, nbits, rotate=rotate)
  index = lshlib.to_faiss(ours)
  codes = lshlib.encode(x, ours)
  assert codes.shape == (200, (nbits + 7) // 8) and codes.dtype == np.uint8
  np.testing.assert_array_equal(codes, index.sa_encode(x))
  index.add(x)
  np.testing.assert_array_equal(codes.ravel(), faiss.vector_to_array(index.codes))
  # And the other way: faiss's own random matrix, copied out.
  theirs = faiss.IndexLSH(d, nbits, rotate, False)
  got = lshlib.from_faiss(theirs)
  assert (got.rotation is None) == (not rotate)
  np.testing.assert_array_equal(lshlib.encode(x, got), theirs.sa_encode(x))


def test_packing_is_lsb_first_like_faiss():
  bits = np.zeros((2, 16), bool)
  bits[0, 0] = True  # bit 0 -> byte 0, value 1
  bits[1, 9] = True  # bit 9 -> byte 1, value 2
  np.testing.assert_array_equal(lshlib.pack_codes(bits), [[1, 0], [0, 2]])
  rng = np.random.default_rng(0)
  b = rng.random((5, 20)) > 0.5
  np.testing.assert_array_equal(lshlib.unpack_codes(lshlib.pack_codes(b), 20), b)
  # Faiss without rotation and nbits == d: bit j = x_j >= 0, so the layout is directly visible.
  x = np.where(b, 1.0, -1.0).astype(np.float32)
  index = faiss.IndexLSH(20, 20, False, False)
  np.testing.assert_array_equal(index.sa_encode(x), lshlib.pack_codes(b))


@pytest.mark.parametrize("n", [101, 100])  # odd and even: median = the middle / mean of two
def test_thresholds_are_medians_like_faiss(n):
  d, nbits = 16, 24
  xt = _x(n, d, seed=5) + 0.7  # not zero-mean, so the thresholds matter
  lsh = lshlib.fit_lsh(0, d, nbits, train_thresholds=True, train_features=xt)
  y = xt.astype(np.float64) @ lsh.rotation.T.astype(np.float64)
  np.testing.assert_allclose(lsh.thresholds, np.median(y, axis=0), atol=1e-5)
  index = faiss.IndexLSH(d, nbits, True, True)
  faiss.copy_array_to_vector(lsh.rotation.ravel(), index.rrot.A)
  index.train(xt)
  theirs = lshlib.from_faiss(index)
  np.testing.assert_allclose(theirs.thresholds, lsh.thresholds, atol=1e-5)
  x = _x(300, d, seed=6) + 0.7
  np.testing.assert_array_equal(lshlib.encode(x, theirs), index.sa_encode(x))
  np.testing.assert_array_equal(lshlib.to_faiss(theirs).sa_encode(x), index.sa_encode(x))
  # Each bit is set for about half of the training set.
  bits = np.asarray(lshlib.encode_bits(xt, lsh))
  assert np.all(np.abs(bits.mean(0) - 0.5) <= 1.0 / n + 1e-9)


def test_encode_bits_jits_with_lsh_as_argument():
  lsh = lshlib.fit_lsh(jax.random.key(0), 8, 8)
  x = _x(4, 8)
  np.testing.assert_array_equal(jax.jit(lshlib.encode_bits)(x, lsh), lshlib.encode_bits(x, lsh))


def test_save_load_roundtrip(tmp_path):
  lsh = lshlib.fit_lsh(1, 8, 12, train_thresholds=True, train_features=_x(9, 8))
  path = str(tmp_path / "lsh.npz")
  lshlib.save_lsh(path, lsh)
  back = lshlib.load_lsh(path)
  assert (back.d, back.nbits) == (8, 12)
  np.testing.assert_array_equal(back.rotation, lsh.rotation)
  np.testing.assert_array_equal(back.thresholds, lsh.thresholds)
  plain = lshlib.fit_lsh(1, 8, 4, rotate=False)
  lshlib.save_lsh(path, plain)
  back = lshlib.load_lsh(path)
  assert back.rotation is None and back.thresholds is None
  (tmp_path / "bad.npz").write_bytes(b"not an npz")
  with pytest.raises(UserError, match="bad.npz"):
    lshlib.load_lsh(str(tmp_path / "bad.npz"))


def test_errors():
  with pytest.raises(UserError, match="nbits <= d"):
    lshlib.fit_lsh(0, 8, 16, rotate=False)
  with pytest.raises(UserError, match="train_features"):
    lshlib.fit_lsh(0, 8, 8, train_thresholds=True)
  with pytest.raises(UserError, match="expected"):
    lshlib.encode(_x(3, 7), lshlib.fit_lsh(0, 8, 8))


@pytest.mark.parametrize("thresholds", [False, True])
def test_encode_paths_and_chunking_agree(thresholds):
  """The CPU path (BLAS projection + jitted packing), the all-jitted kernel and any chunking
  give the same codes."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((50, 16)).astype(np.float32)
  lsh = lshlib.fit_lsh(1, 16, 24, train_thresholds=thresholds, train_features=x)
  want = lshlib.encode(x, lsh)
  np.testing.assert_array_equal(want, lshlib.pack_codes(lshlib.encode_bits(x, lsh)))
  np.testing.assert_array_equal(np.asarray(lshlib._encode_packed(x, lsh)), want)
  for chunk in (1, 7, 50, 64):
    np.testing.assert_array_equal(lshlib.encode(x, lsh, chunk_size=chunk), want)
