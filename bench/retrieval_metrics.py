"""Benchmark: vtd's `retrieval_metrics` vs a vectorised NumPy port of the official CE metrics.

Default size is the MSR-VTT full test split: 2,990 videos x 20 captions (59,800 x 2,990
similarities, float32, fixed seed, ground truth boosted by --signal so recalls are non-trivial).
Each implementation runs in its own spawned process, which creates the matrix, records its
peak RSS, then runs; "extra peak RSS" is the growth of ru_maxrss beyond that point, i.e. the
working memory on top of the input matrix (for vtd it includes XLA compilation).

  python bench/retrieval_metrics.py [--num-videos 2990 --captions 20 --repeats 3]
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

KEYS = ("R1", "R5", "R10", "R50", "MdR", "MnR", "geometric_mean_R1-R5-R10", "num_queries")


def make_sims(num_videos: int, captions: int, seed: int, signal: float) -> np.ndarray:
  """[N_v * K, N_v] float32 standard-normal similarities, video-major caption rows."""
  rng = np.random.default_rng(seed)
  sims = rng.standard_normal((num_videos * captions, num_videos), dtype=np.float32)
  rows = np.arange(num_videos * captions)
  sims[rows, rows // captions] += np.float32(signal)
  return sims


def cols2metrics(cols: np.ndarray, num_queries: int) -> dict[str, float]:
  """The official cols2metrics (R1 counts rank == 0), with gmean = 0 if a recall is 0."""
  m = {"R1": 100 * float(np.sum(cols == 0)) / num_queries,
       "R5": 100 * float(np.sum(cols < 5)) / num_queries,
       "R10": 100 * float(np.sum(cols < 10)) / num_queries,
       "R50": 100 * float(np.sum(cols < 50)) / num_queries,
       "MdR": float(np.median(cols) + 1),
       "MnR": float(np.mean(cols) + 1)}
  r = np.array([m["R1"], m["R5"], m["R10"]])
  m["geometric_mean_R1-R5-R10"] = float(np.exp(np.log(r).mean())) if r.min() > 0 else 0.0
  m["num_queries"] = float(num_queries)
  return m


def numpy_official(sims: np.ndarray, query_mask: np.ndarray) -> dict[str, dict[str, float]]:
  """Official CE t2v/v2t ("averaging" ties), vectorised: full-matrix sorts, no loop over rows.

  Args:
    sims: [N_q, N_v] similarities, N_q = N_v * K, video-major.
    query_mask: [N_v, K] bool.
  """
  num_queries, num_videos = sims.shape
  k = num_queries // num_videos
  flat_mask = query_mask.reshape(-1)
  rows = np.arange(num_queries)

  # t2v, as official t2v_metrics: sort each row of -sims, locate the gt value, average ties.
  dists = -sims
  gt_dists = dists[rows, rows // k][:, None]
  sorted_dists = np.sort(dists, axis=1)
  del dists
  locs = np.argwhere(sorted_dists == gt_dists)  # row-major, so grouped by row
  del sorted_dists
  splits = np.insert(np.nonzero(np.diff(locs[:, 0]))[0] + 1, 0, 0)
  summed = np.add.reduceat(locs[:, 1], splits)
  counts = np.diff(np.append(splits, locs.shape[0]))
  t2v_ranks = (summed / counts)[flat_mask]

  # v2t, as official v2t_metrics: per video, sort the caption distances (missing = 1e8),
  # average the tied positions of each own caption and keep the best. The loop runs over the
  # K caption slots (20), each step vectorised over all videos.
  dists_t = np.ascontiguousarray(-sims.T)  # [N_v, N_q]
  dists_t[:, ~flat_mask] = 1e8
  sorted_t = np.sort(dists_t, axis=1)
  videos = np.arange(num_videos)
  ranks = np.full((num_videos, k), np.inf)
  for j in range(k):
    own = dists_t[videos, videos * k + j][:, None]
    eq = sorted_t == own
    first = eq.argmax(axis=1)  # sorted, so the ties are first, ..., first + count - 1
    count = np.count_nonzero(eq, axis=1)
    ranks[:, j] = np.where(query_mask[:, j], first + (count - 1) / 2, np.inf)
  v2t_ranks = ranks.min(axis=1)
  return {"t2v": cols2metrics(t2v_ranks, int(flat_mask.sum())),
          "v2t": cols2metrics(v2t_ranks, num_videos)}


def _worker(impl: str, args: argparse.Namespace, conn) -> None:
  if impl == "vtd":
    import jax  # pylint: disable=g-import-not-at-top
    from vtd.evaluators.retrieval import retrieval_metrics  # pylint: disable=g-import-not-at-top
    jax.devices()  # initialise the backend before the memory baseline
    run = lambda s, m: retrieval_metrics(s, m, query_chunk=args.query_chunk)
  else:
    run = numpy_official
  sims = make_sims(args.num_videos, args.captions, args.seed, args.signal)
  mask = np.ones((args.num_videos, args.captions), bool)
  base = measure.peak_rss_mib()
  times = []
  first = None
  if impl == "vtd":
    t0 = time.perf_counter()
    metrics = run(sims, mask)
    first = time.perf_counter() - t0
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    metrics = run(sims, mask)
    times.append(time.perf_counter() - t0)
  conn.send({"times": times, "first": first, "metrics": metrics,
             "extra_rss": measure.peak_rss_mib() - base, "sims_mib": sims.nbytes / 2**20})
  conn.close()


def run_impl(impl: str, args: argparse.Namespace) -> dict:
  return measure.run_in_subprocess(_worker, impl, args)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-videos", type=int, default=2990)
  parser.add_argument("--captions", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=3, help="timed runs of each")
  parser.add_argument("--query-chunk", type=int, default=2048)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--signal", type=float, default=2.0, help="added to gt similarities")
  args = parser.parse_args()

  n_q, n_v = args.num_videos * args.captions, args.num_videos
  print(f"sims [{n_q} x {n_v}] float32 ({n_q * n_v * 4 / 2**20:.0f} MiB), "
        f"{os.cpu_count()} CPUs, repeats={args.repeats}, query_chunk={args.query_chunk}")
  res = {impl: run_impl(impl, args) for impl in ("vtd", "numpy")}

  diffs = [abs(res["vtd"]["metrics"][d][key] - res["numpy"]["metrics"][d][key])
           for d in ("t2v", "v2t") for key in KEYS]
  equal = all(np.isclose(res["vtd"]["metrics"][d][key], res["numpy"]["metrics"][d][key],
                         rtol=1e-12, atol=0) for d in ("t2v", "v2t") for key in KEYS)
  print(f"metrics equal: {'yes' if equal else 'NO'} (max abs diff {max(diffs):.3g})")
  for d in ("t2v", "v2t"):
    m = res["vtd"]["metrics"][d]
    print(f"  {d}: " + ", ".join(f"{key}={m[key]:.4g}" for key in KEYS))

  t_np = min(res["numpy"]["times"])
  t_vtd = min(res["vtd"]["times"])
  first = res["vtd"]["first"]
  print()
  print(f"{'implementation':<26}{'time (s, best)':>16}{'speedup':>10}{'extra peak RSS (MiB)':>22}")
  print(f"{'numpy (official, vect.)':<26}{t_np:>16.3f}{1.0:>9.1f}x"
        f"{res['numpy']['extra_rss']:>22.0f}")
  print(f"{'vtd retrieval_metrics':<26}{t_vtd:>16.3f}{t_np / t_vtd:>9.1f}x"
        f"{res['vtd']['extra_rss']:>22.0f}")
  print(f"{'vtd first call':<26}{first:>16.3f}   (compile + run; compile ~ "
        f"{first - t_vtd:.3f} s)")
  print(f"all times (s): numpy {['%.3f' % t for t in res['numpy']['times']]}, "
        f"vtd {['%.3f' % t for t in res['vtd']['times']]}")


if __name__ == "__main__":
  main()
