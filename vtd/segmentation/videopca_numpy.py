"""Plain NumPy/OpenCV/SciPy VideoPCA: a literal transcription of the reference, the test oracle.

Follows `shared/reference/segmentation.md` §1.2 step by step, in the MATLAB layout (frames as
the columns of X [P, T]), with the obvious library calls and none of the JAX kernel's tricks:
`np.linalg.eigh` on the Gram matrix, `cv2.filter2D` with the full 2-D `fspecial` kernel (a
correlation, like `imfilter`), `np.bincount` histograms and `scipy.ndimage.label` connected
components for the hysteresis (Kovesi's `hysthresh` = `bwselect` on {x > T2} at {x > T1}).
It takes only the valid frames of a video: there is no padding here, so comparing it with the
padded JAX kernel also checks the kernel's masking. `bench/videopca.py` times it. For uint8
frames the colour bins follow `exact_colour_bins` (rounding ties decided exactly, as the
kernel does); float frames use the float64 formulas.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from vtd.segmentation.colour_codes import check_exact_bins_supported
from vtd.segmentation.videopca import VideoPCAConfig, centre_prior, fspecial_gaussian


def ni(a: np.ndarray, eps: float) -> np.ndarray:
  """(a - min a) / (max a + eps - min a) over all entries."""
  return (a - a.min()) / (a.max() + eps - a.min())


def rgb2hsv(rgb: np.ndarray) -> np.ndarray:
  """MATLAB `rgb2hsv`, line by line, for [..., 3] floats in [0, 1]."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = rgb.max(axis=-1)
  s = v - rgb.min(axis=-1)
  z = s == 0
  s = s + z  # Avoids 0/0; those pixels get h = 0 and s = 0 below.
  h = np.zeros_like(v)
  k = r == v
  h[k] = (g[k] - b[k]) / s[k]
  k = g == v
  h[k] = 2 + (b[k] - r[k]) / s[k]
  k = b == v
  h[k] = 4 + (r[k] - g[k]) / s[k]
  h = h / 6
  h[h < 0] += 1
  h = (~z) * h
  k = v != 0
  s[k] = (~z[k]) * s[k] / v[k]
  s[~k] = 0
  return np.stack([h, s, v], axis=-1)


def hysthresh(im: np.ndarray, t1: float, t2: float, connectivity: int = 8) -> np.ndarray:
  """[H, W] -> bool: components of {im > t2} (8- or 4-connected) holding a pixel > t1."""
  structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
  labels, n = ndimage.label(im > t2, structure=structure)
  keep = np.zeros(n + 1, bool)
  keep[labels[im > t1]] = True
  keep[0] = False
  return keep[labels]


def _round(x: np.ndarray, rounding: str) -> np.ndarray:
  if rounding == "half_away":
    return np.floor(x + 0.5)      # MATLAB round (x >= 0).
  return np.round(x + 1) - 1      # HPP: 1-based, half-to-even.


