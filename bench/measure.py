"""Shared by the benchmarks: best-of-N timing, running one implementation in a fresh process,
reading its peak memory.

Each implementation runs in its own spawned process so that its peak RSS (and JAX's
compilation cache) is not inherited from, or shared with, the others in the same run.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from typing import Any, Callable


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_in_subprocess(worker: Callable[..., None], *args: Any) -> Any:
  """Calls `worker(*args, conn)` in a spawned process; returns what it `conn.send`s."""
  ctx = mp.get_context("spawn")
  parent, child = ctx.Pipe(duplex=False)
  proc = ctx.Process(target=worker, args=(*args, child))
  proc.start()
  child.close()
  result = parent.recv()
  proc.join()
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
