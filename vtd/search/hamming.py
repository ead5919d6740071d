"""Hamming k-NN over packed binary codes (uint8 [n, code_size], LSB-first as `vtd.search.lsh`).

Two backends behind one interface, `add(codes)` and `search(query_codes, k)`:

* `FaissHammingIndex`: faiss IndexBinaryFlat (exact), IndexBinaryIVF ("ivf{nlist}") or
  IndexBinaryHNSW ("hnsw{M}") for large galleries (approximate).
* `JaxHammingIndex`: jitted exact brute force. The gallery is sharded over the `data` mesh axis
  and scanned in chunks of `chunk_size` rows per device (memory O(query_chunk x chunk_size)),
  each chunk merged into a running k best; the devices' lists are then gathered and merged.
  Distances by `population_count` on uint32 words (CPU default) or a +-1 matmul with f32
  accumulation (accelerator default; +-1 is exact in bf16, sums < 2^24). Selection by lax.top_k
  (accelerators) or a sort-free histogram select (CPU, where XLA's top_k is a full sort).

Result convention (every backend): distances int32 [Q, k] ascending, indices int64 [Q, k];
**equal distances in ascending gallery index**; slots beyond ntotal are (INT32_MAX, -1), as in
Faiss. Faiss's flat search keeps the earlier index at the k-th boundary (it replaces its heap top
only on a strict `<`), so its *set* equals ours; the order it gives among equal distances is
unspecified, so `FaissHammingIndex` re-sorts each row by (distance, index). Padding rows of the
JAX gallery get distance > any real one and can never displace a real row.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from vtd import sharding
from vtd.errors import UserError

MISSING_DISTANCE = int(np.iinfo(np.int32).max)


class HammingIndex(Protocol):
  nbits: int
  code_size: int

  @property
  def ntotal(self) -> int: ...
  def add(self, codes: Any) -> None: ...
  def search(self, query_codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def check_codes(codes: Any, code_size: int, what: str = "codes") -> np.ndarray:
  """Contiguous uint8 [n, code_size] or a one-line UserError."""
  codes = np.asarray(codes)
  if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != code_size:
    raise UserError(f"{what} must be uint8 [n, {code_size}], got {codes.dtype} "
                    f"{list(codes.shape)}")
  return np.ascontiguousarray(codes)


def _check_query(query_codes: Any, code_size: int, k: int) -> np.ndarray:
  if k < 1:
    raise UserError(f"k must be >= 1, got {k}")
  return check_codes(query_codes, code_size, "query codes")


def _missing(q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
  return (np.full((q, k), MISSING_DISTANCE, np.int32), np.full((q, k), -1, np.int64))


def canonical_order(distances: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Sorts each row by (distance, index), missing (index -1) last. [Q, k] -> [Q, k]."""
  # One int64 key per entry: distance (< 2^22; missing -> 2^22) above the index (< 2^40; -1
  # -> all ones). Faiss rows are already sorted by distance, so a stable (run-aware) sort of
  # nearly sorted keys is cheap.
  key = np.minimum(np.asarray(distances).astype(np.int64), 1 << 22)
  key <<= 40
  key |= np.asarray(indices).astype(np.int64) & ((1 << 40) - 1)
  key.sort(axis=1, kind="stable")
  d, missing = key >> 40, key >> 40 == 1 << 22
  key &= (1 << 40) - 1
  key[missing], d[missing] = -1, MISSING_DISTANCE
  return d.astype(np.int32), key


def _words(codes: np.ndarray, dtype: Any) -> np.ndarray:
  """uint8 [n, B] -> [n, ceil(B / itemsize)] little-endian words (zero bytes added)."""
  codes = np.pad(codes, ((0, 0), (0, -codes.shape[1] % np.dtype(dtype).itemsize)))
  return np.ascontiguousarray(codes).view(np.dtype(dtype).newbyteorder("<")).astype(dtype)