def _round_exact(num: np.ndarray, den: np.ndarray, rounding: str) -> np.ndarray:
  """round(num / den) of non-negative fractions in exact integer arithmetic."""
  if rounding == "half_away":
    return np.floor_divide(2 * num + den, 2 * den)
  q, r = np.divmod(2 * (num + den), den)  # 2 (num / den + 1) = q + r / den
  tie = (r == 0) & (q % 2 == 1)           # num / den + 1 = (q - 1) / 2 + 1/2
  return np.where(tie, (q // 2) + (q // 2) % 2, np.floor_divide(q + 1, 2)) - 1


def exact_colour_bins(video: np.ndarray, cfg: VideoPCAConfig) -> np.ndarray:
  """[T, H, W, 3] uint8 RGB -> [T, H, W] bins of the normalised frames with every possible
  rounding tie decided exactly (the definition `colour_codes.py` implements; see there).

  Written from the definition, case by case: v = (M - L) / (H - L + 255 eps) against each
  half-integer boundary k - 1/2 in integers; s = (M - m) / (M - L) and 12 h as fractions;
  for the 12 h where cos or sin is 0, +-1/2, +-1 the bin coordinate is the exact fraction
  (n - 1)(1 + s cos) / 2; everywhere else it is irrational and computed in float64.
  """
  nx, ny, nv = cfg.hist_bins
  x = video.astype(np.int64)
  lo = x.min(axis=(1, 2, 3))[:, None, None]
  hi = x.max(axis=(1, 2, 3))[:, None, None]
  big, small = x.max(axis=-1), x.min(axis=-1)
  delta, v_den = big - small, big - lo
  # qv: count the boundaries k - 1/2 (k = 1..nv-1) that v (nv - 1) exceeds; equality at a
  # boundary means v (nv - 1) = k - 1/2 - (a multiple of eps): below it.
  qv = np.zeros(delta.shape, np.int64)
  for k in range(1, nv):
    qv += (2 * k - 1) * (hi - lo) < 2 * (nv - 1) * v_den
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  num = np.where(b == big, 4 * delta + r - g, np.where(g == big, 2 * delta + b - r, g - b))
  num = np.where(num < 0, num + 6 * delta, num)          # 6 h delta, in [0, 6 delta)
  safe = np.maximum(delta, 1)
  whole = (delta == 0) | ((2 * num) % safe == 0)         # 12 h is an integer
  twelve_h = np.where(delta == 0, 0, (2 * num) // safe) % 12
  s_num, s_den = np.where(v_den > 0, delta, 0), np.maximum(v_den, 1)
  h = np.where(delta == 0, 0.0, num / (6.0 * safe))
  s = s_num / s_den
  angle = 30 * twelve_h                                   # degrees, when `whole`
  out = []
  for n, trig, degrees_to_twice in (
      (nx, np.cos, {0: 2, 60: 1, 90: 0, 120: -1, 180: -2, 240: -1, 270: 0, 300: 1}),
      (ny, np.sin, {0: 0, 30: 1, 90: 2, 150: 1, 180: 0, 210: -1, 270: -2, 330: -1})):
    rational = whole & np.isin(angle, list(degrees_to_twice))
    twice = np.zeros_like(angle)
    for deg, val in degrees_to_twice.items():
      twice[angle == deg] = val
    exact = _round_exact((n - 1) * (2 * s_den + s_num * twice), 4 * s_den, cfg.bin_rounding)
    approx = _round((s * trig(2 * np.pi * h) + 1) / 2 * (n - 1), cfg.bin_rounding)
    out.append(np.clip(np.where(rational, exact, approx), 0, n - 1).astype(np.int64))
  return out[0] + nx * out[1] + nx * ny * qv


def videopca_numpy(video: np.ndarray, cfg: VideoPCAConfig = VideoPCAConfig(),
                   dtype=np.float64) -> dict[str, np.ndarray]:
  """VideoPCA of one video at its own resolution (`cfg.size` is ignored: resize first).

  Args:
    video: [T, H, W, 3] RGB, uint8 or float in [0, 1]; every frame is valid.
    cfg: the constants (the same knobs as the JAX kernel).
    dtype: compute dtype (float64 = MATLAB double; float32 for a like-for-like benchmark).

  Returns:
    dict of [T, H, W] arrays: soft_mask, recon_error, initial_fg, colour_prob, gate.
  """
  eps = cfg.eps
  video = np.asarray(video)
  f = video.astype(dtype) / 255 if np.issubdtype(video.dtype, np.integer) else video.astype(dtype)
  t, h, w, _ = f.shape

  # 1. Normalise every frame (over its three channels) and vectorise: X is P x T.
  f = np.stack([ni(f[i], eps) for i in range(t)])
  x = f.reshape(t, -1).T

  # 2. MATLAB mean(Data) on P x T: one scalar per frame.
  m = x.mean(axis=0)
  xc = x - m[None, :]

  # 3. PCA via the T x T matrix; k largest eigenvalues.
  gram = xc.T @ xc
  evals, evecs = np.linalg.eigh(gram)
  vk = evecs[:, np.argsort(evals)[::-1][:cfg.num_directions]]
  x_hat = xc @ vk @ vk.T + m[None, :]

  # 4. Per-pixel Euclidean error over the 3 channels, ni over the whole volume.
  diff = (x - x_hat).T.reshape(t, h, w, 3)
  err = ni(np.sqrt((diff ** 2).sum(axis=-1)), eps)

  # 5. Blur (imfilter: correlation, zero padding, same size), centre prior, threshold.
  g_blur = fspecial_gaussian((cfg.blur_size, cfg.blur_size), cfg.blur_sigma).astype(dtype)
  g_centre = centre_prior(h, w, cfg).astype(dtype)
  border = cv2.BORDER_CONSTANT if cfg.blur_border == "zero" else cv2.BORDER_REFLECT_101
  init_fg = np.zeros((t, h, w), bool)
  for i in range(t):
    a = cv2.filter2D(err[i], -1, g_blur, borderType=border)
    a = ni(a * g_centre, eps)
    init_fg[i] = ni(a, eps) > cfg.init_threshold

  # 6. HSV of the normalised frames, hue/saturation on the Cartesian disc, quantised.
  nx, ny, nv = cfg.hist_bins
  hsv = rgb2hsv(f)
  hx = (hsv[..., 1] * np.cos(2 * np.pi * hsv[..., 0]) + 1) / 2
  hy = (hsv[..., 1] * np.sin(2 * np.pi * hsv[..., 0]) + 1) / 2
  qx = _round(hx * (nx - 1), cfg.bin_rounding).astype(np.int64)
  qy = _round(hy * (ny - 1), cfg.bin_rounding).astype(np.int64)
  qv = _round(hsv[..., 2] * (nv - 1), cfg.bin_rounding).astype(np.int64)
  bins = qx + nx * qy + nx * ny * qv
  if np.issubdtype(video.dtype, np.uint8) and check_exact_bins_supported(eps, cfg.hist_bins):
    # uint8 frames: rounding ties decided exactly instead of by float64's rounding error.
    bins = exact_colour_bins(video, cfg)
  nbins = nx * ny * nv
  h_fg = np.bincount(bins[init_fg], minlength=nbins).astype(dtype)
  h_bg = np.bincount(bins[~init_fg], minlength=nbins).astype(dtype)
  if cfg.bg_laplace:
    h_bg += 1
  # MATLAB divides by the sum unguarded; an empty foreground would give NaN. Keep 0 instead.
  h_fg /= max(h_fg.sum(), 1)
  h_bg /= max(h_bg.sum(), 1)

  # 7. p(fg | colour) per pixel (every valid pixel's own bin is non-empty: no 0/0).
  colour_prob = h_fg[bins] / (h_fg[bins] + h_bg[bins])

  # 8. Hysteresis gate on the centre-weighted map; mask = ni(S .* A) per frame.
  gate = np.zeros((t, h, w), bool)
  soft = np.zeros((t, h, w), dtype)
  for i in range(t):
    gate[i] = hysthresh(ni(colour_prob[i] * g_centre, eps), cfg.hyst_high, cfg.hyst_low,
                        cfg.connectivity)
    soft[i] = ni(colour_prob[i] * gate[i], eps)
  return {"soft_mask": soft, "recon_error": err, "initial_fg": init_fg,
          "colour_prob": colour_prob, "gate": gate}
