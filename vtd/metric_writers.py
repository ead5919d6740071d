"""Metric writing: console logging, JSONL in the workdir and TensorBoard event files.

A clu-like interface (`write_scalars`, `write_hparams`, `flush`, `close`) without clu, whose
writers import TensorFlow. Only process 0 writes files; every process may call the methods.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from etils import epath

from vtd import artifacts


def _to_float(value: Any) -> float:
  return float(np.asarray(value))


class MetricWriter:
  """Writes scalars to `<logdir>/metrics.jsonl` and TensorBoard events under `<logdir>/tb`.

  metrics.jsonl holds one row per logged step. It is rewritten atomically at every `flush`
  (small files; works on object stores, which cannot append), and `truncate_after(step)` drops
  the rows a resumed run is about to log again, so no step appears twice. TensorBoard gets the
  same cut through `purge_step`.

  Args:
    logdir: directory for this run's metrics (created if missing; local or object store).
    tensorboard: also write TensorBoard event files via tensorboardX.
    jsonl: also write metrics.jsonl (off for TensorBoard-only summaries).
  """

  def __init__(self, logdir: Any, *, tensorboard: bool = True, jsonl: bool = True):
    self._is_writer = jax.process_index() == 0
    self._jsonl = jsonl
    self._logdir = epath.Path(logdir)
    self._path = self._logdir / "metrics.jsonl"
    self._tensorboard = tensorboard
    self._tb = None
    self._purge_step: int | None = None
    self._rows: list[dict[str, Any]] = []
    self._dirty = False
    if self._is_writer and jsonl and self._path.exists():
      self._rows = read_jsonl(self._path)

  def truncate_after(self, step: int) -> None:
    """Forgets rows logged after `step` (call when resuming from the checkpoint at `step`)."""
    kept = [r for r in self._rows if r.get("step", 0) <= step]
    if len(kept) != len(self._rows):
      self._rows, self._dirty = kept, True
      self._purge_step = step + 1

  def _tensorboard_writer(self):
    if self._tb is None and self._tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      try:
        self._tb = SummaryWriter(str(self._logdir / "tb"), purge_step=self._purge_step)
      except ImportError as e:  # gs:// event files need google-cloud-storage.
        logging.warning("no TensorBoard events for %s (%s); metrics.jsonl is still written",
                        self._logdir, e)
        self._tensorboard = False
    return self._tb

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Appends one row (and TensorBoard scalars); the console line is `ProgressReporter`'s."""
    values = {k: _to_float(v) for k, v in scalars.items()}
    if not self._is_writer:
      return
    self._rows.append({"step": int(step), "time": time.time(),
                       **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}})
    self._dirty = True
    tb = self._tensorboard_writer()
    if tb is not None:
      for k, v in values.items():
        tb.add_scalar(k, v, global_step=int(step))

  def write_hparams(self, hparams: Mapping[str, Any],
                    metrics: Mapping[str, float] | None = None) -> None:
    """The run's settings (and final metrics) for TensorBoard's text and HParams tabs."""
    tb = self._tensorboard_writer() if self._is_writer else None
    if tb is not None:
      flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
              for k, v in hparams.items()}
      tb.add_text("hparams", json.dumps(flat, indent=1, sort_keys=True), 0)
      tb.add_hparams(flat, {k: float(v) for k, v in (metrics or {}).items()}, name="hparams")

  def flush(self) -> None:
    if self._is_writer and self._dirty and self._jsonl:
      text = "".join(json.dumps(r) + "\n" for r in self._rows)
      artifacts.write_atomic(self._path, lambda f: f.write(text.encode("utf-8")))
      self._dirty = False
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(path: Any) -> list[dict[str, Any]]:
  """Reads a metrics.jsonl file (one record per line; a torn last line is skipped)."""
  rows = []
  for line in epath.Path(path).read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue
  return rows


class ProgressReporter:
  """One console line per log interval: step, a few training terms, steps/s and the ETA.

  The clock starts when `start_clock` is called after the first step returned, so neither
  the rate nor the ETA includes compilation.
  """

  def __init__(self, num_steps: int, start_step: int, *, every: int, prefix: str = ""):
    self._num_steps = num_steps
    self._every = max(1, every)
    self._prefix = prefix
    self._last_step = start_step
    self._last_time = time.monotonic()

  def start_clock(self, step: int) -> None:
    self._last_step, self._last_time = step, time.monotonic()

  def __call__(self, step: int, scalars: Mapping[str, float] | None = None) -> float | None:
    """Call after finishing `step`; returns steps/s when it logged, else None."""
    if step % self._every and step != self._num_steps:
      return None
    now = time.monotonic()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9) \
        if step > self._last_step else None
    terms = "".join(f" | {k} {v:.4g}" for k, v in _headline(scalars or {}))
    timing = (f" | {rate:.2f} steps/s | ETA {_format_seconds((self._num_steps - step) / rate)}"
              if rate else "")
    logging.info("%s step %d/%d%s%s", self._prefix, step, self._num_steps, terms, timing)
    self._last_step, self._last_time = step, now
    return rate


def _headline(scalars: Mapping[str, float], limit: int = 3) -> list[tuple[str, float]]:
  """The loss first, then up to `limit - 1` other terms (never the gradient norm)."""
  keys = ["loss"] if "loss" in scalars else []
  keys += [k for k in sorted(scalars) if k not in ("loss", "grad_norm")][:limit - len(keys)]
  return [(k, scalars[k]) for k in keys]


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
