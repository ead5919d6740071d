"""The one training loop every vtd method uses.

A method describes *what* to train as a `Program` (initialiser, loss, optimiser, data iterator,
optional frozen inputs such as teachers, optional validation); `fit` does the rest the same way
for all of them: sharded init, jitted step, checkpoint/resume (state and data position),
metric writing, progress, periodic validation with keep-best, and a NaN/inf guard.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.sharding import Mesh

from vtd import checkpointing
from vtd import metric_writers
from vtd import plots
from vtd import sharding
from vtd.errors import UserError

# (params, batch_stats, batch, frozen, rng) -> (loss, (measurements, new_batch_stats))
LossFn = Callable[[Any, Any, Any, Any, jax.Array], tuple[jax.Array, tuple[dict, Any]]]


class NonFiniteLossError(UserError):
  """Training produced a NaN/inf loss or gradient; the message names the step and what to do.

  A user error: it comes from the config (learning rate, loss weights) or the data."""


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, checkpointed as a whole."""
  step: jax.Array  # int32 [], number of completed steps.
  params: Any
  batch_stats: Any  # BatchNorm running statistics ({} when the model has none).
  opt_state: Any
  rng: jax.Array  # Base key; step s uses fold_in(rng, s), so resuming replays the same keys.

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


@dataclasses.dataclass
class Program:
  """What a method hands to `fit`.

  Attributes:
    name: stage name used in logs.
    init_variables: rng -> {'params': ..., 'batch_stats': ...} (linen `init` output).
    loss_fn: see `LossFn`; differentiated w.r.t. params only.
    optimizer: optax transformation.
    train_iter: checkpointable grain iterator yielding this process's rows of each global
      batch (a pytree of numpy arrays, leading axis = per-process batch).
    num_steps: total optimisation steps.
    frozen: pytree passed to every step untouched (teacher params, cached teacher
      embeddings...); replicated on the mesh, never checkpointed.
    evaluate: variables -> {metric: value}, run every `eval_every_steps` and at the end.
  """
  name: str
  init_variables: Callable[[jax.Array], dict[str, Any]]
  loss_fn: LossFn
  optimizer: optax.GradientTransformation
  train_iter: Iterator[Any]
  num_steps: int
  frozen: Any = None
  evaluate: Callable[[Mapping[str, Any]], dict[str, float]] | None = None


@dataclasses.dataclass
class FitResult:
  variables: dict[str, Any]  # The selected (best-on-validation, else last) model variables.
  step: int  # The step those variables come from.
  metrics: dict[str, float]  # Validation metrics of that step ({} without `evaluate`).


def _is_due(step: int, every: int, num_steps: int) -> bool:
  return step == num_steps or (every > 0 and step % every == 0)


def make_train_step(program: Program, mesh: Mesh, state_sharding: Any) -> Callable:
  """The jitted step: (state, batch, frozen) -> (state, measurements)."""
  repl = sharding.replicated(mesh)

  def train_step(state: TrainState, batch: Any, frozen: Any):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss(params):
      return program.loss_fn(params, state.batch_stats, batch, frozen, rng)

    (loss_value, (measurements, batch_stats)), grads = jax.value_and_grad(
        loss, has_aux=True)(state.params)
    updates, opt_state = program.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    measurements = {"loss": loss_value, "grad_norm": grad_norm, **measurements}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, measurements

  return jax.jit(train_step, donate_argnums=(0,), out_shardings=(state_sharding, repl))


def create_state(program: Program, mesh: Mesh, seed: int) -> TrainState:
  """Initialises the state directly on the mesh (replicated)."""
  init_rng, state_rng = jax.random.split(jax.random.key(seed))
  repl = sharding.replicated(mesh)

  # Both keys are arguments, not closure constants: the compiled init is then the same for
  # every seed, so the persistent compilation cache serves later seeds and stages.
  def init(rng, state_rng):
    variables = program.init_variables(rng)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=program.optimizer.init(params),
                      rng=jax.random.key_data(state_rng))

  return jax.jit(init, out_shardings=repl)(init_rng, state_rng)


def _check_finite(step: int, measurements: Mapping[str, Any], last_good: int | None,
                  ckpt_dir: str) -> dict[str, float]:
  values = {k: float(np.asarray(v)) for k, v in measurements.items()}
  bad = sorted(k for k, v in values.items() if not np.isfinite(v))
  if bad:
    raise NonFiniteLossError(
        f"non-finite {', '.join(bad)} at step {step}; last good checkpoint: "
        f"{'step ' + str(last_good) if last_good is not None else 'none'} in {ckpt_dir}; "
        "lower config.optim.lr or set config.optim.grad_clip_norm, and check the data")
  return values


def _key_metrics(metrics: Mapping[str, float], loop_cfg) -> list[tuple[str, float]]:
  """The checkpoint-selection metric, or the first two, for one console line."""
  if loop_cfg.best_metric and loop_cfg.best_metric in metrics:
    return [(loop_cfg.best_metric, metrics[loop_cfg.best_metric])]
  return sorted(metrics.items())[:2]


def _log_validation(name: str, step: int, metrics: Mapping[str, float], loop_cfg,
                    best: tuple[int, float] | None) -> tuple[int, float] | None:
  """One line per validation (every metric is in metrics.jsonl and TensorBoard)."""
  shown = _key_metrics(metrics, loop_cfg)
  text = ", ".join(f"{k} {v:.4g}" for k, v in shown)
  if loop_cfg.best_metric in metrics:
    value = metrics[loop_cfg.best_metric]
    if best is None or (value > best[1] if loop_cfg.best_mode == "max" else value < best[1]):
      best = (step, value)
    text += f" (best {best[1]:.4g} at step {best[0]})"
  logging.info("%s step %d validation: %s", name, step, text)
  return best


