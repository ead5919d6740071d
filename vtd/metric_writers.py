"""Metric writing: console logging, JSONL in the workdir and TensorBoard event files.

A clu-like interface (`write_scalars`, `write_hparams`, `flush`, `close`) without clu, whose
writers import TensorFlow. Only process 0 writes files; every process may call the methods.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging


def _to_float(value: Any) -> float:
  return float(np.asarray(value))


class MetricWriter:
  """Writes scalars to `<logdir>/metrics.jsonl` and TensorBoard events under `<logdir>/tb`.

  Args:
    logdir: directory for this run's metrics (created if missing).
    tensorboard: also write TensorBoard event files via tensorboardX.
    prefix: a name logged before each line (e.g. the stage name).
  """

  def __init__(self, logdir: str, *, tensorboard: bool = True, prefix: str = ""):
    self._prefix = prefix
    self._is_writer = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self._is_writer:
      os.makedirs(logdir, exist_ok=True)
      # Append: a resumed run continues the same file; readers keep the last value per step.
      self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", encoding="utf-8")
      if tensorboard:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(logdir, "tb"))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = {k: _to_float(v) for k, v in scalars.items()}
    text = ", ".join(f"{k}={v:.5g}" for k, v in sorted(values.items()))
    logging.info("%s[%d] %s", f"{self._prefix} " if self._prefix else "", step, text)
    if not self._is_writer:
      return
    record = {"step": int(step), "time": time.time(),
              **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, global_step=int(step))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if self._is_writer and self._tb is not None:
      flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
              for k, v in hparams.items()}
      self._tb.add_text("hparams", json.dumps(flat, indent=1, sort_keys=True), 0)

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self.flush()
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """Reads a metrics.jsonl file (one record per line)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class ProgressReporter:
  """Logs steps/s and the ETA every `every` steps (console progress for long runs)."""

  def __init__(self, num_steps: int, start_step: int, *, every: int, prefix: str = ""):
    self._num_steps = num_steps
    self._every = max(1, every)
    self._prefix = prefix
    self._last_step = start_step
    self._last_time = time.monotonic()

  def __call__(self, step: int) -> float | None:
    """Call after finishing `step`; returns steps/s when it logged, else None."""
    if step % self._every and step != self._num_steps:
      return None
    now = time.monotonic()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    eta = (self._num_steps - step) / max(rate, 1e-9)
    logging.info("%s step %d/%d (%.1f%%), %.2f steps/s, ETA %s", self._prefix, step,
                 self._num_steps, 100.0 * step / self._num_steps, rate, _format_seconds(eta))
    self._last_step, self._last_time = step, now
    return rate


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
