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


# Host buffers aligned to this many bytes are aliased by `jax.device_put` on CPU instead of
# copied (XLA:CPU's buffer alignment); NumPy's own large allocations are only 16-byte aligned.
ALIGN_BYTES = 64


def window_size(block_rows: int, cols: int, itemsize: int) -> int:
  """Elements of a flat window holding `block_rows` rows at any alignment shift."""
  return block_rows * cols + ALIGN_BYTES // itemsize


def host_row_windows(array: np.ndarray, block_rows: int, dtype: Any
                     ) -> Iterator[tuple[int, int, np.ndarray, int]]:
  """Row blocks of a host [n, cols] array as flat windows: (start, rows, window, shift).

  `window` has `window_size` elements and holds the block's rows * cols values from element
  `shift` on. Where the array is C-contiguous in `dtype`, the window is a view of the
  caller's memory that starts on an aligned address (so `jax.device_put` aliases it: the
  matrix is read in place, never copied); other blocks (the first and last ones of a
  misaligned buffer, another dtype, a strided view) are converted into a zero-padded copy,
  one block at a time. The kernel side is `block_from_window`.
  """
  dtype = np.dtype(dtype)
  n, cols = array.shape
  itemsize = dtype.itemsize
  size = window_size(block_rows, cols, itemsize)
  in_place = (array.dtype == dtype and array.flags.c_contiguous
              and ALIGN_BYTES % itemsize == 0 and array.ctypes.data % itemsize == 0)
  flat = array.reshape(-1) if in_place else None
  for start in range(0, n, block_rows):
    rows = min(block_rows, n - start)
    if in_place and rows == block_rows:
      first = start * cols
      shift = (array.ctypes.data + first * itemsize) % ALIGN_BYTES // itemsize
      if first - shift >= 0 and first - shift + size <= flat.size:
        yield start, rows, flat[first - shift:first - shift + size], int(shift)
        continue
    window = np.zeros(size, dtype)
    window[:rows * cols] = np.asarray(array[start:start + rows], dtype).reshape(-1)
    yield start, rows, window, 0


def block_from_window(window: jax.Array, shift: jax.Array, block_rows: int,
                      cols: int) -> jax.Array:
  """[block_rows, cols] view of a `host_row_windows` window (inside a jitted kernel, the
  slice and reshape fuse into the consumer: nothing is copied)."""
  return jax.lax.dynamic_slice(window, (shift,), (block_rows * cols,)).reshape(block_rows,
                                                                              cols)
