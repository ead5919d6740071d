import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common
from vtd import optim


def cfg(**kw):
  c = common.optimizer("adam", lr=0.1, weight_decay=0.0)
  c.update(kw)
  return c


def test_step_schedule_is_steplr():
  sched = optim.learning_rate_schedule(cfg(schedule="step", decay_rate=0.5), steps_per_epoch=10)
  assert [float(sched(s)) for s in (0, 9, 10, 25)] == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_decoupled_weight_decay_matches_pytorch_rule():
  """With zero gradients Adam's update is 0, so p <- p - lr * wd * p exactly."""
  tx = optim.create_optimizer(cfg(schedule="constant", weight_decay=0.5), steps_per_epoch=1)
  params = {"w": jnp.array([2.0, -4.0])}
  state = tx.init(params)
  updates, _ = tx.update({"w": jnp.zeros(2)}, state, params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * params["w"])


def test_lookahead_syncs_every_k_steps():
  inner = optax.sgd(1.0)
  tx = optim.lookahead(inner, sync_period=2, alpha=0.5)
  params = jnp.array(0.0)
  state = tx.init(params)
  grad = jnp.array(-1.0)  # Each fast step adds +1.
  u1, state = tx.update(grad, state, params)
  params = params + u1
  assert float(params) == 1.0  # Fast step, no sync yet.
  u2, state = tx.update(grad, state, params)
  params = params + u2
  # Fast weights reached 2; slow = 0 + 0.5 * (2 - 0) = 1 and fast is reset to slow.
  assert float(params) == 1.0 and float(state.slow) == 1.0


def test_unknown_optimizer():
  with pytest.raises(ValueError, match="config.optim.name"):
    optim.create_optimizer(cfg(name="lamb"), 1)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_reduces_a_quadratic(name):
  tx = optim.create_optimizer(cfg(name=name, lr=0.05, schedule="constant", weight_decay=1e-4),
                              steps_per_epoch=1)
  params = jnp.array([3.0, -2.0])

  def step(_, carry):
    params, state = carry
    updates, state = tx.update(2 * params, state, params)  # grad of |p|^2
    return optax.apply_updates(params, updates), state

  params, _ = jax.jit(lambda p: jax.lax.fori_loop(0, 600, step, (p, tx.init(p))))(params)
  assert float(jnp.sum(params ** 2)) < 0.5


def test_step_schedule_period_in_steps():
  """`decay_every_steps` (methods that train by steps, e.g. UTS pretraining) sets the period
  directly; steps_per_epoch is then irrelevant."""
  cfg = ml_collections.ConfigDict(dict(schedule="step", lr=1.0, decay_rate=0.5,
                                       decay_every_steps=3))
  for steps_per_epoch in (1, 7):
    lr = optim.learning_rate_schedule(cfg, steps_per_epoch)
    assert [float(lr(s)) for s in (0, 2, 3, 5, 6)] == [1.0, 1.0, 0.5, 0.5, 0.25]
