"""One way to derive a seed for a part of a run (a stage, a student, a generation)."""

from __future__ import annotations

import zlib


def derive_seed(seed: int, name: str) -> int:
  """A seed in [0, 2^31 - 1) for the part `name` (e.g. "teacher_w2v", "gen2/basic_unet") of a
  run with `config.seed`: stable across processes and Python versions (crc32, not hash()), and
  different parts of one run get unrelated streams."""
  return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)
