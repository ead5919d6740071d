"""Shared by the benchmarks: timing, running one implementation in a fresh process, reading its
peak memory, scaling tables with a fitted exponent, importing a peer's own code from a path.

Each implementation runs in its own spawned process so that its peak RSS (and JAX's
compilation cache) is not inherited from, or shared with, the others in the same run.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from typing import Any, Callable, Sequence

import numpy as np


def peak_rss_mib() -> float:
  """Peak resident memory of this process (since the last `reset_peak_rss`), MiB."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
  """Resident memory of this process now, MiB."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return peak_rss_mib()


def reset_peak_rss() -> None:
  """Resets the kernel's peak-RSS counter (Linux `clear_refs` 5), so that `peak_rss_mib()`
  measures from here: e.g. the first run after compilation, not the compilation itself."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
  except OSError:
    pass


def _guarded(worker: Callable[..., None], *args: Any) -> None:
  conn = args[-1]
  try:
    worker(*args)
  except BaseException as e:  # pylint: disable=broad-except  (re-raised in the parent)
    import traceback  # pylint: disable=g-import-not-at-top
    conn.send(RuntimeError(f"{worker.__name__}{args[:-1]!r} failed:\n{traceback.format_exc()}"))
    raise SystemExit(1) from e


# Set by a benchmark's --quick mode: workers run in this process (seconds instead of a JAX
# start-up per row; memory figures are then not per implementation).
SAME_PROCESS = False


class _Inbox:
  """Stands in for the pipe end when the worker runs in this process."""

  def __init__(self):
    self.value = None

  def send(self, value: Any) -> None:
    self.value = value

  def close(self) -> None:
    pass


def run_in_subprocess(worker: Callable[..., None], *args: Any) -> Any:
  """Calls `worker(*args, conn)` in a spawned process; returns what it `conn.send`s (an
  exception in the worker is raised here, with its traceback). With SAME_PROCESS, calls it
  here."""
  if SAME_PROCESS:
    inbox = _Inbox()
    worker(*args, inbox)
    return inbox.value
  ctx = mp.get_context("spawn")
  parent, child = ctx.Pipe(duplex=False)
  proc = ctx.Process(target=_guarded, args=(worker, *args, child))
  proc.start()
  child.close()
  try:
    result = parent.recv()
  except EOFError as e:
    proc.join()
    raise RuntimeError(f"{worker.__name__} died (exit code {proc.exitcode})") from e
  proc.join()
  if isinstance(result, BaseException):
    raise result
  return result


def best_time(fn: Callable[[], Any], repeats: int, *, warmup: bool = False) -> tuple[float, Any]:
  """(best wall time of `repeats` calls in seconds, the last output). JAX outputs are waited
  for inside the timing; `warmup` makes one untimed call first (compilation)."""
  import jax  # pylint: disable=g-import-not-at-top
  if warmup:
    jax.block_until_ready(fn())
  out, times = None, []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return min(times), out


def median_time(fn: Callable[[], Any], repeats: int, *, warmup: bool = True
                ) -> tuple[float, list[float], Any]:
  """(median wall time in s, all times, the last output) of `repeats` calls; JAX outputs
  are waited for inside the timing. `warmup` makes one untimed call first (compilation)."""
  import jax  # pylint: disable=g-import-not-at-top
  if warmup:
    jax.block_until_ready(fn())
  out, times = None, []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), times, out


def fit_exponent(sizes: Sequence[float], times: Sequence[float]) -> float:
  """Least-squares slope of log(time) on log(size): cost ~ size ** exponent."""
  x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(times, float))
  return float(np.polyfit(x, y, 1)[0])


def scaling_table(size_name: str, sizes: Sequence[Any], times: dict[str, Sequence[float]],
                  work: Sequence[float] | None = None) -> str:
  """A markdown table of seconds per size for each implementation, plus the fitted exponent
  of each (against `work` if given, e.g. frames x pixels, else against `sizes`)."""
  names = list(times)
  lines = [f"| {size_name} | " + " | ".join(f"{n} (s)" for n in names) + " |",
           "|---|" + "---:|" * len(names)]
  for i, size in enumerate(sizes):
    cells = [f"{times[n][i]:.4g}" if times[n][i] is not None else "-" for n in names]
    lines.append(f"| {size} | " + " | ".join(cells) + " |")
  x = work if work is not None else sizes
  fits = []
  for n in names:
    pts = [(xi, ti) for xi, ti in zip(x, times[n]) if ti is not None]
    fits.append(f"{fit_exponent(*zip(*pts)):.2f}" if len(pts) >= 2 else "-")
  lines.append("| fitted exponent | " + " | ".join(fits) + " |")
  return "\n".join(lines)


def load_peer_module(path: str, name: str, stub_modules: Sequence[str] = ()) -> Any:
  """Imports the peer's own source file `path` as module `name`, unmodified.

  `stub_modules` are modules the file imports at top level but the benchmarked functions
  never use (e.g. torch in CE's metric.py); an empty placeholder module is registered for
  each that is not installed, so the file imports without them.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  added = []
  for mod in stub_modules:
    try:
      importlib.import_module(mod)
    except ImportError:
      parts = mod.split(".")
      for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) not in sys.modules:
          placeholder = types.ModuleType(".".join(parts[:i]))
          # Any attribute is an empty class: libraries probing for e.g. torch.Tensor during
          # the import see a type nothing is an instance of.
          placeholder.__getattr__ = lambda attr: type(attr, (), {})
          sys.modules[".".join(parts[:i])] = placeholder
          added.append(".".join(parts[:i]))
      if len(parts) > 1:
        setattr(sys.modules[".".join(parts[:-1])], parts[-1], sys.modules[mod])
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"cannot import {path}")
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # its sibling modules
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.pop(0)
    # Only the peer module keeps the placeholders: other libraries probe sys.modules (scipy
    # looks for torch.Tensor there).
    for mod in added:
      del sys.modules[mod]
  return module
