"""UTS loss, eqs. 4-8 (vtd/losses/uts.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vtd import sharding
from vtd.errors import UserError
from vtd.losses import uts


def _rand(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _unit(deg):
  return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# Four 2-d rows at 0, 60, 90 and 180 degrees, scaled (cosines ignore the norm). Cosine rows:
#   [1, .5, 0, -1], [.5, 1, s, -.5], [0, s, 1, 0], [-1, -.5, 0, 1] with s = sqrt(3)/2.
HAND = jnp.asarray([np.multiply(_unit(a), c) for a, c in ((0, 1), (60, 2), (90, 0.5), (180, 3))],
                   jnp.float32)
S3 = math.sqrt(3) / 2


@pytest.mark.parametrize("alpha, beta, descending, expected", [
    # Ranks [1, 3): the middle two of each row, the same in either order.
    (0.25, 0.75, True, ((0.5 + 0) + (S3 + 0.5) + (S3 + 0) + (0 - 0.5)) / 8),
    (0.25, 0.75, False, ((0.5 + 0) + (S3 + 0.5) + (S3 + 0) + (0 - 0.5)) / 8),
    # Ranks [0, 2): the two largest (self included) vs the two smallest.
    (0.0, 0.5, True, ((1 + 0.5) + (1 + S3) + (1 + S3) + (1 + 0)) / 8),
    (0.0, 0.5, False, ((-1 + 0) + (-0.5 + 0.5) + (0 + 0) + (-1 - 0.5)) / 8),
    # Published alpha, beta at n = 4: [round(0.4), round(2.4)) = [0, 2).
    (0.1, 0.6, True, ((1 + 0.5) + (1 + S3) + (1 + S3) + (1 + 0)) / 8),
])
def test_intra_batch_hand_case(alpha, beta, descending, expected):
  got = uts.intra_batch_inconsistency(HAND, alpha, beta, descending)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_band_indices():
  assert uts.band(320, 0.1, 0.6) == (32, 192)  # Reference: ranks 32..191 at n = 320.
  # 0.29 * 100 = 28.999999999999996 and 0.58 * 100 = 57.99999999999999: int() would drop one.
  assert uts.band(100, 0.29, 0.58) == (29, 58)
  with pytest.raises(UserError, match="empty"):
    uts.band(2, 0.1, 0.2)


def test_identical_rows_give_one_and_known_consistency():
  s = jnp.tile(_rand(1, 6), (8, 1)) * jnp.arange(1, 9, dtype=jnp.float32)[:, None]
  for descending in (True, False):
    np.testing.assert_allclose(uts.intra_batch_inconsistency(s, descending=descending), 1.0,
                               rtol=1e-6)
  t = jnp.asarray([_unit(0), _unit(90)], jnp.float32)
  s = jnp.asarray([_unit(60), _unit(90)], jnp.float32) * 5
  np.testing.assert_allclose(uts.global_consistency(s, t), (0.5 + 1) / 2, rtol=1e-6)


def test_student_equals_teacher_without_intra_terms_is_zero():
  t = _rand(16, 8)
  loss, terms = uts.uts_loss(2 * t, 3 * t, t, lambdas=(2.0, 2.0, 0.0, 0.0))
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)
  assert set(terms) == {"global_aug", "global_clean", "intra_aug", "intra_clean"}


def test_terms_sum_to_loss_and_teacher_gets_no_gradient():
  s_aug, s_clean, t = _rand(16, 8, seed=1), _rand(16, 8, seed=2), _rand(16, 8, seed=3)
  lam = (2.0, 1.5, 1.0, 0.5)
  loss, terms = uts.uts_loss(s_aug, s_clean, t, lam)
  expected = sum(l * terms[k] for l, k in zip(lam, ("global_aug", "global_clean", "intra_aug",
                                                     "intra_clean")))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(terms["global_aug"], 1 - uts.global_consistency(s_aug, t), rtol=1e-6)
  g_t = jax.grad(lambda t: uts.uts_loss(s_aug, s_clean, t)[0])(t)
  assert np.all(np.asarray(g_t) == 0)


def test_gradient_finite_and_sgd_decreases_loss():
  x, t = _rand(32, 8, seed=4), _rand(32, 8, seed=5)
  noise = 0.1 * _rand(32, 8, seed=6)

  @jax.jit
  def step(w):
    loss_fn = lambda w: uts.uts_loss((x + noise) @ w, x @ w, t)[0]
    loss, g = jax.value_and_grad(loss_fn)(w)
    return loss, g, w - 0.5 * g

  w = jnp.eye(8) + 0.1 * _rand(8, 8, seed=7)
  losses = []
  for _ in range(5):
    loss, g, w = step(w)
    assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0
    losses.append(float(loss))
  assert losses[-1] < losses[0], losses
  # A zero row (e.g. a dead feature) keeps the gradient finite.
  g0 = jax.jit(jax.grad(lambda s: uts.uts_loss(s, s, t)[0]))(x.at[0].set(0.0))
  assert np.all(np.isfinite(np.asarray(g0)))


def _per_group_numpy(s, groups, alpha, beta):
  z = np.asarray(s, np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  k = len(z) // groups
  lo, hi = round(alpha * k), round(beta * k)
  vals = []
  for g in range(groups):
    blk = z[g * k:(g + 1) * k]
    srt = -np.sort(-(blk @ blk.T), axis=1)
    vals.append(srt[:, lo:hi].mean())
  return float(np.mean(vals))


def test_per_device_band_scope():
  s = _rand(16, 8, seed=8)
  got = uts.intra_batch_inconsistency(s, 0.25, 0.75, num_groups=4)
  np.testing.assert_allclose(got, _per_group_numpy(s, 4, 0.25, 0.75), rtol=1e-5)
  _, t1 = uts.uts_loss(s, s, s, alpha=0.25, beta=0.75, band_scope="global")
  _, t4 = uts.uts_loss(s, s, s, alpha=0.25, beta=0.75, band_scope="per_device", num_groups=4)
  np.testing.assert_allclose(t1["intra_aug"], _per_group_numpy(s, 1, 0.25, 0.75), rtol=1e-5)
  np.testing.assert_allclose(t4["intra_aug"], got, rtol=1e-6)
  with pytest.raises(UserError, match="num_groups"):
    uts.uts_loss(s, s, s, band_scope="per_device")
  with pytest.raises(UserError, match="equal band groups"):
    uts.intra_batch_inconsistency(s, num_groups=3)
  with pytest.raises(UserError, match="band_scope"):
    uts.uts_loss(s, s, s, band_scope="host")


def test_mismatched_dims_are_user_errors():
  with pytest.raises(UserError, match="out_dim must match"):
    uts.uts_loss(_rand(4, 8), _rand(4, 8), _rand(4, 6))


@pytest.mark.parametrize("band_scope", ["global", "per_device"])
def test_sharded_global_batch_equals_unsharded(band_scope):
  assert jax.device_count() == 8, "conftest forces 8 CPU devices"
  s_aug, s_clean, t = _rand(32, 8, seed=9), _rand(32, 8, seed=10), _rand(32, 8, seed=11)
  kw = dict(alpha=0.25, beta=0.75, band_scope=band_scope, num_groups=8)
  f = jax.jit(jax.value_and_grad(lambda a, c, t: uts.uts_loss(a, c, t, **kw)[0], argnums=(0, 1)))
  one = jax.device_get(f(s_aug, s_clean, t))
  mesh = sharding.make_mesh()
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P(sharding.DATA_AXIS)))
  with jax.set_mesh(mesh):
    eight = jax.device_get(f(put(s_aug), put(s_clean), put(t)))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  if band_scope == "per_device":  # Each device's 4 rows form their own band.
    _, terms = uts.uts_loss(s_aug, s_clean, t, **kw)
    np.testing.assert_allclose(terms["intra_aug"], _per_group_numpy(s_aug, 8, 0.25, 0.75),
                               rtol=1e-5)
