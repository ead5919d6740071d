"""Benchmark: vtd's streaming QB-Norm + DIS vs the official qb-norm code vs chunked NumPy.

Default size: a 130,000-caption querybank (training captions) against the MSR-VTT full test
gallery of 2,990 videos x 20 captions = 59,800 test queries; beta = 20, k = 1. Embeddings are
random unit vectors (D = 256, fixed seed); similarities are float32 dot products computed in
blocks of --bank-chunk rows (so every implementation sees bit-identical values).

Implementations, each in its own spawned process, on the same inputs:
* official: `qb_norm` of ioanacroi/qb-norm `dynamic_inverted_softmax.py`, imported unmodified
  from --peer-path (a local checkout): full [M, N] and [Q, N] float32 matrices, argsort-based
  top-k and gate; it overwrites S_test in place (it aliases its output to its input);
* NumPy chunked: the plain NumPy version streamed like vtd's (bank blocks: float32
  exp(beta S - column max) column sums with a running max, argmax for the activation set;
  test blocks: argmax gate, log-space scores) -- the "plain NumPy" baseline;
* vtd, bank array: `dis_rerank` streaming the same [M, N] array;
* vtd, bank callable: `dis_rerank` with a callable computing each bank block from the
  embeddings, so S_bank never exists (its time includes those matmuls).

Memory: each process builds its inputs, then resets its peak-RSS counter; "extra MiB" is the
peak resident memory of the timed run beyond the resident memory before it (outputs
included; vtd's first, compiling call runs before). Times: median of --repeats runs.

Exactness: ground-truth t2v ranks (CE "averaging" ties) of every query from the official
output, from `qbnorm.dis_t2v_ranks` (vtd's exact comparison) and from a float64 reference
(x = fl32(beta S) as officially, normaliser summed in float64) are compared.

  python bench/qbnorm_dis.py [--peer-path /work/peers/ioanacroi+qb-norm] [--bank 130000]
  python bench/qbnorm_dis.py --quick
Goals: every GT rank equal to qb-norm's, >= 10x qb-norm, >= 2x chunked NumPy,
extra memory <= 1 GB.
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

IMPLS = {"official": "qb-norm dynamic_inverted_softmax.py (official)",
         "numpy": "NumPy chunked (plain)", "vtd_array": "vtd dis_rerank, bank array",
         "vtd_callable": "vtd dis_rerank, bank callable"}


def make_embeddings(args: argparse.Namespace, bank: int):
  """(bank text [M, D], test text [Q, D], videos [N, D]) random float32 unit vectors."""
  rng = np.random.default_rng(args.seed)
  out = []
  for rows in (bank, args.videos * args.captions, args.videos):
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


def numpy_chunked(bank: np.ndarray, test: np.ndarray, beta: float, k: int, bank_chunk: int,
                  query_chunk: int) -> np.ndarray:
  """Plain NumPy DIS, streamed: log-space scores like vtd's (float32)."""
  beta32 = np.float32(beta)
  run_max = np.full(bank.shape[1], -np.inf, np.float32)
  run_sum = np.zeros(bank.shape[1], np.float32)
  active = np.zeros(bank.shape[1], bool)
  for start in range(0, bank.shape[0], bank_chunk):
    x = bank[start:start + bank_chunk] * beta32
    new_max = np.maximum(run_max, x.max(axis=0))
    run_sum = run_sum * np.exp(run_max - new_max) + np.exp(x - new_max).sum(axis=0)
    run_max = new_max
    top = (x.argmax(axis=1)[:, None] if k == 1 else
           np.argpartition(-x, k - 1, axis=1)[:, :k])
    active[top.reshape(-1)] = True
  log_norm = run_max + np.log(run_sum)
  out = np.empty_like(test)
  for start in range(0, test.shape[0], query_chunk):
    t = test[start:start + query_chunk]
    gate = active[t.argmax(axis=1)]
    out[start:start + query_chunk] = np.where(gate[:, None], t * beta32 - log_norm, t)
  return out


