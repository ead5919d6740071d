"""Benchmark: UTS frame-level retrieval (Algorithm 1) over 512-bit LSH frame codes.

Gallery: random 512-bit codes (64 B/frame), videos of `--frames-per-video` frames; each query
video's frames are planted, with `--flip` random bit flips each, as one gallery video (a near-
duplicate; the pipeline must rank it first). Compared in one process, on the same data:

* raw faiss IndexBinaryFlat k-NN of all query frames (top N) -- the baseline (1.0x);
* the whole vtd pipeline (`frame_level_scores`: k-NN + per-video aggregation) with the faiss
  and the JAX backend (JAX: compile excluded, reported separately);
* a NumPy popcount brute force k-NN, timed on a gallery subset and extrapolated linearly.

Index construction (add) is excluded everywhere. Times are the best of --repeats.

  python bench/frame_retrieval.py [--quick] [--sizes 100000,1000000 --queries 20]
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

NBITS = 512


def make_data(num_frames: int, args: argparse.Namespace, seed: int):
  """(gallery codes [N, 64] uint8, frame->video [N], query codes, query frame->video, planted
  gallery video of each query)."""
  rng = np.random.default_rng(seed)
  cs = NBITS // 8
  fpv = args.frames_per_video
  num_videos = -(-num_frames // fpv)
  gallery_video = np.minimum(np.arange(num_frames) // fpv, num_videos - 1)
  gallery = rng.integers(0, 256, (num_frames, cs), dtype=np.uint8)
  queries = rng.integers(0, 256, (args.queries * fpv, cs), dtype=np.uint8)
  query_video = np.repeat(np.arange(args.queries), fpv)
  planted = rng.choice(num_videos - 1, args.queries, replace=False)  # full-length videos
  for q, v in enumerate(planted):
    copy = queries[q * fpv:(q + 1) * fpv].copy()
    bits = np.unpackbits(copy, axis=1, bitorder="little")
    for row in bits:
      row[rng.choice(NBITS, args.flip, replace=False)] ^= 1
    gallery[v * fpv:(v + 1) * fpv] = np.packbits(bits, axis=1, bitorder="little")
  return gallery, gallery_video, num_videos, queries, query_video, planted


def run_size(num_frames: int, args: argparse.Namespace) -> list[tuple[str, float, str]]:
  from vtd.search import frame_level, hamming  # pylint: disable=g-import-not-at-top
  import faiss  # pylint: disable=g-import-not-at-top
  gallery, gv, num_videos, queries, qv, planted = make_data(num_frames, args, seed=num_frames)
  nq = args.queries
  rows = []

  raw = faiss.IndexBinaryFlat(NBITS)
  raw.add(gallery)
  t_raw, _ = measure.best_time(lambda: raw.search(queries, args.top_n), args.repeats)
  rows.append(("faiss IndexBinaryFlat k-NN (raw)", t_raw, ""))

  scores = {}
  for backend in args.backends:
    kw = {"chunk_size": args.chunk_size, "query_chunk": args.query_chunk} \
        if backend == "jax" else {}
    index = hamming.make_index(backend, NBITS, **kw)
    index.add(gallery)
    run = lambda index=index: frame_level.frame_level_scores(
        index, gv, num_videos, queries, qv, nq, nbits=NBITS, top_n=args.top_n,
        batch_frames=args.batch_frames)
    note = ""
    if backend == "jax":
      t0 = time.perf_counter()
      run()
      note = f"first call {time.perf_counter() - t0:.2f} s (compile + run)"
    t, res = measure.best_time(run, args.repeats)
    found = int(np.sum(res.dense().argmax(1) == planted))
    rows.append((f"vtd pipeline, {backend} backend", t, f"planted top-1 {found}/{nq}; " + note))
    scores[backend] = res.dense()
  if len(scores) == 2:
    same = np.allclose(scores["faiss"], scores["jax"], rtol=1e-12, atol=0)
    rows.append(("  faiss vs jax scores identical", float("nan"), "yes" if same else "NO"))

  sub = min(num_frames, args.numpy_rows)
  t_np, _ = measure.best_time(lambda: hamming.numpy_knn(queries, gallery[:sub], args.top_n), 1)
  note = f"timed on {sub:,} rows, x{num_frames / sub:.1f} extrapolated" if sub < num_frames \
      else "measured"
  rows.append(("numpy popcount brute-force k-NN", t_np * num_frames / sub, note))
  return rows


def index_scaling(args: argparse.Namespace) -> None:
  """faiss exact vs approximate binary indexes against the gallery size: search time of the
  query frames' k-NN and recall@k of the approximate ones (against the exact k-NN)."""
  import faiss  # pylint: disable=g-import-not-at-top
  sizes = [int(x) for x in args.scale_sizes.split(",") if x]
  if not sizes:
    return
  rng = np.random.default_rng(1)
  cs = NBITS // 8
  queries = rng.integers(0, 256, (args.scale_queries, cs), dtype=np.uint8)
  times = {"flat": [], "ivf": [], "hnsw": []}
  notes = []
  gallery = rng.integers(0, 256, (max(sizes), cs), dtype=np.uint8)
  # Near-duplicates of the queries (40 of 512 bits flipped), so the k-NN are not all ties.
  plant = rng.choice(max(sizes), args.scale_queries, replace=False)
  flips = np.zeros((args.scale_queries, NBITS), np.uint8)
  for row in flips:
    row[rng.choice(NBITS, args.flip, replace=False)] = 1
  gallery[plant] = queries ^ np.packbits(flips, axis=1, bitorder="little")
  k = args.scale_k
  for n in sizes:
    part = gallery[:n]
    planted = plant < n
    flat = faiss.IndexBinaryFlat(NBITS)
    flat.add(part)
    t_flat, (_, exact) = measure.best_time(lambda: flat.search(queries, k), args.repeats)
    times["flat"].append(t_flat)
    nlist = int(np.clip(4 * np.sqrt(n), 16, 4096))  # (capped: the assignment cost of add)
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(NBITS), NBITS, nlist)
    ivf.train(part[rng.choice(n, min(n, 40 * nlist), replace=False)])
    ivf.add(part)
    ivf.nprobe = args.nprobe
    t_ivf, (_, got) = measure.best_time(lambda: ivf.search(queries, k), args.repeats)
    times["ivf"].append(t_ivf)
    # recall@k against the exact k-NN; among random codes most of the k are near-ties (the
    # distances concentrate at 256 +- 11), so "planted found" -- the near-duplicate among the
    # k returned -- is the recall that matters for retrieval.
    recall = lambda got: np.mean([len(set(g) & set(e)) / k for g, e in zip(got, exact)])
    found = lambda got: np.mean([plant[i] in set(got[i]) for i in np.nonzero(planted)[0]])
    note = (f"N={n:,}: IVF nlist {nlist} nprobe {args.nprobe} recall@{k} "
            f"{recall(got):.3f}, planted found {found(got):.3f}")
    if n <= args.hnsw_max:
      hnsw = faiss.IndexBinaryHNSW(NBITS, 16)
      t0 = time.perf_counter()
      hnsw.add(part)
      add_s = time.perf_counter() - t0
      hnsw.hnsw.efSearch = max(64, k)
      t_hnsw, (_, got_h) = measure.best_time(lambda: hnsw.search(queries, k), args.repeats)
      times["hnsw"].append(t_hnsw)
      note += (f"; HNSW M 16 efSearch {hnsw.hnsw.efSearch} recall@{k} {recall(got_h):.3f}, "
               f"planted found {found(got_h):.3f} (add {add_s:.0f} s)")
    else:
      times["hnsw"].append(None)
      note += f"; HNSW skipped above --hnsw-max {args.hnsw_max:,} (its add time)"
    notes.append(note)
  print()
  print(f"faiss binary indexes vs gallery size ({args.scale_queries} query codes, k = {k}; "
        f"search time of all queries, best of {args.repeats}):")
  print(measure.scaling_table("gallery codes", [f"{n:,}" for n in sizes], times,
                              work=sizes))
  for note in notes:
    print("  " + note)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
  parser.add_argument("--sizes", default=None, help="gallery frames, comma-separated")
  parser.add_argument("--queries", type=int, default=20, help="query videos")
  parser.add_argument("--frames-per-video", type=int, default=32)
  parser.add_argument("--flip", type=int, default=40, help="bits flipped in planted copies")
  parser.add_argument("--top-n", type=int, default=1000)
  parser.add_argument("--backends", default="faiss,jax")
  parser.add_argument("--chunk-size", type=int, default=32768, help="jax gallery chunk")
  parser.add_argument("--query-chunk", type=int, default=512, help="jax queries per call")
  parser.add_argument("--batch-frames", type=int, default=8192)
  parser.add_argument("--numpy-rows", type=int, default=50000, help="numpy timing subset")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--scale-sizes", default="100000,1000000,10000000",
                      help="gallery codes of the index scaling table ('' to skip)")
  parser.add_argument("--scale-queries", type=int, default=640, help="query codes there")
  parser.add_argument("--scale-k", type=int, default=100, help="k of the k-NN there")
  parser.add_argument("--nprobe", type=int, default=16, help="IVF lists probed")
  parser.add_argument("--hnsw-max", type=int, default=1000000,
                      help="largest gallery given to HNSW (its add is slow)")
  args = parser.parse_args()
  sizes = args.sizes or ("5000,20000" if args.quick else "100000,1000000")
  sizes = [int(s) for s in sizes.split(",")]
  args.backends = args.backends.split(",")
  if args.repeats is None:
    args.repeats = 3 if args.quick else 2
  if args.quick:
    args.queries = min(args.queries, 8)
    args.numpy_rows = min(args.numpy_rows, 20000)
    args.scale_sizes, args.scale_queries, args.hnsw_max = "2000,8000", 32, 2000

  import jax  # pylint: disable=g-import-not-at-top
  import faiss  # pylint: disable=g-import-not-at-top
  nqf = args.queries * args.frames_per_video
  print(f"{NBITS}-bit codes = {NBITS // 8} bytes per frame; {args.queries} query videos x "
        f"{args.frames_per_video} frames = {nqf} query frames; top N = {args.top_n}; "
        f"{os.cpu_count()} CPUs, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} "
        f"threads), jax {jax.__version__} on {jax.devices()[0].platform} x {len(jax.devices())}")
  header = f"{'gallery frames':>15} {'MiB':>6}  {'method':<36}{'time (s)':>10}{'vs raw':>9}  note"
  print(header)
  print("-" * len(header))
  for n in sizes:
    rows = run_size(n, args)
    t_raw = rows[0][1]
    for name, t, note in rows:
      if np.isnan(t):
        print(f"{'':>15} {'':>6}  {name:<36}{'':>10}{'':>9}  {note}")
        continue
      print(f"{n:>15,} {n * NBITS / 8 / 2**20:>6.0f}  {name:<36}{t:>10.3f}{t / t_raw:>8.2f}x  "
            f"{note}")
  print("goal: vtd whole pipeline <= 1.5x raw faiss k-NN time")
  index_scaling(args)


if __name__ == "__main__":
  main()
