"""Relational Knowledge Distillation (vtd/losses/relational.py) against literal NumPy ports."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vtd import sharding
from vtd.losses import relational


def _rand(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# Jitted once per shape (most tests share N = 8, D_s = 5, D_t = 9): eager op-by-op dispatch
# compiles every primitive separately and dominates the run time on CPU.
_potentials = jax.jit(lambda x: (relational.distance_potentials(x),
                                 relational.angle_potentials(x)))
_losses = jax.jit(lambda s, t: (relational.rkd_distance_loss(s, t),
                                relational.rkd_angle_loss(s, t), relational.rkd_loss(s, t)))
_grads = jax.jit(jax.grad(lambda s, t: relational.rkd_loss(s, t)[0], argnums=(0, 1)))


def _with_duplicates(x):
  """Rows 1 and 4 copy row 0, row 5 copies row 2: zero-length differences off the diagonal."""
  x = x.copy()
  x[1] = x[4] = x[0]
  x[5] = x[2]
  return x


# Literal float64 ports of lenscloth/RKD metric/utils.py::pdist and metric/loss.py.
def _pdist(e, eps=1e-12):
  sq = (e ** 2).sum(1)
  res = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, eps))
  res[np.arange(len(e)), np.arange(len(e))] = 0
  return res


def _normalize(v, eps=1e-12):  # F.normalize(p=2, dim=-1)
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)


def _angles(e):
  d = e[None, :, :] - e[:, None, :]  # td = t.unsqueeze(0) - t.unsqueeze(1): [N, N, C]
  n = _normalize(d)
  return np.einsum("aic,akc->aik", n, n)  # bmm(norm_td, norm_td^T)


def _smooth_l1(a, b):
  x = np.abs(a - b)
  return np.mean(np.where(x < 1, 0.5 * x * x, x - 0.5))


def _rkd_reference(s, t):
  s, t = s.astype(np.float64), t.astype(np.float64)
  ds, dt = _pdist(s), _pdist(t)
  dist = _smooth_l1(ds / ds[ds > 0].mean(), dt / dt[dt > 0].mean())
  return dist, _smooth_l1(_angles(s), _angles(t))


def test_right_triangle_potentials_by_hand():
  x = jnp.asarray([[0, 0], [3, 0], [0, 4]], jnp.float32)  # Sides 3, 4, 5; mu = 4.
  d, a = map(np.asarray, _potentials(x))
  np.testing.assert_allclose(d, [[0, .75, 1], [.75, 0, 1.25], [1, 1.25, 0]], rtol=1e-6)
  np.testing.assert_allclose(a[0, 1, 2], 0.0, atol=1e-7)  # a[j, i, k], vertex j: right angle.
  np.testing.assert_allclose(a[1, 0, 2], 3 / 5, rtol=1e-6)
  np.testing.assert_allclose(a[2, 1, 0], 4 / 5, rtol=1e-6)
  for j in range(3):  # Zero-length differences normalise to 0; e_ji . e_ji = 1.
    assert np.all(a[j, j, :] == 0) and np.all(a[j, :, j] == 0)
    np.testing.assert_allclose([a[j, i, i] for i in range(3) if i != j], 1.0, rtol=1e-6)


@pytest.mark.parametrize("duplicates", [False, True])
def test_matches_literal_official_code(duplicates):
  s, t = _rand(8, 5, seed=1), _rand(8, 9, seed=2)  # Different dims: relations are dim-free.
  if duplicates:
    s, t = _with_duplicates(s), _with_duplicates(t)
  for x in (s, t):
    d, a = _potentials(x)
    np.testing.assert_allclose(a, _angles(x.astype(np.float64)), atol=1e-5)
    ref = _pdist(x.astype(np.float64))
    np.testing.assert_allclose(d, ref / ref[ref > 0].mean(), rtol=1e-5, atol=1e-6)
  dist, angle = _rkd_reference(s, t)
  got_dist, got_angle, (loss, terms) = _losses(s, t)
  np.testing.assert_allclose(got_dist, dist, rtol=1e-5)
  np.testing.assert_allclose(got_angle, angle, rtol=1e-5)
  np.testing.assert_allclose(loss, dist + 2 * angle, rtol=1e-5)
  np.testing.assert_allclose(terms["rkd_distance"], dist, rtol=1e-5)
  np.testing.assert_allclose(terms["rkd_angle"], angle, rtol=1e-5)


def test_rows_far_from_origin_keep_precision():
  # Distances << norms: the raw Gram identity would cancel; centring the rows avoids it.
  t = _rand(8, 9, seed=3) * 0.05 + 10.0
  np.testing.assert_allclose(_potentials(t)[1], _angles(t.astype(np.float64)), atol=1e-4)


def test_similarity_transform_of_teacher_gives_zero():
  z = _rand(8, 5, seed=4)
  q, _ = np.linalg.qr(_rand(9, 9, seed=5))
  t = z @ q[:5].astype(np.float32)  # Orthonormal rows: t has z's relations, in 9-d.
  q5, _ = np.linalg.qr(_rand(5, 5, seed=6))
  s = 3.0 * z @ q5.astype(np.float32) + 7.0  # Scaled, rotated, shifted z.
  _, _, (loss, terms) = _losses(s, t)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)
  assert set(terms) == {"rkd_distance", "rkd_angle"}


def test_gradients_student_only_and_finite_with_duplicates():
  s, t = _with_duplicates(_rand(8, 5, seed=7)), _with_duplicates(_rand(8, 9, seed=8))
  g_s, g_t = _grads(s, t)
  assert np.all(np.asarray(g_t) == 0)
  assert np.all(np.isfinite(g_s)) and np.abs(np.asarray(g_s)).sum() > 0


def test_gradient_matches_finite_differences():
  s, t = _rand(8, 5, seed=9).astype(np.float64), _rand(8, 9, seed=10).astype(np.float64)
  f = lambda s: (lambda d, a: d + 2 * a)(*_rkd_reference(s, t))
  g = np.asarray(_grads(s.astype(np.float32), t.astype(np.float32))[0])
  h = 1e-4
  for i, c in ((2, 1), (5, 4)):
    e = np.zeros_like(s)
    e[i, c] = h
    np.testing.assert_allclose(g[i, c], (f(s + e) - f(s - e)) / (2 * h), rtol=1e-3)


def test_zero_weight_skips_term_and_jit():
  s, t = _rand(8, 5, seed=11), _rand(8, 9, seed=12)
  dist, angle, _ = _losses(s, t)
  loss, terms = jax.jit(lambda s, t: relational.rkd_loss(s, t, angle_weight=0.0))(s, t)
  assert float(terms["rkd_angle"]) == 0.0
  np.testing.assert_allclose(loss, dist, rtol=1e-6)
  traced = jax.jit(lambda s, t, w: relational.rkd_loss(s, t, distance_weight=w,
                                                       angle_weight=0.5)[0])(s, t, 0.0)
  np.testing.assert_allclose(traced, 0.5 * angle, rtol=1e-6)


def test_sharded_global_batch_equals_unsharded():
  assert jax.device_count() == 8, "conftest forces 8 CPU devices"
  s, t = _rand(16, 5, seed=13), _rand(16, 9, seed=14)
  f = jax.jit(jax.value_and_grad(lambda s, t: relational.rkd_loss(s, t)[0]))
  one = jax.device_get(f(s, t))
  mesh = sharding.make_mesh()
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P(sharding.DATA_AXIS)))
  with jax.set_mesh(mesh):
    eight = jax.device_get(f(put(s), put(t)))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_shape_errors():
  with pytest.raises(ValueError, match="same number of rows"):
    relational.rkd_loss(jnp.zeros((4, 2)), jnp.zeros((5, 2)))
  with pytest.raises(ValueError, match="at least 2 rows"):
    relational.rkd_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)))
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    relational.distance_potentials(jnp.zeros((4,)))
