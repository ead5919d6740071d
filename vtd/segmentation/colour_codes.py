"""VideoPCA's colour-bin codes of uint8 frames, decided exactly (integer arithmetic).

Step 6 of VideoPCA (`videopca.py`) bins every pixel of the per-frame min-max normalised frame
by (hx, hy, v) = ((s cos 2 pi h + 1) / 2, (s sin 2 pi h + 1) / 2, v) of its HSV colour, each
rounded on a grid of (nx, ny, nv) = (100, 25, 10) points. With uint8 frames every quantity
but the trigonometry is a ratio of small integers (X = the pixel's channels, L / H = the
frame's min / max over all channels and pixels, M / m = the pixel's max / min channel):

  f_c = (X_c - L) / (H - L + 255 eps)      the normalised channel (ni of X / 255)
  v   = (M - L) / (H - L + 255 eps)        s = (M - m) / (M - L)        (s = 0 if M = L)
  6 h = base + num / (M - m)               base, num from MATLAB's rgb2hsv branches

Real video is full of exact ties: grey pixels (s = 0: hx = 1/2, i.e. 49.5 on the 100-grid),
hues at multiples of 30 degrees where cos / sin are 0, +-1/2 or +-1 (any pixel with two equal
channels, or one channel midway), values with v (nv - 1) = k + 1/2 up to the eps. Computed in
float32 -- where `jit` also turns /255, /6 and the normalisation into multiplications by
rounded reciprocals -- such a pixel lands in either neighbouring bin, and one moved pixel
changes p(fg | colour) of its whole bin (measured: mask IoU 0.986 against
float64 on 64 real frames). Here:

* qv is exact: the number of boundaries k - 1/2 with (2k - 1)(H - L) < 2 (nv - 1)(M - L)
  (eps > 0 puts a value exactly on a boundary below it, as exact arithmetic does; valid
  while 255 eps (2 nv - 1) < 1), from a per-frame table over M - L.
* qx, qy are exact whenever the exact value is rational, i.e. whenever it can be a tie: 12 h
  is an integer and cos (for qx) / sin (for qy) of 30 deg x 12 h is 0, +-1/2 or +-1. The
  value is then a fraction A / B of small integers (B <= 1020) evaluated in float: a
  non-tie is >= 1 / (2B) from every half-integer, far beyond float32 error, so a value
  within 1e-4 of one is the tie itself and the rounding rule is applied to it exactly.
* Otherwise the value is irrational, never a tie; it is computed in float from exact inputs
  (cos / sin from a table of values indexed by the exact angle: no transcendental function
  and no integer division per pixel, both slow on CPU).

Input channel order is RGB (like MATLAB's rgb2hsv and the papers' code). BGR input swaps R and
B: v, s and the PCA are unchanged, the hue circle is mirrored (h -> 2/3 - h), so the
histograms quantise a mirrored disc on the same grid -- a different, equally valid colour
model whose masks differ slightly (measured in `docs/benchmarks.md`), not a failure.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# 2 cos(30 deg x j) and 2 sin(30 deg x j) for j = 12 h in 0..11 where rational (NaN: irrational,
# the float path decides).
_NAN = float("nan")
_COS2 = np.array([2, _NAN, 1, 0, -1, _NAN, -2, _NAN, -1, 0, 1, _NAN])
_SIN2 = np.array([0, 1, _NAN, 2, _NAN, 1, 0, -1, _NAN, -2, _NAN, -1])
# A fraction A / B with B <= 4 * 255 that is not a half-integer is >= 1 / (2B) > 4.9e-4 away
# from every half-integer; float32 evaluates the bin coordinates (< 100) to within ~1e-5.
_TIE_TOLERANCE = 1e-4


@functools.lru_cache(maxsize=None)
def _angle_table() -> np.ndarray:
  """[1530 * 256, 4] float64 per exact hue angle 2 pi H6 / (6 delta), indexed by
  H6 * 256 + delta (0 <= H6 < 6 delta <= 1530; grey pixels use index 0): cos, sin (rounded
  once to the compute dtype) and 2 cos, 2 sin where those are integers (12 h an integer and
  the value 0, +-1/2, +-1), else NaN. A table instead of arithmetic: no transcendental
  function and no integer division per pixel (both are slow on CPU)."""
  h6, delta = np.meshgrid(np.arange(6 * 255), np.arange(256), indexing="ij")
  delta = np.maximum(delta, 1)
  angle = 2 * np.pi * h6 / (6 * delta)
  whole = (2 * h6) % delta == 0
  twelve_h = np.where(whole, (2 * h6) // delta, 0) % 12
  cos2 = np.where(whole, _COS2[twelve_h], np.nan)
  sin2 = np.where(whole, _SIN2[twelve_h], np.nan)
  return np.stack([np.cos(angle), np.sin(angle), cos2, sin2], -1).reshape(-1, 4)


def check_exact_bins_supported(eps: float, hist_bins: tuple[int, int, int]) -> bool:
  """Whether the exact rules hold: eps > 0 breaks the v ties, 255 eps (2 nv - 1) < 1, and the
  grids are small enough for the tie tolerance."""
  return eps > 0 and 255 * eps * (2 * hist_bins[2] - 1) < 1 and max(hist_bins) <= 1000


def _round(x: jax.Array, rounding: str, exact_ties: jax.Array | None = None) -> jax.Array:
  """MATLAB's round-half-away (x >= 0) or HPP's round-half-even of (x + 1), minus 1. Where
  `exact_ties`, x is a float evaluation of an exact fraction: a value within the tolerance
  of a half-integer IS that half-integer, and the rule is applied to it exactly."""
  if exact_ties is not None:
    half = jnp.floor(x) + 0.5
    x = jnp.where(exact_ties & (jnp.abs(x - half) < _TIE_TOLERANCE), half, x)
  if rounding == "half_away":
    return jnp.floor(x + 0.5)
  return jnp.round(x + 1) - 1


def value_bin_table(lo: jax.Array, hi: jax.Array, nv: int) -> jax.Array:
  """[F, 256] int32: qv of a pixel whose largest channel is lo + j, exactly (the number of
  boundaries k - 1/2 that v (nv - 1) exceeds; equality means below, by the eps)."""
  j = jnp.arange(256)[None, :, None]
  k = jnp.arange(1, nv)[None, None, :]
  d = (hi - lo)[:, None, None]
  return jnp.sum((2 * k - 1) * d < 2 * (nv - 1) * j, axis=-1, dtype=jnp.int32)


def colour_bins_uint8(frames: jax.Array, lo: jax.Array, hi: jax.Array,
                      hist_bins: tuple[int, int, int], rounding: str,
                      dtype=jnp.float32) -> jax.Array:
  """[F, H, W, 3] uint8 RGB frames -> [F, H, W] int32 bins qx + nx qy + nx ny qv.

  Args:
    frames: uint8 RGB.
    lo, hi: [F] int32 min and max of each frame over all pixels and channels.
    hist_bins: (nx, ny, nv).
    rounding: "half_away" (MATLAB `round`) or "hpp" (see VideoPCAConfig.bin_rounding).
    dtype: float dtype of the (irrational) values that are not decided exactly.
  """
  nx, ny, nv = hist_bins
  f = frames.shape[0]
  x = frames.astype(jnp.int32)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  top, bottom = jnp.maximum(jnp.maximum(r, g), b), jnp.minimum(jnp.minimum(r, g), b)
  delta = top - bottom
  v_den = top - lo[:, None, None]  # s = delta / v_den; qv depends on v_den only.
  qv = jnp.take_along_axis(value_bin_table(lo, hi, nv), v_den.reshape(f, -1), axis=1)

  # 6 h delta = base delta + num, MATLAB's branch order (later branches win ties); wrap < 0.
  h6 = jnp.where(b == top, 4 * delta + r - g, jnp.where(g == top, 2 * delta + b - r, g - b))
  h6 = jnp.where(h6 < 0, h6 + 6 * delta, h6)
  angle = jnp.asarray(_angle_table(), dtype)[jnp.where(delta == 0, 0, h6 * 256 + delta)]

  # s = s_num / s_den exactly (grey or black: 0 / 1), all small integers, exact in float.
  s_num = jnp.where(v_den > 0, delta, 0).astype(dtype)
  s_den = jnp.maximum(v_den, 1).astype(dtype)
  s = s_num / s_den

  def axis_bin(trig, twice_exact, n_axis):
    rational = ~jnp.isnan(twice_exact)
    # Rational: V = (n - 1)(2 s_den + s_num t2) / (4 s_den), from exact integers.
    value = jnp.where(rational,
                      (n_axis - 1) * (2 * s_den + s_num * jnp.where(rational, twice_exact, 0))
                      / (4 * s_den),
                      (s * trig + 1) / 2 * (n_axis - 1))
    return jnp.clip(_round(value, rounding, rational), 0, n_axis - 1).astype(jnp.int32)

  qx = axis_bin(angle[..., 0], angle[..., 2], nx)
  qy = axis_bin(angle[..., 1], angle[..., 3], ny)
  return qx + nx * qy + nx * ny * qv.reshape(qx.shape)
