import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtd.losses.ranking import max_margin_ranking_loss


def brute_force(s, m, fix_norm):
  b = s.shape[0]
  terms = []
  for i in range(b):
    for j in range(b):
      if fix_norm and i == j:
        continue
      terms.append(max(0.0, m - s[i, i] + s[i, j]))
      terms.append(max(0.0, m - s[i, i] + s[j, i]))
  return np.mean(terms)


@pytest.mark.parametrize("fix_norm", [True, False])
def test_matches_brute_force(fix_norm):
  s = np.random.default_rng(0).uniform(-1, 1, size=(7, 7)).astype(np.float32)
  got = max_margin_ranking_loss(jnp.asarray(s), 0.2, fix_norm=fix_norm)
  np.testing.assert_allclose(got, brute_force(s, 0.2, fix_norm), rtol=1e-6)


def test_zero_when_positives_dominate_and_gradient_direction():
  s = jnp.eye(4) * 1.0
  assert float(max_margin_ranking_loss(s, 0.5)) == 0.0
  s = jnp.zeros((4, 4))
  grad = jax.grad(lambda x: max_margin_ranking_loss(x, 0.1))(s)
  assert (np.diag(grad) < 0).all()  # Raising a positive lowers the loss.
  assert (grad[~np.eye(4, dtype=bool)] > 0).all()  # Raising a negative raises it.


def test_rejects_non_square():
  with pytest.raises(ValueError, match="square"):
    max_margin_ranking_loss(jnp.zeros((3, 4)), 0.1)
