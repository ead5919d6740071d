"""Multi-host start-up: one call that works on a laptop, under SLURM, on a TPU pod, or by hand.

`maybe_initialize` must run before anything touches a device (jax.distributed's rule).
"""

from __future__ import annotations

import os

import jax
from absl import logging
import ml_collections

# Environment variables whose presence means "a cluster launched us"; jax's own cluster
# detectors (jax/_src/clusters) read the rest of what they need from the same environment.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS")
_TPU_VARS = ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")


def cluster_detected(environ: dict[str, str] | None = None) -> str | None:
  """Names the cluster environment we run in ('slurm', 'tpu', 'coordinator') or None."""
  env = os.environ if environ is None else environ
  if all(v in env for v in _SLURM_VARS) and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if any(v in env for v in _TPU_VARS):
    return "tpu"
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "coordinator"
  return None


def maybe_initialize(cfg: ml_collections.ConfigDict) -> bool:
  """Calls `jax.distributed.initialize` when the config or the environment asks for it.

  Args:
    cfg: the `config.distributed` group: `mode` (auto|on|off), `coordinator_address`,
      `num_processes`, `process_id`, `cpu_collectives`.

  Returns:
    True when a multi-process runtime was initialised.
  """
  mode = cfg.mode
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"config.distributed.mode must be auto|on|off, got {mode!r}")
  if mode == "off":
    return False
  explicit = bool(cfg.coordinator_address)
  cluster = cluster_detected()
  if mode == "auto" and not explicit and cluster is None:
    return False
  # CPU processes talk through gloo; the default CPU backend has no cross-process collectives.
  if cfg.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
  if explicit:
    if cfg.num_processes < 1 or not 0 <= cfg.process_id < cfg.num_processes:
      raise ValueError(
          "config.distributed: explicit coordinator_address needs num_processes >= 1 and "
          f"0 <= process_id < num_processes (got {cfg.num_processes}, {cfg.process_id})")
    jax.distributed.initialize(coordinator_address=cfg.coordinator_address,
                               num_processes=cfg.num_processes,
                               process_id=cfg.process_id)
  else:
    # SLURM / TPU / JAX_COORDINATOR_ADDRESS: jax reads everything from the environment.
    jax.distributed.initialize()
  logging.info("jax.distributed initialised (%s): process %d/%d, %d local / %d global devices",
               "explicit" if explicit else cluster, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True
