"""Benchmark: LSH encoding (512-bit sign-of-random-projection codes) -- vtd vs NumPy vs faiss.

All three encode the same float32 vectors with the same rotation (vtd's `fit_lsh`, copied
into faiss with `lsh.to_faiss`), in one process, calls interleaved (median of --repeats):

* vtd: `vtd.search.lsh.encode` (jitted projection + sign + packing per row chunk);
* NumPy: the plain version, x @ A.T >= 0 then `np.packbits(bitorder="little")`, in chunks of
  --numpy-chunk rows (OpenBLAS matmul);
* faiss: `IndexLSH.sa_encode` of the installed faiss-cpu (BLAS matmul + bit packing).

Codes are compared byte for byte. A differing bit can only be a projection that float32
rounding puts on the other side of 0; the script prints how many bits differ and the largest
|projection| / ||x|| among them (from a float64 projection). The scaling table times every
implementation against the number of vectors.

  python bench/lsh_encode.py [--rows 1000000 --dim 512 --nbits 512 --repeats 5]
  python bench/lsh_encode.py --quick
Goals: >= 1.5x NumPy and >= faiss IndexLSH, byte-identical codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `vtd`

import measure  # noqa: E402  (bench/ is on sys.path as the script folder)


def numpy_encode(x: np.ndarray, rotation: np.ndarray, chunk: int) -> np.ndarray:
  out = np.empty((x.shape[0], (rotation.shape[0] + 7) // 8), np.uint8)
  for start in range(0, x.shape[0], chunk):
    out[start:start + chunk] = np.packbits(x[start:start + chunk] @ rotation.T >= 0, axis=-1,
                                           bitorder="little")
  return out


def rounding_report(x: np.ndarray, rotation: np.ndarray, a: np.ndarray, b: np.ndarray) -> str:
  """How many bits two code arrays differ in, and how close to 0 those projections are."""
  rows = np.nonzero(np.any(a != b, axis=1))[0]
  if rows.size == 0:
    return "identical"
  bits = np.unpackbits(a[rows] ^ b[rows], axis=1, bitorder="little")[:, :rotation.shape[0]]
  r, j = np.nonzero(bits)
  y = np.einsum("nd,nd->n", x[rows[r]].astype(np.float64), rotation[j].astype(np.float64))
  rel = np.abs(y) / np.linalg.norm(x[rows[r]].astype(np.float64), axis=1)
  return (f"{r.size} of {a.shape[0] * rotation.shape[0]:,} bits differ, all with |y| / ||x|| "
          f"<= {rel.max():.1e} (float32 rounding)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--nbits", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--numpy-chunk", type=int, default=65536)
  parser.add_argument("--scale-rows", default="16384,65536,262144",
                      help="rows of the scaling table ('' to skip)")
  parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
  args = parser.parse_args()
  if args.quick:
    args.rows, args.repeats, args.scale_rows = 4096, 2, "1024"

  import faiss  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from vtd.search import lsh as lsh_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
  lsh = lsh_lib.fit_lsh(0, args.dim, args.nbits)
  index = lsh_lib.to_faiss(lsh)
  impls = {"vtd": lambda v: lsh_lib.encode(v, lsh),
           "numpy": lambda v: numpy_encode(v, lsh.rotation, args.numpy_chunk),
           "faiss": index.sa_encode}
  print(f"{args.rows:,} x {args.dim} float32 -> {args.nbits}-bit codes; {os.cpu_count()} CPUs "
        f"(shared), faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), jax "
        f"{jax.__version__} on {jax.default_backend()}; median of {args.repeats} interleaved")

  def timed(v: np.ndarray, repeats: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    codes = {name: fn(v) for name, fn in impls.items()}  # warm-up (vtd compiles)
    times = {name: [] for name in impls}
    for _ in range(repeats):
      for name, fn in impls.items():
        times[name].append(measure.median_time(lambda fn=fn: fn(v), 1, warmup=False)[0])
    return {name: float(np.median(t)) for name, t in times.items()}, codes

  med, codes = timed(x, args.repeats)
  print()
  print("| implementation | time (s, median) | vectors/s | GFLOP/s (matmul) | vtd speed-up |")
  print("|---|---:|---:|---:|---:|")
  flops = 2.0 * args.rows * args.dim * args.nbits
  names = {"vtd": "vtd lsh.encode", "numpy": "NumPy matmul + sign + packbits",
           "faiss": "faiss IndexLSH.sa_encode"}
  for name, t in med.items():
    print(f"| {names[name]} | {t:.3f} | {args.rows / t:,.0f} | {flops / t / 1e9:.1f} | "
          f"{t / med['vtd']:.2f}x |")
  for other in ("numpy", "faiss"):
    print(f"codes vtd vs {other}: {rounding_report(x, lsh.rotation, codes['vtd'], codes[other])}")
  print(f"codes numpy vs faiss: "
        f"{rounding_report(x, lsh.rotation, codes['numpy'], codes['faiss'])}")
  print("goals: >= 1.5x NumPy, >= 1x faiss, byte-identical codes")

  sizes = [int(s) for s in args.scale_rows.split(",") if s] + [args.rows]
  if len(sizes) > 1:
    table = {name: [] for name in impls}
    for n in sizes[:-1]:
      for name, t in timed(x[:n], args.repeats)[0].items():
        table[name].append(t)
    for name in impls:
      table[name].append(med[name])
    print()
    print("Scaling with the number of vectors:")
    print(measure.scaling_table("vectors", sizes, table))


if __name__ == "__main__":
  main()