def hamming_distances_numpy(query_codes: Any, gallery_codes: Any) -> np.ndarray:
  """Reference: int32 [Q, N] Hamming distances by NumPy popcount, in bounded-memory blocks."""
  q = _words(np.asarray(query_codes, np.uint8), np.uint64)
  g = _words(np.asarray(gallery_codes, np.uint8), np.uint64)
  out = np.empty((q.shape[0], g.shape[0]), np.int32)
  step = max(1, (1 << 24) // max(1, g.shape[0] * g.shape[1]))
  for s in range(0, q.shape[0], step):
    out[s:s + step] = np.bitwise_count(q[s:s + step, None, :] ^ g[None]).sum(-1, dtype=np.int32)
  return out


def numpy_knn(query_codes: Any, gallery_codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Reference exact k-NN with the tie rule above: (int32 [Q, k], int64 [Q, k])."""
  nq, n = np.shape(query_codes)[0], np.shape(gallery_codes)[0]
  out_d, out_i = _missing(nq, k)
  ke = min(k, n)
  if ke == 0 or nq == 0:
    return out_d, out_i
  h = hamming_distances_numpy(query_codes, gallery_codes)
  key = h.astype(np.int64) * n + np.arange(n)  # distance, then index
  part = np.argpartition(key, ke - 1, axis=1)[:, :ke] if ke < n else np.tile(np.arange(n), (nq, 1))
  order = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, 1), axis=1), 1)
  out_d[:, :ke] = np.take_along_axis(h, order, 1)
  out_i[:, :ke] = order
  return out_d, out_i


class FaissHammingIndex:
  """faiss binary index; kind "flat" (exact) | "ivf{nlist}" | "hnsw{M}" (approximate)."""

  def __init__(self, nbits: int, kind: str = "flat", *, nprobe: int = 16, ef_search: int = 128,
               ef_construction: int = 40):
    import faiss  # pylint: disable=g-import-not-at-top
    self.nbits, self.kind = int(nbits), kind
    self.code_size = (self.nbits + 7) // 8
    dim = 8 * self.code_size  # faiss counts whole bytes; padding bits are 0 on both sides
    m = re.fullmatch(r"flat|ivf(\d+)|hnsw(\d+)", kind)
    if m is None:
      raise UserError(f"hamming index kind {kind!r}: expected 'flat', 'ivf<nlist>' or 'hnsw<M>'")
    self._quantizer = None
    if kind == "flat":
      self.index = faiss.IndexBinaryFlat(dim)
    elif m.group(1):
      self._quantizer = faiss.IndexBinaryFlat(dim)  # kept alive: the IVF index borrows it
      self.index = faiss.IndexBinaryIVF(self._quantizer, dim, int(m.group(1)))
      self.index.nprobe = nprobe
    else:
      self.index = faiss.IndexBinaryHNSW(dim, int(m.group(2)))
      self.index.hnsw.efConstruction = ef_construction
    self.ef_search = ef_search

  @property
  def ntotal(self) -> int:
    return int(self.index.ntotal)

  def train(self, codes: Any) -> None:
    """Trains the IVF coarse quantiser (no-op for flat / HNSW)."""
    codes = check_codes(codes, self.code_size)
    if not self.index.is_trained:
      if codes.shape[0] < self.index.nlist:
        raise UserError(f"hamming index {self.kind!r} needs >= {self.index.nlist} training "
                        f"codes, got {codes.shape[0]}")
      self.index.train(codes)

  def add(self, codes: Any) -> None:
    """Appends uint8 [n, code_size] codes; an untrained IVF index is trained on them first."""
    codes = check_codes(codes, self.code_size)
    if not self.index.is_trained:
      self.train(codes)
    self.index.add(codes)

  def search(self, query_codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances int32 [Q, k], indices int64 [Q, k]); see the module docstring."""
    q = _check_query(query_codes, self.code_size, k)
    if self.ntotal == 0 or q.shape[0] == 0:
      return _missing(q.shape[0], k)
    if self.kind.startswith("hnsw"):
      self.index.hnsw.efSearch = max(self.ef_search, k)
    d, i = self.index.search(q, k)
    return canonical_order(d, i)


# --- JAX brute force. ---

def _nth_set_bit(words: jax.Array, rank: jax.Array) -> jax.Array:
  """Position of the (rank+1)-th set bit of each row of bitmask words.

  Args: words uint32 [Q, nw] (bit b of word w = position 32 w + b); rank int32 [Q, k].
  Returns: int32 [Q, k] positions.
  """
  count = jax.lax.population_count(words).astype(jnp.int32)
  incl = jnp.cumsum(count, axis=1)
  block = jax.vmap(functools.partial(jnp.searchsorted, side="right"))(incl, rank)
  block = jnp.minimum(block, words.shape[1] - 1)
  rank = rank - jnp.take_along_axis(incl - count, block, axis=1)
  word = jnp.take_along_axis(words, block, axis=1)
  pos = jnp.zeros_like(rank)
  for step in (16, 8, 4, 2, 1):  # largest pos with popcount(bits below pos) <= rank
    low = (jnp.uint32(1) << (pos + step).astype(jnp.uint32)) - jnp.uint32(1)
    fits = jax.lax.population_count(word & low).astype(jnp.int32) <= rank
    pos = jnp.where(fits, pos + step, pos)
  return block * 32 + pos


def _bitmask(mask: jax.Array) -> jax.Array:
  """bool [Q, M] (M % 32 == 0) -> uint32 [Q, M / 32], position 32 w + b -> bit b of word w."""
  blocks = mask.reshape(mask.shape[0], -1, 32).astype(jnp.uint32)
  return jnp.sum(blocks << jnp.arange(32, dtype=jnp.uint32), -1, dtype=jnp.uint32)


def _select_hist(d: jax.Array, k: int, dmax: int) -> jax.Array:
  """Positions [Q, k] of the k smallest of int32 d [Q, M] (values in [0, dmax], M % 32 == 0),
  ties by lower position; equal values come out in position order.

  Sort-free (XLA's CPU top_k is a full sort, ~20x slower here): a per-row histogram gives the
  k-th smallest value t; the positions with d < t and then the first ones with d == t are read
  off bitmasks.
  """
  q, m = d.shape
  rows = jnp.arange(q)[:, None]
  hist = jnp.zeros((q, dmax + 1), jnp.int32).at[rows, d].add(1)
  thr = jnp.argmax(jnp.cumsum(hist, axis=1) >= k, axis=1).astype(jnp.int32)[:, None]
  less, equal = _bitmask(d < thr), _bitmask(d == thr)
  # In the bitmask [less | equal] the first n_less set bits are the d < t positions and the
  # next ones the d == t positions, both in position order: the answer is its first k set bits.
  ranks = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32)[None], (q, k))
  pos = _nth_set_bit(jnp.concatenate([less, equal], axis=1), ranks)
  return jnp.where(pos >= m, pos - m, pos)


