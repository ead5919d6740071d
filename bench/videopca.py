"""Benchmark: the jitted VideoPCA kernel vs the NumPy reference, frames per second.

  python bench/videopca.py [--sizes 128,256,300] [--frames 32,64,128,256] [--repeats 2]
  python bench/videopca.py --quick          # 128 and 256 px, T = 32 and 64

One synthetic video per configuration (a textured background drifting 1 px every 2 frames
and a red disc on a circular path, float32 RGB at the working size, so no resizing is timed),
processed by
  * `vtd.segmentation.videopca` (one `jax.jit` of the whole algorithm, float32), and
  * `vtd.segmentation.videopca_numpy` in float32 (NumPy + OpenCV + SciPy, like for like).
Each implementation and configuration runs in its own spawned process, which builds the video,
records its peak RSS, then runs: "extra RSS" is the growth of ru_maxrss beyond that point (for
JAX it includes XLA compilation). "XLA MiB" is the compiled kernel's own footprint from
`memory_analysis()` (arguments + outputs + temporaries). Times exclude compilation (reported
separately as "compile s"); the best of --repeats runs is kept. "IoU" is the mean IoU of the
binarised (> 0.5) soft masks with the disc, a check that both did the same work.
Project goal: >= 5x the NumPy frames/s on CPU. Large NumPy configurations above
--numpy-max-work (frames x pixels) are skipped, and marked so, to bound the run time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `vtd`

import measure  # noqa: E402  (bench/ is on sys.path as the script folder)


def make_video(frames: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """[T, S, S, 3] float32 frames in [0, 1] and [T, S, S] bool ground truth."""
  import cv2  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  pad = frames // 2 + 1
  coarse = rng.uniform(size=(size // 8 + 1, (size + pad) // 8 + 1, 3)).astype(np.float32)
  texture = cv2.resize(coarse, ((size + pad), size), interpolation=cv2.INTER_CUBIC)
  background = 0.15 + 0.5 * np.clip(texture, 0, 1) * np.float32([0.3, 0.8, 0.9])
  yy, xx = np.mgrid[0:size, 0:size]
  video = np.empty((frames, size, size, 3), np.float32)
  gt = np.empty((frames, size, size), bool)
  for i in range(frames):
    angle = 2 * np.pi * i / frames
    cy, cx = size * (0.5 + 0.2 * np.sin(angle)), size * (0.5 + 0.25 * np.cos(angle))
    gt[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size / 6) ** 2
    video[i] = background[:, i // 2:i // 2 + size]
    video[i][gt[i]] = (0.9, 0.25, 0.15)
  video += 0.01 * rng.standard_normal(video.shape, dtype=np.float32)
  return np.clip(video, 0, 1), gt


def mean_iou(soft: np.ndarray, gt: np.ndarray) -> float:
  pred = soft > 0.5
  inter, union = (pred & gt).sum((1, 2)), (pred | gt).sum((1, 2))
  return float(np.mean(inter / np.maximum(union, 1)))


def _worker(impl: str, frames: int, size: int, repeats: int, conn) -> None:
  from vtd.segmentation import videopca as vp  # pylint: disable=g-import-not-at-top
  cfg = vp.VideoPCAConfig(size=None)
  video, gt = make_video(frames, size)
  out = {"compile": None, "xla_mib": None}
  if impl == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    jax.devices()  # Initialise the backend before the memory baseline.
    video_dev = jax.device_put(video)
    base = measure.peak_rss_mib()
    t0 = time.perf_counter()
    kernel = jax.jit(lambda v: vp.videopca_soft_masks(v, None, cfg))
    compiled = kernel.lower(video_dev).compile()
    out["compile"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is not None:
      out["xla_mib"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                        + mem.temp_size_in_bytes) / 2**20
    jax.block_until_ready(compiled(video_dev))  # Warm-up run, untimed.
    run = lambda: np.asarray(jax.block_until_ready(compiled(video_dev)))
  else:
    from vtd.segmentation import videopca_numpy as vn  # pylint: disable=g-import-not-at-top
    base = measure.peak_rss_mib()
    run = lambda: vn.videopca_numpy(video, cfg, dtype=np.float32)["soft_mask"]
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    soft = run()
    times.append(time.perf_counter() - t0)
  out.update(time=min(times), extra_rss=measure.peak_rss_mib() - base, iou=mean_iou(soft, gt))
  conn.send(out)
  conn.close()


def run_impl(impl: str, frames: int, size: int, repeats: int) -> dict:
  return measure.run_in_subprocess(_worker, impl, frames, size, repeats)


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=_ints, default=[128, 256, 300], help="working sizes, px")
  parser.add_argument("--frames", type=_ints, default=[32, 64, 128, 256], help="frames T")
  parser.add_argument("--repeats", type=int, default=2, help="timed runs (best kept)")
  parser.add_argument("--numpy-max-work", type=float, default=256 * 256 * 256,
                      help="skip NumPy above this many frames x pixels (default 256 x 256^2)")
  parser.add_argument("--quick", action="store_true", help="sizes 128,256; frames 32,64")
  args = parser.parse_args()
  if args.quick:
    args.sizes, args.frames = [128, 256], [32, 64]

  import jax  # pylint: disable=g-import-not-at-top  (only to name the device)
  print(f"VideoPCA, one video per call; jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs; best of {args.repeats}; float32 for both")
  header = (f"{'size':>5} {'T':>4} | {'jax fps':>8} {'numpy fps':>9} {'ratio':>6} | "
            f"{'compile s':>9} {'jax extra RSS':>13} {'XLA MiB':>8} {'np extra RSS':>12} | "
            f"{'IoU jax':>7} {'IoU np':>6}")
  print(header)
  print("-" * len(header))
  for size in args.sizes:
    for frames in args.frames:
      j = run_impl("jax", frames, size, args.repeats)
      skip = frames * size * size > args.numpy_max_work
      n = None if skip else run_impl("numpy", frames, size, args.repeats)
      jfps = frames / j["time"]
      xla = f"{j['xla_mib']:8.0f}" if j["xla_mib"] is not None else f"{'n/a':>8}"
      if n is None:
        np_cols = f"{'skipped':>9} {'-':>6}"
        np_rest = f"{'skipped':>12} | {j['iou']:7.3f} {'-':>6}"
      else:
        nfps = frames / n["time"]
        np_cols = f"{nfps:9.1f} {jfps / nfps:5.1f}x"
        np_rest = f"{n['extra_rss']:9.0f} MiB | {j['iou']:7.3f} {n['iou']:6.3f}"
      print(f"{size:5d} {frames:4d} | {jfps:8.1f} {np_cols} | {j['compile']:9.2f} "
            f"{j['extra_rss']:9.0f} MiB {xla} {np_rest}", flush=True)
  print(f"NumPy skipped where frames x pixels > {args.numpy_max_work:.0f} (--numpy-max-work).")


if __name__ == "__main__":
  main()
