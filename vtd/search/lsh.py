"""Sign-of-random-projection LSH with the exact semantics of Faiss `IndexLSH` (reference §F).

y = A x (A [nbits, d]: orthonormal rows if nbits <= d, a tight frame if nbits > d), or the first
nbits coordinates of x without rotation; optionally y -= theta (per-bit training medians); bit
j = (y_j >= 0). Codes are packed LSB-first (bit j -> byte j // 8, bit j % 8), Faiss's layout, so
`pack_codes(encode_bits(x, lsh))` equals `faiss.IndexLSH.sa_encode(x)` for the same A and theta
(up to float rounding of projections within ~1e-6 of 0).

Bit-exact equality with Faiss's own matrix would need Faiss's RNG; any Haar-random A has the same
statistics, so `fit_lsh` draws its own and `to_faiss` / `from_faiss` copy A across.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vtd import chunking
from vtd.errors import UserError


@dataclasses.dataclass(frozen=True, eq=False)
class LSH:
  """LSH parameters (a pytree: the arrays are leaves, d and nbits static).

  Attributes:
    d: input dimension.
    nbits: bits per code.
    rotation: [nbits, d] float32 with y = x @ rotation.T, or None: y = x[:, :nbits].
    thresholds: [nbits] float32 subtracted from y before the sign, or None (zero).
  """
  d: int
  nbits: int
  rotation: Any = None
  thresholds: Any = None

  def __post_init__(self):
    if self.rotation is None and self.nbits > self.d:
      raise UserError(f"LSH without rotation needs nbits <= d, got nbits={self.nbits}, "
                      f"d={self.d}")
    # Leaves without a shape are placeholders of jax's pytree machinery: nothing to check.
    if hasattr(self.rotation, "shape") and tuple(self.rotation.shape) != (self.nbits, self.d):
      raise UserError(f"LSH rotation has shape {tuple(np.shape(self.rotation))}, expected "
                      f"({self.nbits}, {self.d})")
    if hasattr(self.thresholds, "shape") and tuple(self.thresholds.shape) != (self.nbits,):
      raise UserError(f"LSH thresholds have shape {tuple(np.shape(self.thresholds))}, "
                      f"expected ({self.nbits},)")

  @property
  def code_size(self) -> int:
    """Bytes per packed code, ceil(nbits / 8) (Faiss's code_size)."""
    return (self.nbits + 7) // 8


jax.tree_util.register_dataclass(LSH, data_fields=["rotation", "thresholds"],
                                 meta_fields=["d", "nbits"])


def _haar_rows(key: jax.Array, d: int, nbits: int) -> np.ndarray:
  """[nbits, d] float32: orthonormal rows (nbits <= d) or the first d columns of an orthogonal
  nbits x nbits matrix (nbits > d), as Faiss's RandomRotationMatrix."""
  n = d if nbits <= d else nbits
  g = np.asarray(jax.random.normal(key, (n, nbits), jnp.float32), np.float64)
  q, r = np.linalg.qr(g)
  # Sign fix so Q is exactly Haar-distributed (plain QR is biased by LAPACK's sign choice).
  q = q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]
  a = q.T if nbits <= d else q[:, :d]
  return np.ascontiguousarray(a, np.float32)


def fit_lsh(key: int | jax.Array, d: int, nbits: int, *, rotate: bool = True,
            train_thresholds: bool = False, train_features: Any = None) -> LSH:
  """Draws the rotation and, optionally, trains per-bit median thresholds.

  Args:
    key: an int seed or a jax PRNG key.
    d: input dimension; nbits: code length.
    rotate: random rotation (Faiss `rotate_data`); False keeps the first nbits coordinates.
    train_thresholds: theta_j = median over `train_features` of projected coordinate j (the
      mean of the two middle values for an even count, like Faiss).
    train_features: [n, d] float, required with train_thresholds.
  """
  if d < 1 or nbits < 1:
    raise UserError(f"LSH needs d >= 1 and nbits >= 1, got d={d}, nbits={nbits}")
  if not rotate and nbits > d:
    raise UserError(f"LSH without rotation needs nbits <= d, got nbits={nbits}, d={d}")
  if isinstance(key, (int, np.integer)):
    key = jax.random.key(int(key))
  lsh = LSH(d, nbits, _haar_rows(key, d, nbits) if rotate else None)
  if not train_thresholds:
    return lsh
  if train_features is None or np.shape(train_features)[0] < 1:
    raise UserError("lsh train_thresholds=True needs non-empty train_features [n, d]")
  x = np.asarray(train_features, np.float32)
  if x.ndim != 2 or x.shape[1] != d:
    raise UserError(f"LSH train_features have shape {x.shape}, expected [n, {d}]")
  y = chunking.chunked_apply(jax.jit(lambda c: project(c, lsh)), x, 65536)
  return dataclasses.replace(lsh, thresholds=np.median(y, axis=0).astype(np.float32))