def _select(d: jax.Array, idx: jax.Array, k: int, dmax: int, method: str):
  """The k best (distance, index) pairs of [Q, M] candidates, keeping the invariant that equal
  distances appear in increasing index order (so later merges keep the tie rule)."""
  if method == "topk":
    pos = jax.lax.top_k(-d, k)[1]  # ties -> lower position first
  else:
    pad = -d.shape[1] % 32
    if pad:
      d = jnp.pad(d, ((0, 0), (0, pad)), constant_values=dmax)
      idx = jnp.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
    pos = _select_hist(d, k, dmax)
  return jnp.take_along_axis(d, pos, 1), jnp.take_along_axis(idx, pos, 1)


def _unpack_pm1(words: jax.Array, dtype: Any) -> jax.Array:
  """uint32 [n, W] -> [n, 32 W] of +-1 (bit 1 -> +1)."""
  bits = (words[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
  return (2 * bits.astype(dtype) - 1).reshape(words.shape[0], -1)


@functools.lru_cache(maxsize=32)
def _search_fn(mesh: Mesh, k: int, chunk: int, n_chunks: int, nwords: int, distance: str,
               select: str, mm_dtype: str):
  """Jitted (query words [Qc, W] replicated, gallery words [N_pad, W] sharded, ntotal) ->
  (int32 [Qc, k], int32 [Qc, k]) sorted by (distance, index), invalid = distance >= pad_d."""
  nbits_w = 32 * nwords
  pad_d, sentinel = nbits_w + 1, nbits_w + 2  # padding rows; empty slots of the running list
  dtype = jnp.dtype(mm_dtype)
  cap = min(2 * k, chunk)  # candidates per row on the fast path
  ranks = jnp.arange(cap, dtype=jnp.int32)[None]

  def per_device(q, g, ntotal):
    base = jax.lax.axis_index(sharding.DATA_AXIS) * (n_chunks * chunk)
    qpm = _unpack_pm1(q, dtype) if distance == "matmul" else None

    def step(carry, c):
      run_d, run_i = carry
      rows = jax.lax.dynamic_slice_in_dim(g, c * chunk, chunk)
      if distance == "matmul":
        dot = jnp.dot(qpm, _unpack_pm1(rows, dtype).T, preferred_element_type=jnp.float32)
        h = ((nbits_w - dot) * 0.5).astype(jnp.int32)
      else:
        h = jnp.sum(jax.lax.population_count(q[:, None, :] ^ rows[None]).astype(jnp.int32), -1)
      gidx = base + c * chunk + jnp.arange(chunk, dtype=jnp.int32)
      h = jnp.where(gidx[None] < ntotal, h, pad_d)
      gidx = jnp.broadcast_to(gidx[None], h.shape)

      def full(_):
        # One selection over [running | chunk]: the running list's indices are all lower, so
        # ties keep the lower index.
        return _select(jnp.concatenate([run_d, h], 1), jnp.concatenate([run_i, gidx], 1), k,
                       sentinel, select)

      if select != "hist":
        return full(None), None
      # Fast path: only rows strictly below the running k-th distance can enter (at equality
      # the running entry has the lower index). Once a few chunks are in, they are few: read
      # the first `cap` of them off a bitmask and merge, skipping the chunk-wide histogram.
      enter = h < jnp.max(run_d, axis=1, keepdims=True)
      count = jnp.sum(enter, axis=1, keepdims=True, dtype=jnp.int32)

      def sparse(_):
        pos = _nth_set_bit(_bitmask(enter), jnp.broadcast_to(ranks, (h.shape[0], cap)))
        ok = ranks < count
        cand_d = jnp.where(ok, jnp.take_along_axis(h, pos, 1), sentinel)
        cand_i = jnp.where(ok, jnp.take_along_axis(gidx, pos, 1), -1)
        return _select(jnp.concatenate([run_d, cand_d], 1),
                       jnp.concatenate([run_i, cand_i], 1), k, sentinel, select)
      return jax.lax.cond(jnp.all(count <= cap), sparse, full, None), None

    init = (jnp.full((q.shape[0], k), sentinel, jnp.int32),
            jnp.full((q.shape[0], k), -1, jnp.int32))
    (run_d, run_i), _ = jax.lax.scan(step, init, jnp.arange(n_chunks))
    # Devices hold increasing index ranges, so device order keeps the tie rule too.
    all_d = jax.lax.all_gather(run_d, sharding.DATA_AXIS, axis=1, tiled=True)
    all_i = jax.lax.all_gather(run_i, sharding.DATA_AXIS, axis=1, tiled=True)
    best_d, best_i = _select(all_d, all_i, k, sentinel, select)
    return jax.lax.sort((best_d, best_i), num_keys=2)

  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(sharding.DATA_AXIS), P()),
                     out_specs=(P(), P()), check_vma=False)
  return jax.jit(fn), pad_d


