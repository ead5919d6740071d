"""Optimisers and learning-rate schedules from `config.optim` (one place for every method)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adam", "radam", "ranger", "sgd")


def learning_rate_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """`constant`, or `step`: lr * decay_rate ** floor(step / (decay_every_epochs * steps_per_epoch)).

  `step` with decay_rate 0.95 every epoch is CE/TeachText's StepLR(1 epoch, gamma=0.95). A
  config with a positive `decay_every_steps` (methods that train by steps) gives the period in
  steps instead.
  """
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.lr)
  if cfg.schedule == "step":
    return optax.exponential_decay(
        cfg.lr, transition_steps=max(1, round(cfg.get("decay_every_steps", 0) or
                                              cfg.decay_every_epochs * steps_per_epoch)),
        decay_rate=cfg.decay_rate, staircase=True)
  raise ValueError(f"config.optim.schedule must be 'constant' or 'step', got {cfg.schedule!r}")


class LookaheadState(NamedTuple):
  inner: optax.OptState
  slow: optax.Params
  count: jax.Array


def lookahead(inner: optax.GradientTransformation, sync_period: int,
              alpha: float) -> optax.GradientTransformation:
  """Lookahead (Zhang et al. 2019) keeping the slow weights in the optimiser state.

  Unlike `optax.lookahead` this needs no special params wrapper, so it drops into the generic
  train state. Every `sync_period` steps: slow += alpha * (fast - slow), fast <- slow.
  """

  def init(params):
    return LookaheadState(inner.init(params), jax.tree.map(jnp.asarray, params),
                          jnp.zeros((), jnp.int32))

  def update(grads, state, params):
    updates, inner_state = inner.update(grads, state.inner, params)
    fast = optax.apply_updates(params, updates)
    count = state.count + 1
    sync = count % sync_period == 0
    slow = jax.tree.map(lambda s, f: jnp.where(sync, s + alpha * (f - s), s), state.slow, fast)
    new_params = jax.tree.map(lambda s, f: jnp.where(sync, s, f), slow, fast)
    updates = jax.tree.map(lambda n, p: n - p, new_params, params)
    return updates, LookaheadState(inner_state, slow, count)

  return optax.GradientTransformation(init, update)


def create_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int
                     ) -> optax.GradientTransformation:
  """Builds the optimiser named by `cfg.name`.

  Weight decay is decoupled (p <- p - lr * wd * p), as in the RAdam/Ranger code TeachText uses.
  """
  lr = learning_rate_schedule(cfg, steps_per_epoch)
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name must be one of {OPTIMIZERS}, got {cfg.name!r}")
  if cfg.name == "sgd":
    base = optax.sgd(lr, momentum=cfg.momentum or None)
  elif cfg.name == "adam":
    base = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  else:  # radam / ranger
    base = optax.radam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, threshold=cfg.radam_threshold)
  chain = []
  if cfg.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  chain.append(base)
  if cfg.weight_decay > 0:
    chain.append(_decoupled_weight_decay(cfg.weight_decay, lr))
  tx = optax.chain(*chain)
  if cfg.name == "ranger":
    tx = lookahead(tx, cfg.lookahead_steps, cfg.lookahead_alpha)
  return tx


def _decoupled_weight_decay(weight_decay: float, lr: optax.Schedule
                            ) -> optax.GradientTransformation:
  """Adds -lr(step) * wd * p to the updates (PyTorch AdamW/RAdam `p.mul_(1 - lr * wd)`)."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros((), jnp.int32))

  def update(updates, state, params):
    step_lr = lr(state.count)
    updates = jax.tree.map(lambda u, p: u - step_lr * weight_decay * p, updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)