def project(x: jax.Array, lsh: LSH) -> jax.Array:
  """[n, d] -> [n, nbits] float32 projections (rotation or coordinate selection, no theta)."""
  x = jnp.asarray(x, jnp.float32)
  if lsh.rotation is None:
    return x[:, :lsh.nbits]
  # Full f32 precision: TF32 / bf16 passes on accelerators would flip bits near 0.
  return jnp.dot(x, jnp.asarray(lsh.rotation, jnp.float32).T,
                 precision=jax.lax.Precision.HIGHEST)


def encode_bits(x: jax.Array, lsh: LSH) -> jax.Array:
  """[n, d] float -> bool [n, nbits], bit = (projection - theta >= 0). Traceable (jit-able)."""
  y = project(x, lsh)
  if lsh.thresholds is not None:
    y = y - jnp.asarray(lsh.thresholds, jnp.float32)
  return y >= 0


@jax.jit
def _encode_packed(x: jax.Array, lsh: LSH) -> jax.Array:
  """[n, d] float32 -> uint8 [n, code_size]: projection, sign and packing in one kernel, so
  the [n, nbits] projections never leave the cache. One compilation per (n, d, nbits)."""
  return jnp.packbits(encode_bits(x, lsh), axis=-1, bitorder="little")


@jax.jit
def _pack_projections(y: jax.Array, thresholds: jax.Array | None) -> jax.Array:
  """[n, nbits] float32 projections -> uint8 [n, code_size]: the sign and packing of
  `encode_bits` (same float operations, so the same bits)."""
  if thresholds is not None:
    y = y - thresholds
  return jnp.packbits(y >= 0, axis=-1, bitorder="little")


def _aligned_empty(shape: tuple[int, ...], dtype: Any, align: int = 64) -> np.ndarray:
  """An uninitialised host array whose data is `align`-byte aligned (XLA:CPU aliases such
  buffers in `device_put` instead of copying them)."""
  nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
  raw = np.empty(nbytes + align, np.uint8)
  offset = -raw.ctypes.data % align
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def _encode_with_host_blas(x: np.ndarray, lsh: LSH, params: LSH, chunk_size: int
                           ) -> np.ndarray:
  """CPU path: the projection by NumPy's BLAS into an aligned buffer, sign + packing jitted.

  Encoding is a dense float32 matmul (n x d x nbits multiply-adds) and little else. On the
  2-core dev CPU, OpenBLAS's sgemm reaches ~80 % of the FMA peak, XLA:CPU's ~55 % (measured:
  56 vs 78 ms CPU time for 8,192 x 512 x 512), so on CPU the projection goes to the BLAS and
  only the sign and bit packing (which NumPy does in two more passes over memory) are a kernel.
  The buffer is reused for every chunk, read by the kernel in place.
  """
  n = x.shape[0]
  chunk = max(1, min(chunk_size, n))
  # x @ A.T with A row-major, as NumPy's and Faiss's own calls (the same sgemm layout, hence
  # the same float32 rounding and byte-identical codes; a contiguous A.T rounds differently).
  rotation_t = np.ascontiguousarray(lsh.rotation, np.float32).T  # [d, nbits] view
  projections = _aligned_empty((chunk, lsh.nbits), np.float32)
  out = np.empty((n, lsh.code_size), np.uint8)
  for start in range(0, n, chunk):
    rows = min(chunk, n - start)
    np.matmul(x[start:start + rows], rotation_t, out=projections[:rows])
    # np.asarray waits for the kernel, so the buffer is free again for the next chunk.
    out[start:start + rows] = np.asarray(
        _pack_projections(jax.device_put(projections), params.thresholds))[:rows]
  return out


