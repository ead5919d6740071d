"""Shared by the benchmarks: run one implementation in a fresh process, read its peak memory.

Each implementation runs in its own spawned process so that its peak RSS (and JAX's
compilation cache) is not inherited from, or shared with, the others in the same run.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
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
