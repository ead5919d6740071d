"""Benchmark: the VideoPCA teacher -- vtd vs the HPP port (the peer's own code) vs NumPy.

  python bench/videopca.py [--peer-path /work/peers/emanuelahaller+HPP] [--size 300]
                           [--frames 795] [--clip 64] [--video PATH]
  python bench/videopca.py --quick

The video is OpenCV's `vtest.avi` (Debian's opencv-doc package; 795 frames) when present, else
a synthetic one (a red disc over a drifting texture); frames are resized to --size square
with bicubic interpolation, as HPP's driver does, and given to every implementation as uint8
(RGB to vtd and NumPy, BGR to HPP, whose code converts with COLOR_BGR2HSV). Implementations:

* vtd: the jitted kernel (`videopca_soft_masks` on the whole video; `videopca_batch` on the
  clips: all clips in one call, and, separately, one clip per call);
* HPP: `hpp.video_pca.video_pca` of emanuelahaller/HPP, imported unmodified from
  --peer-path (a local checkout), i.e. step 1 of HPP = VideoPCA;
* NumPy: `vtd.segmentation.videopca_numpy` in float32 (NumPy + OpenCV + SciPy).

Two workloads: the whole video in one PCA, and the video split into near-equal clips of at
most --clip frames (`split_video`; one PCA each). Every (implementation, workload) runs in its
own spawned process: it reads the video, then (vtd) compiles, then resets the kernel's
peak-RSS counter; "extra MiB" is the peak resident memory of the first run beyond the
resident memory before it (inputs, and for vtd the compiled kernel, excluded; outputs
included). Times: median of --repeats runs after that first one. Masks are compared with
NumPy's (IoU of > 0.5) and with HPP's (HPP differs from the description in five documented
places, so its IoU is < 1 by design; reference Addendum).

The scaling tables time vtd and NumPy (and HPP with --peer-scaling) against T at --size and
against the resolution at T = --clip, and fit the exponent of time vs frames x pixels.
Goals: >= 5x HPP whole-video and in clips; extra memory <= 2x the frames at
T = 795, 300 px; batching clips never slower than one at a time.
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

OPENCV_CLIP = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def load_video(path: str | None, size: int, frames: int) -> tuple[np.ndarray, str]:
  """([T, size, size, 3] uint8 RGB, description)."""
  import cv2  # pylint: disable=g-import-not-at-top
  if path:
    cap = cv2.VideoCapture(path)
    out = []
    while len(out) < frames:
      ok, frame = cap.read()
      if not ok:
        break
      frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_CUBIC)
      out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    if not out:
      raise SystemExit(f"cannot read {path}")
    return np.stack(out), f"{os.path.basename(path)} ({len(out)} frames)"
  rng = np.random.default_rng(0)
  pad = frames // 2 + 1
  coarse = rng.uniform(size=(size // 8 + 1, (size + pad) // 8 + 1, 3)).astype(np.float32)
  texture = cv2.resize(coarse, (size + pad, size), interpolation=cv2.INTER_CUBIC)
  background = 0.15 + 0.5 * np.clip(texture, 0, 1) * np.float32([0.3, 0.8, 0.9])
  yy, xx = np.mgrid[0:size, 0:size]
  video = np.empty((frames, size, size, 3), np.float32)
  for i in range(frames):
    angle = 2 * np.pi * i / frames
    cy, cx = size * (0.5 + 0.2 * np.sin(angle)), size * (0.5 + 0.25 * np.cos(angle))
    video[i] = background[:, i // 2:i // 2 + size]
    video[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= (size / 6) ** 2] = (0.9, 0.25, 0.15)
  video += 0.01 * rng.standard_normal(video.shape, dtype=np.float32)
  return (np.clip(video, 0, 1) * 255).round().astype(np.uint8), f"synthetic ({frames} frames)"


def _worker(impl: str, workload: str, args: argparse.Namespace, size: int, frames: int,
            conn) -> None:
  from vtd.segmentation import videopca as vp  # pylint: disable=g-import-not-at-top
  video, _ = load_video(args.video, size, frames)
  t = video.shape[0]
  clips = vp.split_video(t, args.clip) if workload != "whole" else [(0, t)]
  cfg = vp.VideoPCAConfig(size=None)
  if impl == "vtd":
    import jax  # pylint: disable=g-import-not-at-top
    if workload == "whole":
      inputs = (jax.device_put(video),)
      kernel = jax.jit(lambda v: vp.videopca_soft_masks(v, None, cfg)).lower(*inputs).compile()
      run = lambda: np.asarray(kernel(*inputs))
    else:
      longest = max(b - a for a, b in clips)
      batch = np.zeros((len(clips), longest) + video.shape[1:], np.uint8)
      masks = np.zeros((len(clips), longest), bool)
      for j, (a, b) in enumerate(clips):
        batch[j, :b - a], masks[j, :b - a] = video[a:b], True
      if workload == "clips batched":
        inputs = (jax.device_put(batch), jax.device_put(masks))
        kernel = vp.videopca_batch.lower(*inputs, cfg=cfg).compile()

        def run():
          out = np.asarray(kernel(*inputs))
          return np.concatenate([out[j, :b - a] for j, (a, b) in enumerate(clips)])
      else:  # one clip per call (the same compiled kernel: every clip padded to `longest`)
        calls = [(jax.device_put(batch[j:j + 1]), jax.device_put(masks[j:j + 1]))
                 for j in range(len(clips))]
        kernel = vp.videopca_batch.lower(*calls[0], cfg=cfg).compile()

        def run():
          return np.concatenate([np.asarray(kernel(*c))[0, :b - a]
                                 for c, (a, b) in zip(calls, clips)])
    del video
  elif impl == "hpp":
    sys.path.insert(0, args.peer_path)
    from hpp import video_pca  # pylint: disable=g-import-not-at-top
    bgr = [np.ascontiguousarray(f[..., ::-1]) for f in video]
    del video
    run = lambda: np.concatenate([np.stack(video_pca.video_pca(bgr[a:b])[0]) for a, b in clips])
  else:
    from vtd.segmentation import videopca_numpy as vn  # pylint: disable=g-import-not-at-top
    run = lambda: np.concatenate([vn.videopca_numpy(video[a:b], cfg, dtype=np.float32)[
        "soft_mask"] for a, b in clips])
  measure.reset_peak_rss()
  before = measure.current_rss_mib()
  t0 = time.perf_counter()
  masks_out = run()
  first = time.perf_counter() - t0
  extra = measure.peak_rss_mib() - before
  seconds = measure.median_time(run, args.repeats, warmup=False)[0] if args.repeats else first
  conn.send({"time": seconds, "first": first, "extra": extra, "frames": t,
             "masks": (masks_out > 0.5)})
  conn.close()


def run_impl(impl: str, workload: str, args: argparse.Namespace, size: int, frames: int):
  return measure.run_in_subprocess(_worker, impl, workload, args, size, frames)


def iou(a: np.ndarray, b: np.ndarray) -> float:
  return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--video", default=OPENCV_CLIP if os.path.exists(OPENCV_CLIP) else "",
                      help="a video file ('' = synthetic); default vtest.avi if installed")
  parser.add_argument("--size", type=int, default=300, help="working size, px (square)")
  parser.add_argument("--frames", type=int, default=795, help="frames of the whole video")
  parser.add_argument("--clip", type=int, default=64, help="longest clip, frames")
  parser.add_argument("--repeats", type=int, default=1, help="timed runs after the first")
  parser.add_argument("--peer-path", default=None, help="local checkout of emanuelahaller/HPP")
  parser.add_argument("--peer-scaling", action="store_true", help="HPP in the scaling tables")
  parser.add_argument("--scale-frames", default="32,64,128,256", help="T of the scaling table")
  parser.add_argument("--scale-sizes", default="64,128,256", help="sizes of the scaling table")
  parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
  args = parser.parse_args()
  if args.quick:
    measure.SAME_PROCESS = True  # (memory figures then not per implementation)
    args.size, args.frames, args.clip, args.repeats = 48, 24, 12, 1
    args.scale_frames, args.scale_sizes = "12", "32"
  video, what = load_video(args.video or None, args.size, args.frames)
  frames_mib = video.nbytes / 2**20
  del video

  import jax  # pylint: disable=g-import-not-at-top
  print(f"VideoPCA on {what} at {args.size} x {args.size}, uint8 frames = {frames_mib:.0f} MiB;"
        f" jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} CPUs (shared); "
        f"median of {args.repeats} run(s) after the first; each row its own process")
  impls = ["vtd"] + (["hpp"] if args.peer_path else []) + ["numpy"]
  rows = []
  for workload in ("whole", "clips batched", "clips one by one"):
    for impl in impls:
      if impl != "vtd" and workload == "clips one by one":
        continue  # (the peers have no batched mode: "clips" is one clip at a time for them)
      rows.append((workload, impl, run_impl(impl, workload, args, args.size, args.frames)))
  res = {(w, i): r for w, i, r in rows}
  print()
  print("| workload | implementation | frames/s | vs HPP | vs NumPy | extra MiB (x frames) | "
        "IoU vs NumPy | IoU vs HPP |")
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  for workload, impl, r in rows:
    base = "clips batched" if workload.startswith("clips") else workload
    fps = r["frames"] / r["time"]
    hpp, npy = res.get((base, "hpp")), res[(base, "numpy")]
    vs_hpp = f"{hpp['time'] / r['time']:.1f}x" if hpp else "-"
    iou_hpp = f"{iou(r['masks'], hpp['masks']):.3f}" if hpp else "-"
    name = {"vtd": "vtd", "hpp": "HPP port (official)", "numpy": "NumPy float32"}[impl]
    label = "clips, one per call" if workload == "clips one by one" else workload
    if workload.startswith("clips") and impl != "vtd":
      label = "clips"
    print(f"| {label} | {name} | {fps:.1f} | {vs_hpp} | {npy['time'] / r['time']:.1f}x | "
          f"{r['extra']:.0f} ({r['extra'] / frames_mib:.2f}x) | "
          f"{iou(r['masks'], npy['masks']):.4f} | {iou_hpp} |")
  one, batched = res[("clips one by one", "vtd")], res[("clips batched", "vtd")]
  print(f"vtd clips batched vs one per call: {one['time'] / batched['time']:.2f}x "
        f"(>= 1: batching is not slower)")
  print("goals: >= 5x HPP (whole video and clips), extra <= 2x frames at T = 795 / 300 px, "
        "batching clips never slower")

  scale_impls = ["vtd", "numpy"] + (["hpp"] if args.peer_path and args.peer_scaling else [])
  for axis, values in (("frames T", [int(x) for x in args.scale_frames.split(",") if x]),
                       ("size px", [int(x) for x in args.scale_sizes.split(",") if x])):
    if not values:
      continue
    times, work = {impl: [] for impl in scale_impls}, []
    for value in values:
      size, frames = (args.size, value) if axis == "frames T" else (value, args.clip)
      for impl in scale_impls:
        times[impl].append(run_impl(impl, "whole", args, size, frames)["time"])
      work.append(frames * size * size)
    print()
    fixed = f"at {args.size} px" if axis == "frames T" else f"at T = {args.clip}"
    print(f"Scaling with {axis} ({fixed}; whole video per call; exponent of time vs "
          f"frames x pixels):")
    print(measure.scaling_table(axis, values, times, work))


if __name__ == "__main__":
  main()