def fit(program: Program, loop_cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh,
        seed: int) -> FitResult:
  """Trains `program`, resuming from `<workdir>/checkpoints` if a checkpoint is there.

  Args:
    program: what to train.
    loop_cfg: `log_every_steps`, `eval_every_steps`, `checkpoint_every_steps`, `keep_last`,
      `best_metric`, `best_mode`, `async_checkpointing`, `tensorboard`.
    workdir: this model's directory (checkpoints, metrics.jsonl, tb/).
    mesh: device mesh; batches are split along its `data` axis.
    seed: initialisation and per-step randomness.

  Returns:
    The variables to use downstream: the best validation checkpoint if `program.evaluate`
    is set, else the last one.
  """
  track_best = program.evaluate is not None and loop_cfg.best_metric
  ckpt = checkpointing.Checkpointer(
      epath.Path(workdir) / "checkpoints", keep_last=loop_cfg.keep_last,
      best_metric=loop_cfg.best_metric if track_best else None, best_mode=loop_cfg.best_mode,
      enable_async=loop_cfg.async_checkpointing)
  writer = metric_writers.MetricWriter(workdir, tensorboard=loop_cfg.tensorboard)
  try:
    result = _fit(program, loop_cfg, mesh, seed, ckpt, writer)
  finally:
    ckpt.close()
    writer.close()
  if jax.process_index() == 0:
    plots.training_curves(epath.Path(workdir) / "metrics.jsonl",
                          epath.Path(workdir) / "curves.png", title=program.name,
                          val_metric=loop_cfg.best_metric if track_best else "",
                          selected_step=result.step)
  return result


def _fit(program, loop_cfg, mesh, seed, ckpt, writer) -> FitResult:
  logging.info("%s: initialising the model (compiling its init)...", program.name)
  state = create_state(program, mesh, seed)
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  frozen = None if program.frozen is None else sharding.replicate(program.frozen, mesh)
  start, restored = ckpt.restore_latest(checkpointing.abstract_like(state),
                                        data_iter=program.train_iter)
  if start is not None:
    logging.info("%s: resuming from step %d in %s", program.name, start, ckpt.directory)
    state = restored
  start = start or 0
  writer.truncate_after(start)  # Rows logged after the restored step are replayed.
  last_good = start if start else None
  train_step = make_train_step(program, mesh, state_sharding)
  progress = metric_writers.ProgressReporter(program.num_steps, start,
                                             every=loop_cfg.log_every_steps, prefix=program.name)
  if start < program.num_steps:
    logging.info("%s: compiling the training step...", program.name)
  window: list[dict[str, float]] = []
  pending = None  # (step, device measurements): checked one step late to keep dispatch async.
  metrics: dict[str, float] = {}
  best_so_far: tuple[int, float] | None = None
  with jax.set_mesh(mesh):
    for step in range(start + 1, program.num_steps + 1):
      batch = sharding.shard_batch(next(program.train_iter), mesh)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, measurements = train_step(state, batch, frozen)
      if step == start + 1:
        progress.start_clock(step)  # Compiled and dispatched: rates exclude compilation.
      if pending is not None:
        window.append(_check_finite(*pending, last_good, ckpt.directory))
      pending = (step, measurements)
      log_now = _is_due(step, loop_cfg.log_every_steps, program.num_steps)
      eval_now = program.evaluate is not None and _is_due(
          step, loop_cfg.eval_every_steps, program.num_steps)
      save_now = eval_now or _is_due(step, loop_cfg.checkpoint_every_steps, program.num_steps)
      if log_now or save_now:  # Never log or save a state we have not checked.
        window.append(_check_finite(*pending, last_good, ckpt.directory))
        pending = None
      if log_now:
        mean = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
        rate = progress(step, mean)
        if rate is not None:
          mean["steps_per_sec"] = rate
        writer.write_scalars(step, {f"train/{k}": v for k, v in mean.items()})
        window = []
      metrics = {}
      if eval_now:
        metrics = program.evaluate(sharding.to_local(state.variables))
        writer.write_scalars(step, {f"val/{k}": v for k, v in metrics.items()})
        best_so_far = _log_validation(program.name, step, metrics, loop_cfg, best_so_far)
      if save_now:
        ckpt.save(step, state, data_iter=program.train_iter,
                  metrics=(metrics or None) if ckpt.best_metric else None)
        last_good = step
        writer.flush()
  ckpt.wait_until_finished()
  best = ckpt.best_step() if ckpt.best_metric else ckpt.latest_step()
  if best != program.num_steps or start == program.num_steps:
    # Restore the selected step (also covers "already finished": nothing was trained now).
    state = ckpt.restore(best, checkpointing.abstract_like(state))
  if program.evaluate is not None and (best != program.num_steps or not metrics):
    metrics = program.evaluate(sharding.to_local(state.variables))
  logging.info("%s: selected step %d of %d%s", program.name, best, program.num_steps,
               "".join(f" ({k} {v:.4g})" for k, v in _key_metrics(metrics, loop_cfg)))
  return FitResult(variables=sharding.to_local(state.variables), step=int(best), metrics=metrics)
