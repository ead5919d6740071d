"""VideoPCA teacher (Stretcu & Leordeanu, BMVC'15) as one jitted JAX kernel.

Soft foreground masks for every frame of a video, without supervision: the background is well
reconstructed by the top principal directions of the frames, the foreground is not. The kernel
follows the MATLAB `videoPCA.m` + `getSeg.m` description of `shared/reference/segmentation.md`
§1.2 step by step (the numbers below are its steps):

  1. per-frame min-max normalisation, frames flattened to X [P, T] (P = 3HW), one PCA per call;
  2. per-frame *scalar* mean m_i (MATLAB `mean` on P x T), X_c = X - m;
  3. top-k eigenvectors V_k of the T x T Gram matrix X_c^T X_c, X^ = X_c V_k V_k^T + m;
  4. E = ni(||X - X^||_2 over the colour channels), one min/max per video;
  5. B = ni(ni(blur(E) * centre prior)) > 0.5;
  6. fg / bg colour histograms (HSV -> Cartesian hue disc, 100 x 25 x 10 bins) pooled over the
     whole video, +1 Laplace smoothing of the background bins;
  7. S = p(fg | colour) = H_fg / (H_fg + H_bg);
  8. gate A = hysteresis(ni(S * centre prior), 0.8, 0.5, 8-connected); mask M = ni(S * A).

Everything has static shapes, so `videopca_batch` is `jit(vmap(...))` and runs under a `data`
mesh with videos sharded along N. Variable-length videos are padded to a fixed T and carry a
[T] frame mask: padded frames add nothing to the Gram matrix, the error normalisation or the
histograms, and their outputs are 0. `vtd/segmentation/videopca_numpy.py` is the plain NumPy
transcription the kernel is tested against.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vtd.sharding import DATA_AXIS
from vtd.segmentation import colour_codes

# Matmuls that feed the PCA must not run in reduced precision (TF32 on GPU, bf16 passes on
# TPU): the reconstruction error is a small residual of large, uncentred frames.
_HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class VideoPCAConfig:
  """Every constant of VideoPCA. Defaults are the reference's (§1.2) unless marked otherwise.

  Attributes:
    size: working resolution (H, W) in pixels, or None to run at the input resolution. The
      papers do not give it (§1.3); default 256 x 256 = the resolution of the stored student
      masks (§8 #1; HPP uses 300 x 300). Not from the paper.
    resize_method: `jax.image.resize` method used to reach `size`. HPP resizes bicubically
      (§1.3); note JAX's cubic kernel is Keys a = -0.5, OpenCV's INTER_CUBIC a = -0.75.
    resize_antialias: low-pass filter when downsampling (JAX default; not from the paper).
    max_frames: longest chunk of a video given to one PCA (§8 #2, not from the paper); used by
      `split_video`, which pads the chunks to this static T with a frame mask (§1.4).
    num_directions: k principal directions (3; the "8" of HPP's step 2 is not VideoPCA, §1.2).
    blur_size: side of the square Gaussian blur kernel in working pixels (15). Odd.
    blur_sigma: its sigma in working pixels (5). The Addendum warns this fixed pixel scale
      spreads the initial foreground at small working sizes; we keep the reference values at
      every size (no scaling with the resolution): change both knobs together if needed.
    blur_border: "zero" (MATLAB `imfilter` default, the description) or "reflect101"
      (OpenCV's default, what the HPP port does; Addendum #4).
    centre_sigma_frac: centre-prior sigma as a fraction of min(H, W) (1/3).
    init_threshold: threshold of the initial binary foreground (0.5).
    hist_bins: (hx, hy, v) bins of the colour histogram (100, 25, 10 = 25 000 bins).
    bin_rounding: "half_away" (MATLAB `round`, the description; §1.4) or "hpp" (the Python
      port: round-half-even of index + 1, minus 1, so grey pixels land one bin lower;
      Addendum #2).
    bg_laplace: add 1 to every background bin before normalising (MATLAB; §8 #3). False
      reproduces the Python port (§7 quirk 8, Addendum #3).
    hyst_high: hysteresis seed threshold T1 (0.8), strict `>` as Kovesi's `hysthresh`.
    hyst_low: hysteresis region threshold T2 (0.5), strict `>`.
    connectivity: 8 (the description) or 4 (the HPP port's accident, Addendum #1).
    eps: the `eps` of ni(a) = (a - min) / (max + eps - min). MATLAB uses the float64 eps; in
      float32 the float32 eps (§1.4). Keeps constant frames finite (they map to 0).
    dtype: compute dtype, "float32" (default) or "float64" (needs `jax.enable_x64`; tests).
  """
  size: tuple[int, int] | None = (256, 256)
  resize_method: str = "cubic"
  resize_antialias: bool = True
  max_frames: int = 256
  num_directions: int = 3
  blur_size: int = 15
  blur_sigma: float = 5.0
  blur_border: str = "zero"
  centre_sigma_frac: float = 1.0 / 3.0
  init_threshold: float = 0.5
  hist_bins: tuple[int, int, int] = (100, 25, 10)
  bin_rounding: str = "half_away"
  bg_laplace: bool = True
  hyst_high: float = 0.8
  hyst_low: float = 0.5
  connectivity: int = 8
  eps: float = float(np.finfo(np.float32).eps)
  dtype: str = "float32"

  def __post_init__(self):
    if isinstance(self.size, int):
      object.__setattr__(self, "size", (self.size, self.size))
    elif self.size is not None:
      object.__setattr__(self, "size", tuple(int(s) for s in self.size))
    object.__setattr__(self, "hist_bins", tuple(int(b) for b in self.hist_bins))
    if self.blur_size % 2 != 1:
      raise ValueError(f"blur_size must be odd, got {self.blur_size}")
    if self.blur_border not in ("zero", "reflect101"):
      raise ValueError(f"blur_border must be 'zero' or 'reflect101', got {self.blur_border!r}")
    if self.bin_rounding not in ("half_away", "hpp"):
      raise ValueError(f"bin_rounding must be 'half_away' or 'hpp', got {self.bin_rounding!r}")
    if self.connectivity not in (4, 8):
      raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}")


class VideoPCAMaps(NamedTuple):
  """Outputs of `videopca`, each [T, H, W] at the working resolution; padded frames are 0."""
  soft_mask: jax.Array    # M (step 8), float in [0, 1]; exactly 0 outside the kept components.
  recon_error: jax.Array  # E (step 4), normalised reconstruction error in [0, 1].
  initial_fg: jax.Array   # B (step 5), bool initial foreground that trains the colour model.
  colour_prob: jax.Array  # S (step 7), p(fg | colour) before gating, in [0, 1].
  gate: jax.Array         # A (step 8), bool hysteresis gate.


# ----------------------------------------------------------------------------------- constants


def fspecial_gaussian(shape: tuple[int, int], sigma: float) -> np.ndarray:
  """MATLAB `fspecial('gaussian', shape, sigma)`: centred, tiny values zeroed, sums to 1."""
  ys = np.arange(shape[0]) - (shape[0] - 1) / 2
  xs = np.arange(shape[1]) - (shape[1] - 1) / 2
  h = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2.0 * sigma * sigma))
  h[h < np.finfo(np.float64).eps * h.max()] = 0
  return h / h.sum() if h.sum() != 0 else h


def centre_prior(height: int, width: int, cfg: VideoPCAConfig) -> np.ndarray:
  """[H, W] the "preference for central objects": H x W Gaussian, sigma = min(H, W) / 3."""
  return fspecial_gaussian((height, width), min(height, width) * cfg.centre_sigma_frac)


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
  # fspecial's 2-D kernel is the outer product of this with itself (its eps truncation only
  # bites beyond 8.5 sigma, i.e. never for size ~ 3 sigma), so the blur is two 1-D passes.
  g = np.exp(-(np.arange(size) - (size - 1) / 2) ** 2 / (2.0 * sigma * sigma))
  return g / g.sum()


# ------------------------------------------------------------------------------------ helpers


def _ni(x: jax.Array, axes: tuple[int, ...], eps: float, valid: jax.Array | None = None
        ) -> jax.Array:
  """ni(a) = (a - min a) / (max a + eps - min a) over `axes`; min/max only where `valid`."""
  if valid is None:
    lo, hi = x.min(axes, keepdims=True), x.max(axes, keepdims=True)
  else:
    lo = jnp.where(valid, x, jnp.inf).min(axes, keepdims=True)
    hi = jnp.where(valid, x, -jnp.inf).max(axes, keepdims=True)
    # No valid entry at all (an all-padding video): keep everything finite.
    lo, hi = jnp.where(jnp.isfinite(lo), lo, 0), jnp.where(jnp.isfinite(hi), hi, 0)
  return (x - lo) / (hi + eps - lo)


def _blur(x: jax.Array, cfg: VideoPCAConfig) -> jax.Array:
  """[T, H, W] -> [T, H, W]: the 2-D Gaussian blur as two 1-D correlations, "same" size.

  Shift-and-add over the taps, not `lax.conv`: XLA's CPU convolution with one channel is
  ~15x slower than this fused elementwise loop (measured).
  """
  r = cfg.blur_size // 2
  g = _gaussian_1d(cfg.blur_size, cfg.blur_sigma)
  mode = "constant" if cfg.blur_border == "zero" else "reflect"  # numpy "reflect" = OpenCV's
  # BORDER_REFLECT_101 (the edge pixel is not repeated).
  for axis in (1, 2):
    n = x.shape[axis]
    pad = [(0, 0)] * 3
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad, mode=mode)
    x = sum(float(g[j]) * lax.slice_in_dim(xp, j, j + n, axis=axis) for j in range(len(g)))
  return x


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """MATLAB `rgb2hsv` of [..., 3] floats in [0, 1] -> [..., 3] (h, s, v), each in [0, 1]."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = jnp.max(rgb, axis=-1)
  delta = v - jnp.min(rgb, axis=-1)
  grey = delta == 0
  d = jnp.where(grey, 1, delta)
  # MATLAB assigns the r-, then g-, then b-branch, so later branches win ties.
  h = jnp.where(b == v, 4 + (r - g) / d, jnp.where(g == v, 2 + (b - r) / d, (g - b) / d)) / 6
  h = jnp.where(grey, 0, jnp.where(h < 0, h + 1, h))
  s = jnp.where(grey | (v == 0), 0, delta / jnp.where(v == 0, 1, v))
  return jnp.stack([h, s, v], axis=-1)


def _round_index(x: jax.Array, cfg: VideoPCAConfig) -> jax.Array:
  if cfg.bin_rounding == "half_away":
    return jnp.floor(x + 0.5)  # MATLAB `round` on non-negatives.
  return jnp.round(x + 1) - 1   # HPP: 1-based index rounded half-to-even.


def colour_bins(frames: jax.Array, cfg: VideoPCAConfig) -> jax.Array:
  """[..., 3] normalised RGB -> [...] int32 bin of the 100 x 25 x 10 (hx, hy, v) histogram."""
  nx, ny, nv = cfg.hist_bins
  hsv = rgb_to_hsv(frames)
  angle = 2 * np.pi * hsv[..., 0]
  hx = (hsv[..., 1] * jnp.cos(angle) + 1) / 2
  hy = (hsv[..., 1] * jnp.sin(angle) + 1) / 2
  qx = jnp.clip(_round_index(hx * (nx - 1), cfg), 0, nx - 1).astype(jnp.int32)
  qy = jnp.clip(_round_index(hy * (ny - 1), cfg), 0, ny - 1).astype(jnp.int32)
  qv = jnp.clip(_round_index(hsv[..., 2] * (nv - 1), cfg), 0, nv - 1).astype(jnp.int32)
  return qx + nx * qy + nx * ny * qv


def _shift(x: jax.Array, axis: int, offset: int) -> jax.Array:
  """y[i] = x[i - offset] along `axis`, zero fill (offset = +-1)."""
  n = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (1, 1)
  return lax.slice_in_dim(jnp.pad(x, pad), 1 - offset, n + 1 - offset, axis=axis)


def _pack_rows(x: jax.Array) -> jax.Array:
  """[..., W] bool -> [..., ceil(W / 32)] uint32; pixel 32 j + b is bit b of word j."""
  w = x.shape[-1]
  pad = [(0, 0)] * (x.ndim - 1) + [(0, -w % 32)]
  words = jnp.pad(x, pad).reshape(x.shape[:-1] + (-1, 32)).astype(jnp.uint32)
  return jnp.sum(words << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def _unpack_rows(p: jax.Array, w: int) -> jax.Array:
  bits = (p[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  return bits.reshape(p.shape[:-1] + (-1,))[..., :w].astype(bool)


def _dilate_packed(p: jax.Array, connectivity: int) -> jax.Array:
  """Binary dilation of bit-packed [..., H, W/32] rows by the 3 x 3 square or the cross."""
  # Left/right neighbours: shift inside each word, carrying the edge bit across words.
  horiz = (p | (p << 1) | (_shift(p, -1, 1) >> 31) | (p >> 1) | (_shift(p, -1, -1) << 31))
  vert_src = horiz if connectivity == 8 else p  # The square is separable; the cross is not.
  return horiz | _shift(vert_src, -2, 1) | _shift(vert_src, -2, -1)


def hysteresis(x: jax.Array, high: float, low: float, connectivity: int = 8,
               steps_per_check: int = 4) -> jax.Array:
  """[..., H, W] -> bool: the connected components of {x > low} that contain a pixel > high.

  Geodesic reconstruction (§1.4): seed <- dilate(seed) & region until nothing changes, with a
  3 x 3 (8-connectivity) or cross (4-connectivity) structuring element, in a `lax.while_loop`
  (iterations ~ the geodesic radius of the largest component from its seeds). Connectivity is
  within each [H, W] plane only. Why it is fast enough on CPU:
  * the masks are bit-packed, 32 pixels per uint32 word, so a dilation touches W/32 words
    per row instead of W bytes (8x less memory traffic than bool, ~10x faster measured);
  * `steps_per_check` dilations run between two convergence tests: extra dilations of a
    converged map are no-ops, and the test is a full reduction, as costly as a dilation.
  (Filling whole row/column runs per iteration with cumulative-max scans needs fewer
  iterations but was 3x slower on CPU than plain dilations.)
  """
  w = x.shape[-1]
  region = _pack_rows(x > low)
  seed = _pack_rows(x > high) & region

  def body(state):
    s, _ = state
    new = s
    for _ in range(steps_per_check):
      new = _dilate_packed(new, connectivity) & region
    return new, jnp.any(new != s)

  packed = lax.while_loop(lambda state: state[1], body, (seed, jnp.array(True)))[0]
  return _unpack_rows(packed, w)


def resize_video(video: jax.Array, size: tuple[int, int], method: str = "cubic",
                 antialias: bool = True) -> jax.Array:
  """[T, H, W, C] float in [0, 1] -> [T, size[0], size[1], C], clipped back to [0, 1]."""
  t, _, _, c = video.shape
  out = jax.image.resize(video, (t, size[0], size[1], c), method=method, antialias=antialias)
  return jnp.clip(out, 0, 1)  # Cubic kernels overshoot.


def to_float_video(video: jax.Array, dtype) -> jax.Array:
  """uint8 (0..255) or float ([0, 1]) frames -> float `dtype` in [0, 1]."""
  if jnp.issubdtype(video.dtype, jnp.integer):
    return video.astype(dtype) / 255
  return video.astype(dtype)


def split_video(num_frames: int, max_frames: int) -> list[tuple[int, int]]:
  """[start, stop) of consecutive, near-equal chunks of <= max_frames frames (§8 #2).

  Equal chunks, not max_frames-sized ones plus a remainder: a remainder of 1-2 frames would
  be a degenerate PCA (every frame perfectly reconstructed by k = 3 directions).
  """
  n = max(1, -(-num_frames // max_frames))
  bounds = np.linspace(0, num_frames, n + 1).round().astype(int)
  return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


# ------------------------------------------------------------------------------------- kernel

# Working-set sizes of the streamed stages, in elements of the compute dtype (2^21 = 8 MiB in
# float32): the Gram matrix and the PCA coefficients are accumulated over pixel chunks of
# T x Pc values, everything after the PCA runs over blocks of F frames (F x H x W x 3 values),
# so the kernel's temporaries are O(these + T x T + k x P), not O(T x P). Larger blocks
# measured no faster on CPU; much smaller ones pay per-iteration overhead.
_PIXEL_CHUNK_ELEMENTS = 2**21
_FRAME_BLOCK_ELEMENTS = 2**22
# Videos of at most this many pixels (T x H x W) keep their error maps and colour bins
# between passes (6 bytes per pixel); longer ones recompute them, block by block.
_STORED_PIXELS = 2**23


def _window(i: jax.Array, size: int, total: int) -> tuple[jax.Array, jax.Array]:
  """Start of step i's window of `size` (clamped so it stays inside `total`) and the [size]
  mask of the entries it covers for the first time (the last window may overlap)."""
  start = jnp.minimum(i * size, total - size)
  return start, start + jnp.arange(size) >= i * size


class _Prepared(NamedTuple):
  raw: jax.Array      # [T, P] the frames, uint8 or float, flattened (P = 3 H W).
  valid: jax.Array    # [T] bool.
  lo: jax.Array       # [T] per-frame min, in [0, 1] (compute dtype).
  den: jax.Array      # [T] per-frame max + eps - min.
  mean: jax.Array     # [T] per-frame mean of the normalised frame (step 2's scalar mean).
  lo_int: jax.Array | None  # [T] int32 min / max of uint8 frames (exact colour bins), or None.
  hi_int: jax.Array | None


def _prepare(video: jax.Array, valid: jax.Array, cfg: VideoPCAConfig) -> _Prepared:
  dtype = jnp.dtype(cfg.dtype)
  t = video.shape[0]
  raw = video.reshape(t, -1)
  if raw.dtype == jnp.uint8:
    lo_int, hi_int = raw.min(1).astype(jnp.int32), raw.max(1).astype(jnp.int32)
    lo, hi = lo_int.astype(dtype) / 255, hi_int.astype(dtype) / 255
    # (A float sum: XLA:CPU materialises an int32 copy of the frames for an integer one.)
    total = jnp.sum(raw.astype(dtype), axis=1) / 255
  else:
    raw = raw.astype(dtype)
    lo_int = hi_int = None
    lo, hi, total = raw.min(1), raw.max(1), raw.sum(1)
  den = hi + cfg.eps - lo
  mean = (total / raw.shape[1] - lo) / den  # = mean of (x - lo) / den
  exact = lo_int is not None and colour_codes.check_exact_bins_supported(cfg.eps,
                                                                         cfg.hist_bins)
  return _Prepared(raw, valid, lo, den, mean, lo_int if exact else None,
                   hi_int if exact else None)


def _centred(prep: _Prepared, rows: jax.Array, cols: jax.Array | None, raw: jax.Array,
             dtype) -> jax.Array:
  """Steps 1-2 on a slice of the frames: X_c = ni(frame) - m, 0 on padded frames (and on
  `cols` False). `rows` indexes the slice's frames."""
  x = (to_float_video(raw, dtype) - prep.lo[rows, None]) / prep.den[rows, None]
  keep = prep.valid[rows, None] if cols is None else prep.valid[rows, None] & cols[None]
  # `where`, so even NaN padding cannot leak into the PCA.
  return jnp.where(keep, x - prep.mean[rows, None], 0)


def _principal_directions(prep: _Prepared, cfg: VideoPCAConfig) -> tuple[jax.Array,
                                                                         jax.Array]:
  """Step 3: V_k [T, k] (top-k eigenvectors of the T x T Gram matrix) and the coefficients
  V_k^T X_c [k, P], both accumulated over pixel chunks."""
  dtype = jnp.dtype(cfg.dtype)
  t, p = prep.raw.shape
  every = jnp.arange(t)
  chunk = min(p, max(1, _PIXEL_CHUNK_ELEMENTS // t))
  steps = -(-p // chunk)

  def centred_chunk(i):
    start, fresh = _window(i, chunk, p)
    raw = jax.lax.dynamic_slice_in_dim(prep.raw, start, chunk, axis=1)
    return start, fresh, _centred(prep, every, fresh, raw, dtype)

  # The Gram matrix is symmetric: for long videos only its upper blocks are multiplied
  # (10 of 16 for 4 x 4 blocks, 62.5 % of the FLOPs of X_c X_c^T).
  parts = min(4, max(1, t // 128))
  bounds = np.linspace(0, t, parts + 1).round().astype(int)
  pairs = [(a, b) for a in range(parts) for b in range(a, parts)]

  def gram_step(i, blocks):
    xc = centred_chunk(i)[2]
    rows = [xc[bounds[a]:bounds[a + 1]] for a in range(parts)]
    return tuple(acc + jnp.matmul(rows[a], rows[b].T, precision=_HIGHEST)
                 for acc, (a, b) in zip(blocks, pairs))

  blocks = jax.lax.fori_loop(
      0, steps, gram_step,
      tuple(jnp.zeros((bounds[a + 1] - bounds[a], bounds[b + 1] - bounds[b]), dtype)
            for a, b in pairs))
  upper = dict(zip(pairs, blocks))
  gram = jnp.block([[upper[(a, b)] if a <= b else upper[(b, a)].T for b in range(parts)]
                    for a in range(parts)])
  _, vecs = jnp.linalg.eigh(gram)  # ascending eigenvalues
  vk = vecs[:, t - cfg.num_directions:]
  # A zero row of X_c (a padded or a constant, e.g. black, frame) is a zero row and column of
  # the Gram matrix, so the exact eigenvectors of non-zero eigenvalues are 0 there. float32
  # eigh leaves ~1e-8 instead, which becomes a non-zero error map for that frame, and the
  # per-frame ni of step 5 blows it up to [0, 1]; float64 (MATLAB) keeps it ~1e-17, i.e. 0.
  vk = jnp.where((jnp.diagonal(gram) > 0)[:, None], vk, 0)

  def coeff_step(i, coeff):
    start, fresh, xc = centred_chunk(i)
    part = jnp.matmul(vk.T, xc, precision=_HIGHEST)
    old = jax.lax.dynamic_slice_in_dim(coeff, start, chunk, axis=1)
    return jax.lax.dynamic_update_slice_in_dim(coeff, jnp.where(fresh, part, old), start, 1)

  coeff = jax.lax.fori_loop(0, steps, coeff_step,
                            jnp.zeros((cfg.num_directions, p), dtype))
  return vk, coeff


def _frame_blocks(prep: _Prepared, init, step, block: int):
  """Runs `step(carry, rows, fresh, raw_block) -> carry` over blocks of `block` frames."""
  t = prep.raw.shape[0]

  def body(i, carry):
    start, fresh = _window(i, block, t)
    rows = start + jnp.arange(block)
    raw = jax.lax.dynamic_slice_in_dim(prep.raw, start, block, axis=0)
    return step(carry, rows, fresh, raw)

  return jax.lax.fori_loop(0, -(-t // block), body, init)


def _videopca(video: jax.Array, frame_mask: jax.Array | None, cfg: VideoPCAConfig,
              with_maps: bool) -> VideoPCAMaps:
  """The algorithm (see `videopca`); `with_maps=False` keeps only the soft masks."""
  dtype = jnp.dtype(cfg.dtype)
  video = jnp.asarray(video)
  if cfg.size is not None and tuple(video.shape[1:3]) != cfg.size:
    video = resize_video(to_float_video(video, dtype), cfg.size, cfg.resize_method,
                         cfg.resize_antialias)
  t, h, w, _ = video.shape
  valid = jnp.ones((t,), bool) if frame_mask is None else jnp.asarray(frame_mask, bool)
  eps = cfg.eps
  prep = _prepare(video, valid, cfg)
  vk, coeff = _principal_directions(prep, cfg)
  prior = jnp.asarray(centre_prior(h, w, cfg), dtype)
  block = min(t, max(1, _FRAME_BLOCK_ELEMENTS // prep.raw.shape[1]))
  nbins = int(np.prod(cfg.hist_bins))

  def error_map(rows, raw):
    # Step 4: ||X - X^|| over the colour channels, X - X^ = X_c - V_k (V_k^T X_c), the k
    # terms written out so that the whole map is one fused elementwise pass.
    xc = _centred(prep, rows, None, raw, dtype)
    resid = xc - sum(vk[rows, j, None] * coeff[j] for j in range(cfg.num_directions))
    return jnp.sqrt(jnp.sum(resid.reshape(block, h, w, 3) ** 2, axis=-1))

  def compute_bins(rows, raw):
    frames = raw.reshape(block, h, w, 3)
    if prep.lo_int is not None:  # uint8: exact integer colour codes (colour_codes.py)
      return colour_codes.colour_bins_uint8(frames, prep.lo_int[rows], prep.hi_int[rows],
                                            cfg.hist_bins, cfg.bin_rounding, dtype)
    x = (frames.astype(dtype) - prep.lo[rows, None, None, None]) / prep.den[
        rows, None, None, None]
    return colour_bins(x, cfg)

  # 4. The error's min / max over all valid frames (one ni per video). A short video keeps
  # its error maps and colour bins for the later passes; a long one recomputes them per block
  # (memory O(output) instead of 2.5x that).
  keep_maps = t * h * w <= _STORED_PIXELS
  bin_dtype = jnp.int16 if nbins < 2**15 else jnp.int32

  def first_pass(carry, rows, fresh, raw):
    err = error_map(rows, raw)
    keep = (prep.valid[rows] & fresh)[:, None, None]
    out = {"lo": jnp.minimum(carry["lo"], jnp.where(keep, err, jnp.inf).min()),
           "hi": jnp.maximum(carry["hi"], jnp.where(keep, err, -jnp.inf).max())}
    if keep_maps:  # Overlapping last block: the rewritten rows get the same values.
      out["err"] = jax.lax.dynamic_update_slice_in_dim(carry["err"], err, rows[0], 0)
      out["bins"] = jax.lax.dynamic_update_slice_in_dim(
          carry["bins"], compute_bins(rows, raw).astype(bin_dtype), rows[0], 0)
    return out

  init = {"lo": jnp.array(jnp.inf, dtype), "hi": jnp.array(-jnp.inf, dtype)}
  if keep_maps:
    init.update(err=jnp.zeros((t, h, w), dtype), bins=jnp.zeros((t, h, w), bin_dtype))
  first = _frame_blocks(prep, init, first_pass, block)
  # No valid frame at all (an all-padding video): keep everything finite.
  err_lo = jnp.where(jnp.isfinite(first["lo"]), first["lo"], 0)
  err_hi = jnp.where(jnp.isfinite(first["hi"]), first["hi"], 0)

  def bins_of(rows, raw):
    if keep_maps:
      return jax.lax.dynamic_slice_in_dim(first["bins"], rows[0], block, 0).astype(jnp.int32)
    return compute_bins(rows, raw)

  def initial_foreground(rows, raw):
    # 5. Initial binary foreground: blur, centre prior, double ni (as `getSeg.m`).
    err = (jax.lax.dynamic_slice_in_dim(first["err"], rows[0], block, 0) if keep_maps
           else error_map(rows, raw))
    err = (err - err_lo) / (err_hi + eps - err_lo)
    a = _ni(_blur(err, cfg) * prior, (1, 2), eps)
    return err, (_ni(a, (1, 2), eps) > cfg.init_threshold) & prep.valid[rows, None, None]

  # 6. Colour histograms pooled over all valid frames. One int32 scatter: bin + nbins * B, so
  # counts stay exact beyond 2^24 pixels (float32 would not).
  def histogram(counts, rows, fresh, raw):
    _, init_fg = initial_foreground(rows, raw)
    weight = jnp.broadcast_to((prep.valid[rows] & fresh)[:, None, None], init_fg.shape)
    index = bins_of(rows, raw) + nbins * init_fg.astype(jnp.int32)
    return counts.at[index.reshape(-1)].add(weight.astype(jnp.int32).reshape(-1))

  counts = _frame_blocks(prep, jnp.zeros((2 * nbins,), jnp.int32), histogram, block)
  bg, fg = counts[:nbins].astype(dtype), counts[nbins:].astype(dtype)
  if cfg.bg_laplace:
    bg = bg + 1
  fg = fg / jnp.maximum(fg.sum(), 1)  # No foreground pixel at all: H_fg = 0, so S = 0.
  bg = bg / jnp.maximum(bg.sum(), 1)
  # 7. p(fg | colour) with equal priors, looked up per pixel.
  den = fg + bg
  table = jnp.where(den > 0, fg / jnp.where(den > 0, den, 1), 0)

  # 8. Gate with the centre prior, but keep the un-weighted p(fg | colour) inside the gate.
  def masks(maps, rows, fresh, raw):
    valid3 = prep.valid[rows, None, None]
    colour_prob = jnp.where(valid3, table[bins_of(rows, raw)], 0)
    gate = hysteresis(_ni(colour_prob * prior, (1, 2), eps), cfg.hyst_high, cfg.hyst_low,
                      cfg.connectivity) & valid3
    new = {"soft_mask": jnp.where(valid3, _ni(colour_prob * gate, (1, 2), eps), 0)}
    if with_maps:
      err, init_fg = initial_foreground(rows, raw)
      new.update(recon_error=jnp.where(valid3, err, 0), initial_fg=init_fg,
                 colour_prob=colour_prob, gate=gate)
    start = rows[0]
    out = {}
    for name, value in new.items():
      old = jax.lax.dynamic_slice_in_dim(maps[name], start, block, axis=0)
      value = jnp.where(fresh[:, None, None], value, old)
      out[name] = jax.lax.dynamic_update_slice_in_dim(maps[name], value, start, 0)
    return out

  shapes = {"soft_mask": dtype}
  if with_maps:
    shapes.update(recon_error=dtype, initial_fg=bool, colour_prob=dtype, gate=bool)
  maps = _frame_blocks(prep, {k: jnp.zeros((t, h, w), d) for k, d in shapes.items()}, masks,
                       block)
  return VideoPCAMaps(**{f: maps.get(f) for f in VideoPCAMaps._fields})


def videopca(video: jax.Array, frame_mask: jax.Array | None = None,
             cfg: VideoPCAConfig = VideoPCAConfig()) -> VideoPCAMaps:
  """VideoPCA on one video: the soft masks and the intermediate maps.

  Memory: the [T, H, W] outputs plus O(T x T + k x 3HW) and fixed-size working blocks (see
  `_PIXEL_CHUNK_ELEMENTS`); the frames are never held as a float copy. Use
  `videopca_soft_masks` when only the masks are needed (the other maps then cost nothing).

  Args:
    video: [T, H, W, 3] RGB, uint8 or float in [0, 1]. Resized to `cfg.size` if that is set
      and differs from (H, W). uint8 frames at the working size get exact integer colour
      bins (`colour_codes.py`); BGR frames work but give a mirrored hue circle (see there).
    frame_mask: [T] bool, True for real frames (a variable-length video padded to T). Padded
      frames do not influence the valid ones and get 0 in every output. None: all valid.
      At least k = 3 valid frames are needed for a meaningful PCA.
    cfg: the constants.

  Returns:
    VideoPCAMaps, each [T, h, w] at the working resolution.
  """
  return _videopca(video, frame_mask, cfg, with_maps=True)


def videopca_soft_masks(video: jax.Array, frame_mask: jax.Array | None = None,
                        cfg: VideoPCAConfig = VideoPCAConfig()) -> jax.Array:
  """[T, H, W, 3] video (+ [T] bool frame mask) -> [T, h, w] float soft masks in [0, 1]."""
  return _videopca(video, frame_mask, cfg, with_maps=False).soft_mask


@functools.partial(jax.jit, static_argnames=("cfg", "with_maps"))
def videopca_batch(videos: jax.Array, frame_masks: jax.Array | None = None,
                   cfg: VideoPCAConfig = VideoPCAConfig(), with_maps: bool = False
                   ) -> jax.Array | VideoPCAMaps:
  """Jitted VideoPCA over a batch: one independent PCA per video.

  The videos are processed one after the other inside the kernel (`lax.map`), not vmapped: a
  batch then costs the sum of its videos (a vmapped hysteresis loop would run every video
  until the slowest converges) and needs the memory of one. Under a mesh with a `data` axis
  that divides N, each device maps over its own shard (`shard_map`).

  Args:
    videos: [N, T, H, W, 3] uint8 or float in [0, 1]; may be sharded along N (e.g.
      `sharding.shard_batch` on a `data` mesh).
    frame_masks: [N, T] bool (None: all frames valid).
    cfg: the constants (static: a new config compiles a new kernel).
    with_maps: return all VideoPCAMaps instead of the soft masks only.

  Returns:
    [N, T, h, w] float soft masks, or VideoPCAMaps with [N, T, h, w] fields.
  """
  if frame_masks is None:
    frame_masks = jnp.ones(videos.shape[:2], bool)

  def one_by_one(v, m):
    maps = jax.lax.map(lambda vm: _videopca(vm[0], vm[1], cfg, with_maps), (v, m))
    return maps if with_maps else maps.soft_mask

  mesh = jax.sharding.get_abstract_mesh()
  if (not mesh.empty and DATA_AXIS in mesh.axis_names and mesh.shape[DATA_AXIS] > 1
      and videos.shape[0] % mesh.shape[DATA_AXIS] == 0):
    spec = jax.sharding.PartitionSpec(DATA_AXIS)
    # check_vma=False: the per-video loops start from replicated constants (zeros), which the
    # varying-axes checker would otherwise ask to be cast; nothing crosses devices here.
    return jax.shard_map(one_by_one, mesh=mesh, in_specs=(spec, spec), out_specs=spec,
                         check_vma=False)(
        videos, frame_masks)
  return one_by_one(videos, frame_masks)
