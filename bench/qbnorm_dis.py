"""Benchmark: vtd's streaming QB-Norm + Dynamic Inverted Softmax vs the official NumPy code.

Default size: a 130,000-caption querybank (training captions) against the MSR-VTT full test
gallery of 2,990 videos x 20 captions = 59,800 test queries; beta = 20, k = 1. Embeddings are
random unit vectors (D = 256, fixed seed); similarities are float32 dot products, computed in
blocks of --bank-chunk rows (so every implementation sees bit-identical values).

Implementations, each in its own spawned process, run on the same inputs:
* numpy official: `qb_norm` of ioanacroi/qb-norm dynamic_inverted_softmax.py, literally (full
  [M, N] and [Q, N] float32 matrices, argsort-based top-k and gate; it overwrites S_test in
  place, as the official code does since test_test_normalized aliases it) -- the 1.0x baseline.
* numpy no-sort: the same on full matrices with argmax/argpartition instead of the full-row
  argsorts, to show how much of the gap is the sorting alone.
* vtd, bank array: `dis_rerank` streaming the same [M, N] array in --bank-chunk row blocks.
* vtd, bank callable: `dis_rerank` with a callable computing each bank block from the
  embeddings, so S_bank never exists (its time includes those matmuls; the others get S_bank
  precomputed).

Memory: each process builds its inputs, records its peak RSS (ru_maxrss), then runs; "extra
peak RSS" is the growth of ru_maxrss beyond that point, i.e. the working memory on top of the
inputs (for vtd it includes XLA compilation and its [Q, N] float32 output, which the in-place
official code does not allocate; with --repeats > 1 the in-place NumPy runs also hold a
pristine copy of S_test, counted as input). Times: best of --repeats; vtd's first (compiling)
call is run and reported separately. On a shared, loaded machine times vary by up to ~2x
between runs; the memory figures are stable.

Agreement with the official output is checked on the top-1 of every query and on the full
ranking of --sample rows; where they differ, the official float32 values of the swapped items
are reported as relative gaps (float32 rounding near-ties). The sampled rows are also ranked
against a float64 log-space DIS, which says whose float32 rounding is closer to exact.

  python bench/qbnorm_dis.py [--quick] [--bank 130000 --videos 2990 --captions 20]
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

IMPLS = {"official": "numpy official (literal)", "nosort": "numpy no-sort (full matrices)",
         "vtd_array": "vtd dis_rerank, bank array", "vtd_callable": "vtd dis_rerank, bank callable"}


def make_embeddings(args: argparse.Namespace):
  """(bank text [M, D], test text [Q, D], videos [N, D]) random float32 unit vectors."""
  rng = np.random.default_rng(args.seed)
  out = []
  for rows in (args.bank, args.videos * args.captions, args.videos):
    x = rng.standard_normal((rows, args.dim), dtype=np.float32)
    out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
  return tuple(out)


def block_sims(text: np.ndarray, videos: np.ndarray, start: int, stop: int) -> np.ndarray:
  return text[start:stop] @ videos.T


def full_sims(text: np.ndarray, videos: np.ndarray, block: int) -> np.ndarray:
  """[rows, N] similarities filled in the same blocks the callable uses (bit-identical)."""
  sims = np.empty((text.shape[0], videos.shape[0]), np.float32)
  for start in range(0, text.shape[0], block):
    sims[start:start + block] = block_sims(text, videos, start, start + block)
  return sims


def qb_norm_official(train_test, test_test, beta, k):
  """ioanacroi/qb-norm `qb_norm` with its two helpers inlined, otherwise verbatim."""
  argm = np.argsort(-train_test, axis=1)
  retrieved_videos = np.unique(argm[:, :k].reshape(-1))
  test_test_normalized = test_test
  train_test = np.exp(train_test * beta)
  test_test = np.exp(test_test * beta)
  normalizing_sum = np.sum(train_test, axis=0)
  argm = np.argsort(-test_test, axis=1)[:, 0]
  index_for_normalizing = np.nonzero(np.array(list(map(lambda x: x in retrieved_videos, argm))))
  test_test_normalized[index_for_normalizing, :] = np.divide(
      test_test[index_for_normalizing, :], normalizing_sum)
  return test_test_normalized


def qb_norm_nosort(train_test, test_test, beta, k):
  """Same result (up to tie-breaking) without the full-row sorts, still on full matrices."""
  top = (np.argmax(train_test, axis=1) if k == 1 else
         np.argpartition(-train_test, k - 1, axis=1)[:, :k])
  active = np.zeros(train_test.shape[1], bool)
  active[top.reshape(-1)] = True
  normalizing_sum = np.sum(np.exp(train_test * beta), axis=0)
  gate = active[np.argmax(test_test, axis=1)]
  test_test[gate] = np.exp(test_test[gate] * beta) / normalizing_sum
  return test_test


def exact_sample(bank: np.ndarray, raw: np.ndarray, beta: float, k: int) -> np.ndarray:
  """float64 log-space DIS of the sampled test rows [s, N], as ground truth for rankings."""
  col_max = beta * bank.max(axis=0).astype(np.float64)
  norm = np.zeros(bank.shape[1])
  active = np.zeros(bank.shape[1], bool)
  for start in range(0, bank.shape[0], 8192):
    block = bank[start:start + 8192].astype(np.float64)
    norm += np.exp(beta * block - col_max).sum(axis=0)
    active[np.argpartition(-block, k - 1, axis=1)[:, :k].reshape(-1)] = True
  raw = raw.astype(np.float64)
  gate = active[np.argmax(raw, axis=1)]
  return np.where(gate[:, None], beta * raw - (col_max + np.log(norm)), raw)


def _worker(impl: str, args: argparse.Namespace, conn) -> None:
  if impl.startswith("vtd"):
    import jax  # pylint: disable=g-import-not-at-top
    from vtd.evaluators.qbnorm import dis_rerank  # pylint: disable=g-import-not-at-top
    jax.devices()  # initialise the backend before the memory baseline
  bank_text, test_text, videos = make_embeddings(args)
  test = full_sims(test_text, videos, args.bank_chunk)
  t0 = time.perf_counter()
  bank = None if impl == "vtd_callable" else full_sims(bank_text, videos, args.bank_chunk)
  bank_time = time.perf_counter() - t0
  # In-place implementations get a pristine copy back before each run (outside the timing).
  pristine = test.copy() if impl in ("official", "nosort") and args.repeats > 1 else None
  inputs_mib = sum(x.nbytes for x in (bank_text, test_text, videos, test, bank, pristine)
                   if x is not None) / 2**20
  kw = dict(beta=args.beta, k=args.k)
  if impl == "official":
    run = lambda: qb_norm_official(bank, test, **kw)
  elif impl == "nosort":
    run = lambda: qb_norm_nosort(bank, test, **kw)
  else:
    source = (bank if impl == "vtd_array" else
              lambda start, stop: block_sims(bank_text, videos, start, stop))
    num_bank = None if impl == "vtd_array" else args.bank
    run = lambda: dis_rerank(test, source, bank_chunk=args.bank_chunk,
                             query_chunk=args.query_chunk, num_bank=num_bank, **kw)
  sample = np.random.default_rng(1).choice(test.shape[0], min(args.sample, test.shape[0]),
                                           replace=False)
  raw_sample = test[sample].copy()  # the official code overwrites test
  base = measure.peak_rss_mib()
  first, times = None, []
  if impl.startswith("vtd"):
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
  for r in range(args.repeats):
    if r and pristine is not None:
      test[...] = pristine
    out = None  # so vtd's previous [Q, N] output is freed, not held during the next run
    t0 = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t0)
  extra = measure.peak_rss_mib() - base
  # Post-processing (not timed, after the memory reading): top-2 per row and sample rows.
  top2 = np.argpartition(-out, 1, axis=1)[:, :2]
  vals2 = np.take_along_axis(out, top2, axis=1)
  order = np.argsort(-vals2, axis=1, kind="stable")
  top2, vals2 = np.take_along_axis(top2, order, 1), np.take_along_axis(vals2, order, 1)
  exact = exact_sample(bank, raw_sample, args.beta, args.k) if impl == "official" else None
  gated = None
  if impl.startswith("vtd"):
    gated = float(np.mean(np.any(out != test, axis=1)))
  conn.send({"times": times, "first": first, "extra_rss": extra, "inputs_mib": inputs_mib,
             "bank_time": bank_time, "top2": top2, "vals2": vals2, "sample": out[sample],
             "exact": exact, "gated": gated})
  conn.close()


def run_impl(impl: str, args: argparse.Namespace) -> dict:
  return measure.run_in_subprocess(_worker, impl, args)


def agreement(got: dict, ref: dict) -> str:
  """Top-1 and sampled full-ranking agreement of `got` with the official output `ref`."""
  differ = np.nonzero(got["top2"][:, 0] != ref["top2"][:, 0])[0]
  v = ref["vals2"][differ].astype(np.float64)
  top1_gap = float(np.max((v[:, 0] - v[:, 1]) / np.abs(v[:, 0]))) if differ.size else 0.0
  same_rows, worst = 0, 0.0
  for row_got, row_ref in zip(got["sample"], ref["sample"]):
    rank_got = np.argsort(-row_got, kind="stable")
    if np.array_equal(rank_got, np.argsort(-row_ref, kind="stable")):
      same_rows += 1
      continue
    # The official values in vtd's order should be non-increasing; the largest rise between
    # neighbours, relative to the value, says how close to a tie the swapped items were.
    seq = row_ref[rank_got].astype(np.float64)
    worst = max(worst, float(np.max((seq[1:] - seq[:-1]) / np.abs(seq[:-1]))))
  n, s = len(got["top2"]), len(got["sample"])
  return (f"top-1 same for {n - differ.size}/{n} queries (differing: official rel. gap <= "
          f"{top1_gap:.1e}); full ranking same for {same_rows}/{s} sampled rows (differing: "
          f"largest official rel. inversion {worst:.1e})")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
  parser.add_argument("--bank", type=int, default=130000, help="M querybank captions")
  parser.add_argument("--videos", type=int, default=2990, help="N gallery videos")
  parser.add_argument("--captions", type=int, default=20, help="test captions per video")
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--beta", type=float, default=20.0)
  parser.add_argument("--k", type=int, default=1)
  parser.add_argument("--bank-chunk", type=int, default=512)
  parser.add_argument("--query-chunk", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=1, help="timed runs of each")
  parser.add_argument("--sample", type=int, default=500, help="rows whose full ranking is compared")
  parser.add_argument("--impls", default=",".join(IMPLS))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.quick:
    args.bank, args.videos, args.captions = 20000, 1000, 10
  impls = args.impls.split(",")

  import jax  # pylint: disable=g-import-not-at-top
  m, n, q = args.bank, args.videos, args.videos * args.captions
  print(f"S_bank [{m} x {n}] ({m * n * 4 / 2**20:.0f} MiB), S_test [{q} x {n}] "
        f"({q * n * 4 / 2**20:.0f} MiB) float32; beta={args.beta}, k={args.k}, "
        f"bank_chunk={args.bank_chunk}, query_chunk={args.query_chunk}, "
        f"repeats={args.repeats}; {os.cpu_count()} CPUs, numpy {np.__version__}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}")
  res = {impl: run_impl(impl, args) for impl in impls}

  base = res.get("official")
  print()
  print("| implementation | time (s) | vs official | extra peak RSS (MiB) | inputs (MiB) | note |")
  print("|---|---:|---:|---:|---:|---|")
  for impl in impls:
    r = res[impl]
    t = min(r["times"])
    speed = f"{min(base['times']) / t:.1f}x" if base else "-"
    note = []
    if r["first"] is not None:
      note.append(f"first call {r['first']:.2f} s (compile + run)")
    if impl == "vtd_callable":
      note.append("includes computing S_bank blocks; S_bank never exists")
    if impl == "official":
      note.append(f"S_bank precomputed for all but the callable in {r['bank_time']:.1f} s")
    print(f"| {IMPLS[impl]} | {t:.2f} | {speed} | {r['extra_rss']:.0f} | {r['inputs_mib']:.0f} "
          f"| {'; '.join(note)} |")
  print()
  gated = next((r["gated"] for r in res.values() if r["gated"] is not None), None)
  if gated is not None:
    print(f"rows gated (argmax in the activation set): {100 * gated:.1f}%")
  if "vtd_array" in res and "vtd_callable" in res:
    same = np.array_equal(res["vtd_array"]["sample"], res["vtd_callable"]["sample"])
    print(f"vtd bank callable vs bank array: sampled rows bit-identical: {'yes' if same else 'NO'}")
  if base:
    for impl in impls:
      if impl != "official":
        print(f"{IMPLS[impl]} vs official: {agreement(res[impl], base)}")
    exact = [np.argsort(-row, kind="stable") for row in base["exact"]]
    counts = []
    for impl in impls:
      same = sum(np.array_equal(np.argsort(-row, kind="stable"), want)
                 for row, want in zip(res[impl]["sample"], exact))
      counts.append(f"{IMPLS[impl]} {same}/{len(exact)}")
    print("full ranking equal to the float64 log-space DIS on sampled rows: " + ", ".join(counts))


if __name__ == "__main__":
  main()