def encode(x: Any, lsh: LSH, *, chunk_size: int = 8192) -> np.ndarray:
  """[n, d] float -> packed uint8 [n, code_size] codes (Faiss layout), in row chunks.

  `chunk_size` rows per kernel call (the last chunk is padded, so there is one compilation
  per chunk size): 4-8k rows were the fastest on the 2-core CPU (the chunk's projections,
  16 MiB at 512 bits, stay in cache); 64k rows were ~1.3x slower. On a CPU backend the
  projection runs on NumPy's BLAS (see `_encode_with_host_blas`); elsewhere the whole
  encoding is one jitted kernel per chunk.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 2 or x.shape[1] != lsh.d:
    raise UserError(f"LSH input has shape {x.shape}, expected [n, {lsh.d}]")
  if x.shape[0] == 0:
    return np.zeros((0, lsh.code_size), np.uint8)
  params = jax.tree.map(jnp.asarray, lsh)  # On the device once, not once per chunk.
  if lsh.rotation is not None and jax.default_backend() == "cpu":
    return _encode_with_host_blas(x, lsh, params, chunk_size)
  out = chunking.chunked_apply(lambda c: _encode_packed(c, params), x, chunk_size)
  return out.astype(np.uint8, copy=False)


def pack_codes(bits: Any) -> np.ndarray:
  """bool [n, nbits] -> uint8 [n, ceil(nbits/8)], LSB-first, zero-padded (Faiss's layout)."""
  return np.packbits(np.asarray(bits, bool), axis=-1, bitorder="little")


def unpack_codes(codes: Any, nbits: int) -> np.ndarray:
  """uint8 [n, ceil(nbits/8)] -> bool [n, nbits] (inverse of `pack_codes`)."""
  codes = np.asarray(codes, np.uint8)
  if codes.shape[-1] != (nbits + 7) // 8:
    raise UserError(f"codes have {codes.shape[-1]} bytes, expected {(nbits + 7) // 8} for "
                    f"{nbits} bits")
  return np.unpackbits(codes, axis=-1, count=nbits, bitorder="little").astype(bool)


def from_faiss(index: Any) -> LSH:
  """The parameters of a trained `faiss.IndexLSH` (rotation copied out of index.rrot.A)."""
  import faiss  # pylint: disable=g-import-not-at-top
  if not index.is_trained:
    raise UserError("faiss IndexLSH is not trained (train_thresholds=True needs index.train)")
  d, nbits = int(index.d), int(index.nbits)
  rotation = None
  if index.rotate_data:
    rotation = faiss.vector_to_array(index.rrot.A).astype(np.float32).reshape(nbits, d)
  thresholds = None
  if index.train_thresholds:
    thresholds = faiss.vector_to_array(index.thresholds).astype(np.float32)
  return LSH(d, nbits, rotation, thresholds)


def to_faiss(lsh: LSH) -> Any:
  """A trained, empty `faiss.IndexLSH` that encodes exactly like `lsh`."""
  import faiss  # pylint: disable=g-import-not-at-top
  index = faiss.IndexLSH(lsh.d, lsh.nbits, lsh.rotation is not None, lsh.thresholds is not None)
  if lsh.rotation is not None:
    faiss.copy_array_to_vector(np.ascontiguousarray(lsh.rotation, np.float32).ravel(),
                               index.rrot.A)
  if lsh.thresholds is not None:
    faiss.copy_array_to_vector(np.ascontiguousarray(lsh.thresholds, np.float32),
                               index.thresholds)
    index.is_trained = True
  return index


def save_lsh(path: str, lsh: LSH) -> None:
  """Writes the parameters as .npz (atomically), so codes stay reproducible."""
  arrays = {"d": np.int64(lsh.d), "nbits": np.int64(lsh.nbits)}
  if lsh.rotation is not None:
    arrays["rotation"] = np.asarray(lsh.rotation, np.float32)
  if lsh.thresholds is not None:
    arrays["thresholds"] = np.asarray(lsh.thresholds, np.float32)
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(buf.getvalue())
  os.replace(tmp, path)


def load_lsh(path: str) -> LSH:
  """Reads parameters written by `save_lsh`."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return LSH(int(z["d"]), int(z["nbits"]),
                 z["rotation"] if "rotation" in z else None,
                 z["thresholds"] if "thresholds" in z else None)
  except (OSError, KeyError, ValueError) as e:
    if isinstance(e, UserError):
      raise
    raise UserError(f"{path}: not an LSH parameter file written by save_lsh ({e})") from e
