"""Checkpointing with orbax: periodic saves, keep-last-N plus keep-best-by-metric, auto-resume.

One `Checkpointer` per trained model, in `<stage_dir>/checkpoints`. A checkpoint holds the train
state (params, optimiser state, BN statistics, rng, step) and, when given, the grain data
iterator, so a resumed run sees exactly the batches an uninterrupted one would have seen.
Frozen teachers are never stored here: they live in their own stage directories and are
referenced by path.

Orbax saves asynchronously and every process must call `save`/`restore` (it coordinates the
writes itself), so nothing here is guarded by `process_index() == 0`. A save interrupted by
kill -9 leaves a temporary directory that orbax ignores, so the previous checkpoint survives.
"""

from __future__ import annotations

import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from vtd import sharding

_STATE = "state"
_DATA_ITER = "data_iter"


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with vtd's retention rules.

  Args:
    directory: where step directories are written.
    keep_last: number of most recent checkpoints kept.
    best_metric: name of a metric passed to `save(..., metrics=)`; the best checkpoint by it is
      kept as well (and returned by `best_step`). None disables best tracking.
    best_mode: 'max' or 'min'.
    enable_async: save in a background thread (default); tests may turn it off.
  """

  def __init__(self, directory: str, *, keep_last: int = 2, best_metric: str | None = None,
               best_mode: str = "max", enable_async: bool = True):
    if keep_last < 1:
      raise ValueError(f"checkpoint keep_last must be >= 1, got {keep_last}")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = (os.path.abspath(directory) if "://" not in str(directory)
                      else str(directory))
    self.best_metric = best_metric
    policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep_last)]
    best_fn = None
    if best_metric is not None:
      best_fn = lambda metrics: float(metrics[best_metric])
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=enable_async, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best `best_metric` (latest step when not tracking a metric)."""
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *, data_iter: Any = None,
           metrics: dict[str, float] | None = None) -> None:
    items = {_STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[_DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    # Steps without metrics are not candidates for "best"; they are kept only as latest-N.
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any, *, data_iter: Any = None) -> Any:
    """Restores the state at `step` into the shardings of `abstract_state`.

    Args:
      step: checkpoint step.
      abstract_state: pytree of `jax.ShapeDtypeStruct` with `.sharding` (e.g. from
        `jax.eval_shape` + shardings); arrays come back placed like it.
      data_iter: a grain iterator whose position is restored in place, if given.
    """
    items = {_STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items[_DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored[_STATE]

  def restore_latest(self, abstract_state: Any, *, data_iter: Any = None
                     ) -> tuple[int | None, Any]:
    """(step, state) of the newest checkpoint that restores; (None, None) if there is none.

    A checkpoint that fails to restore (a kill or a full disk during a save, files removed by
    hand) is moved to `<directory>_unreadable/<step>` with a warning naming it and the error,
    and the previous one is tried: a damaged latest checkpoint costs the steps since the one
    before, never the run.
    """
    # A failed restore may have moved the iterator; a fresh start needs its initial position.
    initial = data_iter.get_state() if data_iter is not None else None
    while (step := self.latest_step()) is not None:
      try:
        return step, self.restore(step, abstract_state, data_iter=data_iter)
      except Exception as e:  # pylint: disable=broad-except  # Any damage; the cause is logged.
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        target = self._move_aside(step)
        logging.warning("checkpoint step %d in %s cannot be restored (%s); moved it to %s; "
                        "trying the previous checkpoint", step, self.directory, reason, target)
    if data_iter is not None:
      data_iter.set_state(initial)
    return None, None

  def _move_aside(self, step: int) -> epath.Path:
    source = epath.Path(self.directory) / str(step)
    target = epath.Path(f"{self.directory}_unreadable") / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      source.rename(target)
    sharding.sync(f"checkpoint-moved-{step}")
    self._manager.reload()
    return target

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """`ShapeDtypeStruct`s (with shardings) describing a concrete pytree of jax.Arrays."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
