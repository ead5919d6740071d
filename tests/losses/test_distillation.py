import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtd.losses import distillation


def test_aggregations():
  t = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 4)), jnp.float32)
  np.testing.assert_allclose(distillation.aggregate_teachers(t, "mean"), t.mean(0), rtol=1e-6)
  np.testing.assert_allclose(distillation.aggregate_teachers(t, "median"), np.median(t, 0))
  np.testing.assert_allclose(distillation.aggregate_teachers(t, "max"), t.max(0))
  with pytest.raises(ValueError, match="aggregation"):
    distillation.aggregate_teachers(t, "vote")


def test_smooth_l1_known_values():
  s = jnp.array([[0.0, 3.0], [0.5, 0.0]])
  t = jnp.zeros((2, 2))
  # Huber(delta=1): 0.5 x^2 for |x| < 1, |x| - 0.5 otherwise; mean over the 4 entries.
  expected = (0 + 2.5 + 0.125 + 0) / 4
  np.testing.assert_allclose(distillation.similarity_distillation_loss(s, t), expected)


@pytest.mark.parametrize("criterion", distillation.CRITERIA)
def test_zero_at_target_and_no_gradient_into_teachers(criterion):
  s = jnp.asarray(np.random.default_rng(1).normal(size=(5, 5)), jnp.float32)
  np.testing.assert_allclose(distillation.similarity_distillation_loss(s, s, criterion), 0.0,
                             atol=1e-6)
  t = s + 0.3
  g_teacher = jax.grad(lambda x: distillation.similarity_distillation_loss(s, x, criterion))(t)
  assert np.all(np.asarray(g_teacher) == 0)
  g_student = jax.grad(lambda x: distillation.similarity_distillation_loss(x, t, criterion))(s)
  assert np.abs(np.asarray(g_student)).sum() > 0


def test_shape_mismatch():
  with pytest.raises(ValueError, match="differ in shape"):
    distillation.similarity_distillation_loss(jnp.zeros((2, 2)), jnp.zeros((3, 3)))
