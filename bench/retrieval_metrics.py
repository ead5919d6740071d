"""Benchmark: vtd's `retrieval_metrics` vs plain NumPy counting and CE's own `metric.py`.

Default size is the MSR-VTT full test split: 2,990 videos x 20 captions (59,800 x 2,990
similarities, float32, fixed seed, ground truth boosted by --signal so recalls are non-trivial).
Implementations, each in its own spawned process (which creates the matrix, records its peak
RSS, then runs; "extra RSS" is the growth of ru_maxrss beyond that point, i.e. the working
memory on top of the input matrix, for vtd including XLA compilation):

* vtd: `retrieval_metrics` (t2v + v2t in one streamed pass, jitted; compile excluded);
* numpy count: the plain NumPy version of the same closed form, rank = #(s > gt) +
  (#(s == gt) - 1) / 2, counted over row blocks of --numpy-block rows (t2v row sums, v2t
  column sums against each video's best caption) -- the "plain NumPy" baseline;
* CE metric.py: `t2v_metrics` + `v2t_metrics` of albanie/collaborative-experts
  `model/metric.py`, imported unmodified from --peer-path (a local checkout; torch and
  sklearn, which the file imports but these functions do not use, are stubbed if absent).

Times are the median of --repeats calls (CE: --peer-repeats). Metrics must be identical
(exact float equality, CE's keys MedR/MeanR = vtd's MdR/MnR). The scaling table times vtd and
NumPy against the number of queries (captions per video --scale-captions at N_v fixed).

  python bench/retrieval_metrics.py [--peer-path /work/peers/albanie+collaborative-experts]
  python bench/retrieval_metrics.py --quick      # small sizes, seconds
Goals: >= 1.5x NumPy counting, >= 10x CE, extra memory <= 1/10 of CE's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `vtd`

import measure  # noqa: E402  (bench/ is on sys.path as the script folder)

KEYS = ("R1", "R5", "R10", "R50", "MdR", "MnR", "geometric_mean_R1-R5-R10")
CE_KEYS = {"MdR": "MedR", "MnR": "MeanR"}
IMPLS = {"vtd": "vtd retrieval_metrics", "numpy": "NumPy counting (plain)",
         "ce": "CE metric.py (official)"}


def make_sims(num_videos: int, captions: int, seed: int, signal: float) -> np.ndarray:
  """[N_v * K, N_v] float32 standard-normal similarities, video-major caption rows."""
  rng = np.random.default_rng(seed)
  sims = rng.standard_normal((num_videos * captions, num_videos), dtype=np.float32)
  rows = np.arange(num_videos * captions)
  sims[rows, rows // captions] += np.float32(signal)
  return sims


def numpy_counting(sims: np.ndarray, block: int) -> dict[str, dict[str, float]]:
  """Plain NumPy t2v / v2t metrics (all captions valid) by counting, block by block."""
  from vtd.evaluators.retrieval import metrics_from_ranks  # pylint: disable=g-import-not-at-top
  num_queries, num_videos = sims.shape
  k = num_queries // num_videos
  rows = np.arange(num_queries)
  own = sims[rows, rows // k]
  best = own.reshape(num_videos, k).max(axis=1)
  t2v = np.empty(num_queries)
  v2t_greater = np.zeros(num_videos, np.int64)
  v2t_equal = np.zeros(num_videos, np.int64)
  for start in range(0, num_queries, block):
    chunk, gt = sims[start:start + block], own[start:start + block, None]
    t2v[start:start + block] = (chunk > gt).sum(1) + ((chunk == gt).sum(1) - 1) / 2
    v2t_greater += (chunk > best).sum(0)
    v2t_equal += (chunk == best).sum(0)
  return {"t2v": metrics_from_ranks(t2v),
          "v2t": metrics_from_ranks(v2t_greater + (v2t_equal - 1) / 2)}


def _worker(impl: str, args: argparse.Namespace, num_videos: int, captions: int,
            repeats: int, conn) -> None:
  if impl == "vtd":
    import jax  # pylint: disable=g-import-not-at-top
    from vtd.evaluators.retrieval import retrieval_metrics  # pylint: disable=g-import-not-at-top
    jax.devices()  # Initialise the backend before the memory baseline.
    run = lambda s: retrieval_metrics(s)
  elif impl == "numpy":
    from vtd.evaluators import retrieval  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    # (imported before the memory baseline: numpy_counting uses its metrics_from_ranks)
    run = lambda s: numpy_counting(s, args.numpy_block)
  else:
    ce = measure.load_peer_module(os.path.join(args.peer_path, "model", "metric.py"),
                                  "ce_metric", ("torch", "sklearn.metrics"))
    run = lambda s: {"t2v": ce.t2v_metrics(s), "v2t": ce.v2t_metrics(s)}
  sims = make_sims(num_videos, captions, args.seed, args.signal)
  base = measure.peak_rss_mib()
  seconds, times, metrics = measure.median_time(lambda: run(sims), repeats,
                                                warmup=impl == "vtd")
  if impl == "ce":
    metrics = {d: {key: float(m[CE_KEYS.get(key, key)]) for key in KEYS}
               for d, m in metrics.items()}
  conn.send({"time": seconds, "times": times, "extra_rss": measure.peak_rss_mib() - base,
             "metrics": {d: {key: m[key] for key in KEYS} for d, m in metrics.items()}})
  conn.close()


def run_impl(impl: str, args: argparse.Namespace, num_videos: int, captions: int,
             repeats: int) -> dict:
  return measure.run_in_subprocess(_worker, impl, args, num_videos, captions, repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-videos", type=int, default=2990)
  parser.add_argument("--captions", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=5, help="timed calls of vtd and NumPy")
  parser.add_argument("--peer-repeats", type=int, default=1, help="timed calls of CE")
  parser.add_argument("--peer-path", default=None,
                      help="local checkout of albanie/collaborative-experts (optional)")
  parser.add_argument("--numpy-block", type=int, default=256, help="rows per NumPy block")
  parser.add_argument("--scale-captions", default="2,5,10,20",
                      help="captions per video of the scaling table ('' to skip)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--signal", type=float, default=2.0, help="added to gt similarities")
  parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
  args = parser.parse_args()
  if args.quick:
    measure.SAME_PROCESS = True  # (memory figures then not per implementation)
    args.num_videos, args.captions, args.repeats = 300, 10, 3
    args.scale_captions = "2,5,10"

  n_q, n_v = args.num_videos * args.captions, args.num_videos
  print(f"sims [{n_q} x {n_v}] float32 ({n_q * n_v * 4 / 2**20:.0f} MiB), {os.cpu_count()} "
        f"CPUs (shared), median of {args.repeats} calls (CE: {args.peer_repeats})")
  impls = ["vtd", "numpy"] + (["ce"] if args.peer_path else [])
  res = {}
  for impl in impls:
    repeats = args.peer_repeats if impl == "ce" else args.repeats
    res[impl] = run_impl(impl, args, n_v, args.captions, repeats)

  for impl in impls[1:]:
    same = all(res[impl]["metrics"][d][key] == res["vtd"]["metrics"][d][key]
               for d in ("t2v", "v2t") for key in KEYS)
    print(f"metrics identical to {IMPLS[impl]}: {'yes' if same else 'NO'}")
  for d in ("t2v", "v2t"):
    m = res["vtd"]["metrics"][d]
    print(f"  {d}: " + ", ".join(f"{key}={m[key]:.4g}" for key in KEYS))
  print()
  print("| implementation | time (s, median) | vtd speed-up | extra peak RSS (MiB) |")
  print("|---|---:|---:|---:|")
  for impl in impls:
    r = res[impl]
    print(f"| {IMPLS[impl]} | {r['time']:.3f} | {r['time'] / res['vtd']['time']:.2f}x | "
          f"{r['extra_rss']:.0f} |")
  if "ce" in res:
    print(f"vtd extra memory / CE's: {res['vtd']['extra_rss'] / res['ce']['extra_rss']:.3f}")
  print("goals: >= 1.5x NumPy counting, >= 10x CE metric.py, extra memory <= 1/10 of CE's")

  caps = [int(c) for c in args.scale_captions.split(",") if c]
  if caps:
    times = {"vtd": [], "numpy": []}
    for c in caps:
      for impl in times:
        times[impl].append(run_impl(impl, args, n_v, c, args.repeats)["time"])
    print()
    print(f"Scaling with the number of queries (N_v = {n_v}, K captions per video):")
    print(measure.scaling_table("queries N_q", [n_v * c for c in caps], times))


if __name__ == "__main__":
  main()