class JaxHammingIndex:
  """Exact brute-force Hamming k-NN in JAX, gallery sharded over the mesh's `data` axis.

  Args:
    nbits: bits per code (codes are uint8 [n, ceil(nbits/8)]).
    mesh: a 1-D `data` mesh (default: `vtd.sharding.make_mesh()`, all devices).
    distance: "popcount" | "matmul" | "auto" (matmul on accelerators, popcount on CPU).
    select: "topk" (lax.top_k) | "hist" (histogram select) | "auto" (hist on CPU).
    chunk_size: gallery rows per device per scan step (rounded up to a multiple of 32).
    query_chunk: at most this many queries (rounded up a little) per jitted call.
  """

  def __init__(self, nbits: int, *, mesh: Mesh | None = None, distance: str = "auto",
               select: str = "auto", chunk_size: int = 32768, query_chunk: int = 512):
    self.nbits = int(nbits)
    self.code_size = (self.nbits + 7) // 8
    self.mesh = sharding.make_mesh() if mesh is None else mesh
    platform = self.mesh.devices.flat[0].platform
    if distance not in ("auto", "popcount", "matmul"):
      raise UserError(f"jax hamming distance {distance!r}: expected auto, popcount or matmul")
    if select not in ("auto", "topk", "hist"):
      raise UserError(f"jax hamming select {select!r}: expected auto, topk or hist")
    cpu = platform == "cpu"
    self.distance = ("popcount" if cpu else "matmul") if distance == "auto" else distance
    self.select = ("hist" if cpu else "topk") if select == "auto" else select
    self._mm_dtype = "float32" if platform == "cpu" else "bfloat16"  # both exact for +-1
    self.chunk_size = max(32, -(-int(chunk_size) // 32) * 32)
    self.query_chunk = max(1, int(query_chunk))
    self._host: list[np.ndarray] = []
    self._ntotal = 0
    self._device = None  # (gallery jax.Array, chunk, n_chunks), rebuilt after add

  @property
  def ntotal(self) -> int:
    return self._ntotal

  def add(self, codes: Any) -> None:
    codes = check_codes(codes, self.code_size)
    self._host.append(codes)
    self._ntotal += codes.shape[0]
    self._device = None

  def _gallery(self):
    if self._device is None:
      codes = np.concatenate(self._host) if len(self._host) != 1 else self._host[0]
      self._host = [codes]
      words = _words(codes, np.uint32)
      n_dev = self.mesh.devices.size
      per_dev = -(-words.shape[0] // n_dev)
      chunk = min(self.chunk_size, max(32, -(-per_dev // 32) * 32))
      n_chunks = -(-per_dev // chunk)
      padded = np.zeros((n_dev * n_chunks * chunk, words.shape[1]), np.uint32)
      padded[:words.shape[0]] = words
      arr = jax.make_array_from_callback(padded.shape, sharding.data_sharding(self.mesh),
                                         lambda index: padded[index])
      self._device = (arr, chunk, n_chunks)
    return self._device

  def search(self, query_codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances int32 [Q, k], indices int64 [Q, k]); see the module docstring."""
    q = _check_query(query_codes, self.code_size, k)
    out_d, out_i = _missing(q.shape[0], k)
    ke = min(k, self._ntotal)
    if ke == 0 or q.shape[0] == 0:
      return out_d, out_i
    gallery, chunk, n_chunks = self._gallery()
    qw = _words(q, np.uint32)
    # Equal calls, their size rounded up to a multiple of query_chunk / 8 (or a power of two
    # when smaller): little padding and at most a handful of compiled shapes.
    calls = -(-q.shape[0] // self.query_chunk)
    per, step = -(-q.shape[0] // calls), max(8, self.query_chunk // 8)
    qc = -(-per // step) * step if per >= step else max(8, 1 << (per - 1).bit_length())
    fn, pad_d = _search_fn(self.mesh, ke, chunk, n_chunks, qw.shape[1], self.distance,
                           self.select, self._mm_dtype)
    ntotal = sharding.replicate(np.int32(self._ntotal), self.mesh)
    for s in range(0, q.shape[0], qc):
      n = min(qc, q.shape[0] - s)
      part = np.pad(qw[s:s + n], ((0, qc - n), (0, 0)))
      d, i = sharding.to_local(fn(sharding.replicate(part, self.mesh), gallery, ntotal))
      valid = d[:n] < pad_d
      out_d[s:s + n, :ke] = np.where(valid, d[:n], MISSING_DISTANCE)
      out_i[s:s + n, :ke] = np.where(valid, i[:n], -1)
    return out_d, out_i


def make_index(backend: str = "faiss", nbits: int = 512, kind: str = "flat",
               **kwargs: Any) -> HammingIndex:
  """backend "faiss" (kind flat | ivf{nlist} | hnsw{M}) or "jax" (kind flat only)."""
  if backend == "faiss":
    return FaissHammingIndex(nbits, kind, **kwargs)
  if backend == "jax":
    if kind != "flat":
      raise UserError(f"the jax hamming backend is exact brute force: kind must be 'flat', "
                      f"got {kind!r}")
    return JaxHammingIndex(nbits, **kwargs)
  raise UserError(f"hamming backend {backend!r}: expected 'faiss' or 'jax'")
