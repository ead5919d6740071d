"""A tiny linear-regression Program to test the generic training loop in isolation."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vtd import sharding
from vtd import train as train_lib


def make_program(*, num_steps=12, batch_size=8, nan_at_step=None, evaluate=True, seed=0):
  """Regression y = x w*; batch number `nan_at_step` (1-based = its step) carries a NaN target."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(64, 4)).astype(np.float32)
  y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
  rows = sharding.process_slice(batch_size)

  def gather(batch_index, idx):
    idx = idx[rows]
    target = y[idx].copy()
    if nan_at_step is not None and batch_index + 1 == nan_at_step:
      target[0] = np.nan
    return {"x": x[idx], "y": target}

  ds = (grain.MapDataset.range(64).seed(seed).shuffle().repeat().batch(batch_size)
        .map_with_index(gather))

  def init_variables(rng_key):
    return {"params": {"w": jax.random.normal(rng_key, (4,)) * 0.1}}

  def loss_fn(params, batch_stats, batch, frozen, rng_key):
    del frozen
    noise = 0.01 * jax.random.normal(rng_key, ())  # Exercises the per-step key.
    loss = jnp.mean((batch["x"] @ params["w"] + noise - batch["y"]) ** 2)
    return loss, ({"mse": loss}, batch_stats)

  def validate(variables):
    return {"neg_mse": -float(np.mean((x @ np.asarray(variables["params"]["w"]) - y) ** 2))}

  return train_lib.Program(
      name="toy", init_variables=init_variables, loss_fn=loss_fn, optimizer=optax.sgd(0.05),
      train_iter=iter(ds.to_iter_dataset()), num_steps=num_steps,
      evaluate=validate if evaluate else None)
