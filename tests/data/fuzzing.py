"""Damaged variants of a valid file, and a check that a reader fails on them only with UserError."""

from __future__ import annotations

import collections
import os
import traceback
from typing import Any, Callable, Iterator

import numpy as np

from vtd.errors import UserError

KINDS = ("random", "truncated", "bit-flipped", "zeroed")


def variants(good: bytes, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
  """`count` damaged copies of `good`, deterministic in `seed`, cycling through `KINDS`:

  random: random bytes of a random length up to 2 x len(good) (the first 8 bytes of `good`
    kept in every other one, so the format's magic number does not reject them all at once);
  truncated: a prefix of random length (0 included);
  bit-flipped: 1-8 random bits inverted;
  zeroed: a random block of 1-4096 bytes set to zero.
  """
  rng = np.random.default_rng(seed)
  n = len(good)
  for i in range(count):
    kind = KINDS[i % len(KINDS)]
    if kind == "random":
      data = rng.bytes(int(rng.integers(1, 2 * n + 1)))
      if (i // len(KINDS)) % 2:
        data = good[:8] + data[8:]
    elif kind == "truncated":
      data = good[:int(rng.integers(0, n))]
    elif kind == "bit-flipped":
      flipped = bytearray(good)
      for _ in range(int(rng.integers(1, 9))):
        flipped[int(rng.integers(n))] ^= 1 << int(rng.integers(8))
      data = bytes(flipped)
    else:
      start, length = int(rng.integers(n)), int(rng.integers(1, 4097))
      data = good[:start] + bytes(min(length, n - start)) + good[start + length:]
    yield kind, data


def check_reader(read: Callable[[str], Any], good_path: str, count: int, seed: int,
                 check: Callable[[Any], None] | None = None) -> collections.Counter:
  """Overwrites `good_path` with each variant of its bytes and calls `read(good_path)`.

  Every call must return (then `check(result)` runs, and may only raise UserError as well) or
  raise UserError with a one-line message naming the file (its base name); anything else
  fails, listing the first offending variants. Restores the original bytes at the end.

  Returns:
    Counter of outcomes: "loaded", "UserError" (and, per kind, "<kind>/<outcome>").
  """
  with open(good_path, "rb") as f:
    good = f.read()
  read(good_path)  # The undamaged file must load.
  counts, failures = collections.Counter(), []
  try:
    for i, (kind, data) in enumerate(variants(good, count, seed)):
      with open(good_path, "wb") as f:
        f.write(data)
      try:
        result = read(good_path)
        if check is not None:
          check(result)
        outcome = "loaded"
      except UserError as e:
        outcome = "UserError"
        if "\n" in str(e) or os.path.basename(good_path) not in str(e):
          failures.append(f"#{i} {kind}: UserError not one line naming the file: {str(e)!r}")
      except Exception as e:  # pylint: disable=broad-except  # What the test is looking for.
        where = traceback.extract_tb(e.__traceback__)[-1]
        failures.append(f"#{i} {kind} ({len(data)} bytes): {type(e).__name__}: {e} "
                        f"[{os.path.basename(where.filename)}:{where.lineno}]")
        outcome = type(e).__name__
      counts[outcome] += 1
      counts[f"{kind}/{outcome}"] += 1
  finally:
    with open(good_path, "wb") as f:
      f.write(good)
  assert not failures, f"{len(failures)} of {count} damaged files escaped UserError:\n" + \
      "\n".join(failures[:10])
  return counts
