"""Benchmark: student inference ms/image vs the VideoPCA teacher's ms/frame, same run.

  python bench/segmentation_students.py [--size 64] [--batch 16] [--reference-widths]
  python bench/segmentation_students.py --quick

Each student of `configs/segmentation.py` (its CPU-sized widths, or the reference widths with
--reference-widths) runs jitted inference on a batch of `--size` px frames; the teacher is the
jitted VideoPCA kernel on a 32-frame video at the same size (per-frame cost). Times exclude
compilation; best of --repeats. The papers' claim: students are much cheaper per image than
the teacher (LowRes-Net / DilateU-Net 0.02 s vs HPP 0.35 s on GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

import measure  # noqa: E402  (bench/ is on sys.path as the script folder)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=64, help="frame side, px")
  parser.add_argument("--batch", type=int, default=16, help="images per student call")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--reference-widths", action="store_true",
                      help="the papers' widths instead of the CPU-sized config")
  parser.add_argument("--students", default="", help="comma-separated ('' = the config's)")
  parser.add_argument("--quick", action="store_true",
                      help="32 px, batch 2, one repeat, one student (compile-bound)")
  args = parser.parse_args()
  if args.quick:
    args.size, args.batch, args.repeats = 32, 2, 1
    args.students = args.students or "dense_unet"
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import segmentation as seg_config  # pylint: disable=g-import-not-at-top
  from vtd.segmentation import models  # pylint: disable=g-import-not-at-top
  from vtd.segmentation import students  # pylint: disable=g-import-not-at-top
  from vtd.segmentation import videopca  # pylint: disable=g-import-not-at-top

  cfg = seg_config.get_config()
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.integers(0, 255, (1, 32, args.size, args.size, 3), np.uint8))
  vcfg = videopca.VideoPCAConfig(size=None)
  teacher_s = measure.best_time(lambda: videopca.videopca_batch(video, cfg=vcfg), args.repeats,
                                 warmup=True)[0] / 32
  images = jnp.asarray(rng.integers(0, 255, (args.batch, args.size, args.size, 3), np.uint8))
  rows = []
  for name in (args.students or cfg.students.names).split(","):
    model = (models.STUDENTS[name]() if args.reference_widths
             else students.build_student(name, cfg.students))
    variables = model.init(jax.random.key(0), images[:2].astype(jnp.float32), train=False)
    apply = jax.jit(lambda v, x, model=model: model.apply(v, x.astype(jnp.float32) / 255,
                                                          train=False))
    seconds = measure.best_time(lambda: apply(variables, images), args.repeats,
                               warmup=True)[0] / args.batch
    params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    rows.append((name, params, seconds))
  widths = "reference" if args.reference_widths else "config (CPU-sized)"
  print(f"{args.size} px, batch {args.batch}, widths: {widths}, {jax.default_backend()}")
  print("| model | params | ms/image | vs VideoPCA ms/frame |")
  print("|---|---|---|---|")
  print(f"| VideoPCA teacher (T = 32) | - | {1000 * teacher_s:.2f} | 1.00x |")
  for name, params, seconds in rows:
    print(f"| {name} | {params:,} | {1000 * seconds:.2f} | {seconds / teacher_s:.2f}x |")


if __name__ == "__main__":
  main()
