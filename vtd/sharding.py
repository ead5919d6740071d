"""Device mesh and shardings: data parallelism as `jax.jit` over a `Mesh` with `NamedSharding`.

One mesh axis, `data`. Parameters and optimiser state are replicated (`P()`), batches are split
along their leading axis (`P('data')`). Everything the losses compute (e.g. the B x B
similarity matrices of TeachText) is written against *global* arrays, so it is automatically
computed over the global batch across devices and hosts; XLA inserts the collectives.

We use `AxisType.Auto` (not the `jax.make_mesh` default, Explicit) because the models are
written without sharding annotations; under Explicit axes `a @ b.T` of two batch-sharded
operands is a type error. Auto lets the compiler choose layouts, which for replicated
parameters and a batch axis is the plain data-parallel program.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from vtd.errors import UserError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D `data` mesh over `devices` (default: all global devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split across the `data` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = "batch_size") -> int:
  """Returns the per-process batch size; raises a one-line error when it does not divide."""
  n_dev = mesh.devices.size
  if global_batch_size % n_dev:
    raise UserError(f"{what}={global_batch_size} is not divisible by the {n_dev} devices of the "
                     f"mesh; use a multiple of {n_dev}")
  return global_batch_size // jax.process_count()


def process_slice(global_batch_size: int) -> slice:
  """Rows of a global batch that this process feeds (contiguous, process-major)."""
  per_process = global_batch_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Turns this process's slice of a batch (a pytree of numpy arrays) into global jax.Arrays."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (identical on every process) replicated on every device of the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def to_local(tree: Any) -> Any:
  """Fully replicated global arrays -> numpy on this host (works across processes)."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(fetch, tree)


def sync(name: str) -> None:
  """Barrier across processes (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def gather_to_host(x: jax.Array) -> np.ndarray:
  """A (possibly batch-sharded, multi-process) global array as one numpy array on every host."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