def gt_ranks(scores: np.ndarray, k: int) -> np.ndarray:
  """[Q] 0-based rank of each row's own video (q // k), ties averaged (CE metrics)."""
  ranks = np.empty(scores.shape[0])
  for start in range(0, scores.shape[0], 4096):
    s = scores[start:start + 4096]
    own = s[np.arange(s.shape[0]), (start + np.arange(s.shape[0])) // k][:, None]
    ranks[start:start + 4096] = (s > own).sum(1) + ((s == own).sum(1) - 1) / 2
  return ranks


def float64_ranks(bank: np.ndarray, test: np.ndarray, beta: float, k_cap: int) -> np.ndarray:
  """GT ranks of the exact DIS of the official float32 quantities (x = fl32(beta S))."""
  beta32 = np.float32(beta)
  col_max = (bank * beta32).max(axis=0).astype(np.float64)
  total = np.zeros(bank.shape[1])
  for start in range(0, bank.shape[0], 8192):
    total += np.exp((bank[start:start + 8192] * beta32).astype(np.float64) - col_max).sum(0)
  ell = col_max + np.log(total)
  active = np.zeros(bank.shape[1], bool)
  active[bank.argmax(axis=1)] = True
  ranks = np.empty(test.shape[0])
  for start in range(0, test.shape[0], 4096):
    t = test[start:start + 4096]
    gate = active[t.argmax(axis=1)]
    key = np.where(gate[:, None], (t * beta32).astype(np.float64) - ell, t.astype(np.float64))
    own = key[np.arange(t.shape[0]), (start + np.arange(t.shape[0])) // k_cap][:, None]
    ranks[start:start + 4096] = (key > own).sum(1) + ((key == own).sum(1) - 1) / 2
  return ranks


def _worker(impl: str, args: argparse.Namespace, num_bank: int, exactness: bool, conn) -> None:
  if impl.startswith("vtd"):
    import jax  # pylint: disable=g-import-not-at-top
    from vtd.evaluators import qbnorm  # pylint: disable=g-import-not-at-top
    jax.devices()  # initialise the backend before the memory baseline
  bank_text, test_text, videos = make_embeddings(args, num_bank)
  test = full_sims(test_text, videos, args.bank_chunk)
  bank = None if impl == "vtd_callable" else full_sims(bank_text, videos, args.bank_chunk)
  kw = dict(beta=args.beta, k=args.k)
  pristine = test.copy() if impl == "official" else None  # it overwrites its input
  if impl == "official":
    dis = measure.load_peer_module(os.path.join(args.peer_path, "dynamic_inverted_softmax.py"),
                                   "qbnorm_official")
    run = lambda: dis.qb_norm(bank, test, {"beta": args.beta, "k": args.k})
  elif impl == "numpy":
    run = lambda: numpy_chunked(bank, test, args.beta, args.k, args.bank_chunk,
                                args.query_chunk)
  else:
    source = (bank if impl == "vtd_array" else
              lambda start, stop: block_sims(bank_text, videos, start, stop))
    num = None if impl == "vtd_array" else num_bank
    run = lambda: qbnorm.dis_rerank(test, source, bank_chunk=args.bank_chunk,
                                    query_chunk=args.query_chunk, num_bank=num, **kw)
    run()  # compile
  out, times, extra = None, [], 0.0
  for r in range(args.repeats):
    if r and pristine is not None:
      test[...] = pristine
    out = None  # the previous output is freed, not held during the next run
    measure.reset_peak_rss()
    before = measure.current_rss_mib()
    t0 = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t0)
    extra = max(extra, measure.peak_rss_mib() - before)
  result = {"time": float(np.median(times)), "times": times, "extra": extra}
  if exactness:
    result["ranks"] = gt_ranks(out, args.captions)
    if impl == "vtd_array":
      stats = qbnorm.querybank_stats(bank, **kw, bank_chunk=args.bank_chunk)
      result["exact_ranks"] = qbnorm.dis_t2v_ranks(
          test, stats, captions_per_video=args.captions, query_chunk=args.query_chunk)[0]
      result["float64_ranks"] = float64_ranks(bank, test, args.beta, args.captions)
  conn.send(result)
  conn.close()


def run_impl(impl: str, args: argparse.Namespace, num_bank: int, exactness: bool = False):
  return measure.run_in_subprocess(_worker, impl, args, num_bank, exactness)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
  parser.add_argument("--peer-path", default=None, help="local checkout of ioanacroi/qb-norm")
  parser.add_argument("--peer-scaling", action="store_true", help="official in the scaling")
  parser.add_argument("--bank", type=int, default=130000, help="M querybank captions")
  parser.add_argument("--videos", type=int, default=2990, help="N gallery videos")
  parser.add_argument("--captions", type=int, default=20, help="test captions per video")
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--beta", type=float, default=20.0)
  parser.add_argument("--k", type=int, default=1)
  parser.add_argument("--bank-chunk", type=int, default=512)
  parser.add_argument("--query-chunk", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3, help="timed runs of each")
  parser.add_argument("--scale-bank", default="16250,32500,65000",
                      help="bank sizes of the scaling table ('' to skip)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.quick:
    measure.SAME_PROCESS = True  # (memory figures then not per implementation)
    args.bank, args.videos, args.captions, args.repeats = 4000, 200, 5, 1
    args.scale_bank = "1000,2000"

  import jax  # pylint: disable=g-import-not-at-top
  m, n, q = args.bank, args.videos, args.videos * args.captions
  print(f"S_bank [{m} x {n}] ({m * n * 4 / 2**20:.0f} MiB), S_test [{q} x {n}] "
        f"({q * n * 4 / 2**20:.0f} MiB) float32; beta={args.beta}, k={args.k}; "
        f"{os.cpu_count()} CPUs (shared), jax {jax.__version__} on {jax.default_backend()}; "
        f"median of {args.repeats}")
  impls = (["official"] if args.peer_path else []) + ["numpy", "vtd_array", "vtd_callable"]
  res = {impl: run_impl(impl, args, m, exactness=impl in ("official", "vtd_array"))
         for impl in impls}
  print()
  print("| implementation | time (s) | vtd (array) speed-up | extra MiB |")
  print("|---|---:|---:|---:|")
  t_vtd = res["vtd_array"]["time"]
  for impl in impls:
    r = res[impl]
    print(f"| {IMPLS[impl]} | {r['time']:.2f} | {r['time'] / t_vtd:.2f}x | {r['extra']:.0f} |")
  v = res["vtd_array"]
  ref = v["float64_ranks"]
  print()
  print(f"GT ranks (of {q}) differing from the float64 reference: vtd dis_t2v_ranks "
        f"{int((v['exact_ranks'] != ref).sum())}, vtd dis_rerank scores (float32 log space) "
        f"{int((v['ranks'] != ref).sum())}"
        + (f", official {int((res['official']['ranks'] != ref).sum())}"
           if "official" in res else ""))
  if "official" in res:
    off = res["official"]["ranks"]
    print(f"GT ranks differing from the official code's: vtd dis_t2v_ranks "
          f"{int((v['exact_ranks'] != off).sum())}, vtd dis_rerank scores "
          f"{int((v['ranks'] != off).sum())}")
  print("goals: GT ranks equal to qb-norm's, >= 10x qb-norm, >= 2x chunked NumPy, "
        "extra <= 1 GB")

  sizes = [int(s) for s in args.scale_bank.split(",") if s] + [m]
  if len(sizes) > 1:
    scale_impls = (["official"] if args.peer_path and args.peer_scaling else []) + [
        "numpy", "vtd_array"]
    times = {impl: [] for impl in scale_impls}
    for size in sizes[:-1]:
      for impl in scale_impls:
        times[impl].append(run_impl(impl, args, size)["time"])
    for impl in scale_impls:
      times[impl].append(res[impl]["time"])
    print()
    print(f"Scaling with the bank size M (Q = {q} test queries, N = {n}):")
    print(measure.scaling_table("bank M", sizes, times))


if __name__ == "__main__":
  main()
