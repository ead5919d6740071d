"""Apply a jitted function over a large leading axis in fixed-size chunks (bounded memory).

The last chunk is padded to the chunk size so the function compiles once.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np


def leading_size(tree: Any) -> int:
  sizes = {np.shape(x)[0] for x in jax.tree.leaves(tree)}
  if len(sizes) != 1:
    raise ValueError(f"inputs disagree on the leading axis: {sorted(sizes)}")
  return sizes.pop()


def iterate_chunks(tree: Any, chunk_size: int) -> Iterator[tuple[int, int, Any]]:
  """Yields (start, valid, padded_chunk): chunks of `chunk_size` rows, the last zero-padded."""
  n = leading_size(tree)
  for start in range(0, n, chunk_size):
    valid = min(chunk_size, n - start)

    def take(x, start=start, valid=valid):
      part = np.asarray(x[start:start + valid])
      if valid < chunk_size:
        pad = np.zeros((chunk_size - valid,) + part.shape[1:], part.dtype)
        part = np.concatenate([part, pad])
      return part
    yield start, valid, jax.tree.map(take, tree)


def chunked_apply(fn: Callable[[Any], Any], tree: Any, chunk_size: int) -> Any:
  """fn over row chunks of `tree`, outputs concatenated (as numpy) along the leading axis.

  One chunk stays in flight: chunk i + 1 is dispatched before chunk i's output is fetched, so
  the host's slicing and copying overlap the (asynchronous) kernels; at most two chunks'
  outputs are held on the device.
  """
  n = leading_size(tree)
  chunk_size = max(1, min(chunk_size, n))
  outputs, pending = [], None

  def fetch(out, valid):
    return jax.tree.map(lambda y: np.asarray(y)[:valid], out)

  for _, valid, chunk in iterate_chunks(tree, chunk_size):
    out = fn(chunk)
    if pending is not None:
      outputs.append(fetch(*pending))
    pending = (out, valid)
  outputs.append(fetch(*pending))
  return jax.tree.map(lambda *ys: np.concatenate(ys), *outputs)
