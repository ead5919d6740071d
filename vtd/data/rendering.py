"""Image-synthesis primitives shared by the embedded (generated) video datasets.

Smooth random fields, colours, bilinear resampling, Bezier motion paths and textured,
anti-aliased random shapes: the building blocks of `synthetic_video` (foreground segmentation)
and `synthetic_fivr` (near-duplicate video retrieval). Everything is NumPy / OpenCV on the CPU,
float32 images in [0, 1] (before compositing), and deterministic in the given random generator:
each function draws from `rng` in a fixed order, so the generated datasets (and their cache
keys) depend on that order. Coordinates are in pixels, (y, x) unless stated otherwise.
"""

from __future__ import annotations

import colorsys
from typing import Callable

import cv2
import numpy as np

SHAPES = ("ellipse", "polygon", "blob")  # Kinds of `random_shape`, drawn uniformly.


# ----------------------------------------------------------------------------- fields and colours

def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
  """[h, w] float32 smooth noise with features of about `cell` px, zero mean and unit std.

  A Gaussian grid with one value per `cell` px, upsampled bicubically, at a random phase.
  """
  gh, gw = h // cell + 4, w // cell + 4
  grid = rng.standard_normal((gh, gw)).astype(np.float32)
  up = cv2.resize(grid, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)
  oy, ox = rng.integers(cell, 2 * cell, size=2)  # Random phase; skips the border artefacts.
  field = up[oy:oy + h, ox:ox + w]
  return (field - field.mean()) / (field.std() + 1e-6)


def fractal_noise(rng: np.random.Generator, h: int, w: int,
                  cells: tuple[int, ...]) -> np.ndarray:
  """[h, w] float32 sum of `smooth_noise` octaves (cell sizes `cells` px), amplitude
  proportional to the cell size (1/f), normalised to zero mean and unit std."""
  field = sum(c * smooth_noise(rng, h, w, c) for c in cells)
  return (field - field.mean()) / (field.std() + 1e-6)


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  """[3] float32 RGB in [0, 1] of hue `h` (in turns, wrapped to [0, 1)) and saturation `s` and
  value `v` (clipped to [0, 1])."""
  return np.array(colorsys.hsv_to_rgb(h % 1.0, np.clip(s, 0, 1), np.clip(v, 0, 1)), np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
  """Elementwise logistic function 1 / (1 + exp(-x)), same shape and dtype as `x`."""
  return 1.0 / (1.0 + np.exp(-x))


def sample_bilinear(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Samples `image` [h, w, C] float32 at pixel coordinates y, x [T, H, W] -> [T, H, W, C].

  Bilinear interpolation; coordinates outside the image take the nearest border pixel.
  """
  # cv2.remap per frame: ~20x faster than numpy gathers; a loop over frames, not pixels.
  y, x = y.astype(np.float32), x.astype(np.float32)
  return np.stack([cv2.remap(image, x[i], y[i], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE) for i in range(y.shape[0])])


# ----------------------------------------------------------------------------- motion

def random_bezier_path(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, length: float,
                       spread: float) -> np.ndarray:
  """[3, 2] control points (y, x) of a bent quadratic Bezier path inside the box [lo, hi].

  Args:
    rng: the random stream.
    lo, hi: [2] (y, x) corners of the allowed box, px.
    length: distance from the first to the last control point before clipping, px.
    spread: start offset from the box centre, as a fraction of the half box (0: centred).
  """
  p0 = (lo + hi) / 2 + spread * rng.uniform(-1, 1, 2) * (hi - lo) / 2
  direction = rng.normal(size=2)
  p2 = np.clip(p0 + length * direction / np.linalg.norm(direction), lo, hi)
  normal = np.array([p0[1] - p2[1], p2[0] - p0[0]])
  p1 = np.clip((p0 + p2) / 2 + rng.uniform(-0.4, 0.4) * normal, lo, hi)
  return np.stack([p0, p1, p2])


def bezier(points: np.ndarray, u: np.ndarray) -> np.ndarray:
  """[T, 2] points of the quadratic Bezier curve with control `points` [3, 2] at u [T] in [0, 1]."""
  return (1 - u[:, None]) ** 2 * points[0] + 2 * (u * (1 - u))[:, None] * points[1] + (
      u[:, None] ** 2 * points[2])


# ----------------------------------------------------------------------------- objects

def random_shape(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
  """A random shape of `SHAPES`: returns r(phi), the boundary radius at angles phi (radians,
  any shape, vectorised) in object coordinates (about 1; at most 1.8)."""
  kind = SHAPES[rng.integers(len(SHAPES))]
  if kind == "ellipse":
    return lambda phi: np.ones_like(phi)
  if kind == "polygon":
    sector = 2 * np.pi / int(rng.integers(3, 7))
    offset, rounding = rng.uniform([0, 0.2], [2 * np.pi, 0.6]).tolist()
    # Polygon of circumradius 1.1 (area near the unit circle's), rounded by a circle blend.
    return lambda phi: rounding + (1 - rounding) * 1.1 * np.cos(sector / 2) / np.cos(
        np.mod(phi - offset, sector) - sector / 2)
  harmonics = [(k, float(rng.uniform(0, 0.6) / k), float(rng.uniform(0, 2 * np.pi)))
               for k in range(2, 6)]
  return lambda phi: 1 + sum(a * np.cos(k * phi + p) for k, a, p in harmonics)


def object_texture(rng: np.random.Generator, main: np.ndarray) -> np.ndarray:
  """[48, 48, 3] float32 texture patch over object coordinates [-1.5, 1.5]^2.

  `main` [3] RGB in [0, 1] mixed with a random second colour by smooth mottling, spots or
  stripes.
  """
  size = 48
  second = np.clip(main * rng.uniform(0.5, 1.4) + rng.normal(0, 0.12, 3), 0, 1)
  style = rng.integers(3)
  if style == 0:  # Smooth mottling.
    t = sigmoid(2 * fractal_noise(rng, size, size, (12, 6)))
  elif style == 1:  # Spots.
    t = sigmoid(6 * (smooth_noise(rng, size, size, 6) - 0.5))
  else:  # Stripes, fixed to the object (they rotate with it).
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(5, 12)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
  t = (rng.uniform(0.3, 0.8) * t)[..., None]
  return ((1 - t) * main + t * second).astype(np.float32)


def render_object(rng: np.random.Generator, centres: np.ndarray, radius: float,
                  main: np.ndarray, yy: np.ndarray, xx: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Renders one random textured object (`random_shape`, `object_texture`) over T frames.

  The object turns slowly (up to 0.03 rad per frame), pulses in size (up to 10 %) and is shaded
  by a linear gradient; its texture moves with it.

  Args:
    rng: the random stream of the object (shape, texture and motion parameters).
    centres: [T, 2] (y, x) centre per frame, px.
    radius: mean radius, px.
    main: [3] RGB main colour in [0, 1].
    yy, xx: [H, W] pixel coordinates to render at (e.g. `np.mgrid` of a frame or a crop).

  Returns:
    colour [T, H, W, 3] float32 (unclipped), alpha [T, H, W] float32 in [0, 1] (anti-aliased
    over a 1 px edge) and inside [T, H, W] bool (alpha > 0.5).
  """
  # Float32 throughout (per-frame parameters are cast first): twice as fast as float64.
  t = centres.shape[0]
  shape = random_shape(rng)
  aspect = float(np.exp(rng.uniform(-0.35, 0.35)))
  theta = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.03, 0.03) * np.arange(t)
  scale = 1 + rng.uniform(0, 0.1) * np.sin(
      2 * np.pi * rng.uniform(0.3, 1.5) * np.arange(t) / t + rng.uniform(0, 2 * np.pi))
  return draw_shape(shape, aspect, theta, radius * scale, yy, xx, centres,
                    lambda: object_texture(rng, main),
                    lambda: rng.uniform([0, 0.05], [2 * np.pi, 0.25]).tolist())


def draw_shape(shape: Callable[[np.ndarray], np.ndarray], aspect: float, theta: np.ndarray,
               size: np.ndarray, yy: np.ndarray, xx: np.ndarray, centres: np.ndarray,
               texture: Callable[[], np.ndarray] | np.ndarray,
               light: Callable[[], list[float]] | tuple[float, float]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Rasterises a given shape with a given texture and pose over T frames (no randomness).

  The deterministic half of `render_object`, also used to draw many instances of one shape
  class (`vtd.uts.data.synthetic_source_images`).

  Args:
    shape: r(phi) of `random_shape`.
    aspect: width / height stretch of the object frame.
    theta: [T] rotation per frame, radians.
    size: [T] radius per frame, px.
    yy, xx: [H, W] pixel coordinates.
    centres: [T, 2] (y, x) centre per frame, px.
    texture: [48, 48, 3] patch over object coordinates [-1.5, 1.5]^2 (`object_texture`), or a
      function returning it (called after the geometry, as `render_object` draws it).
    light: (direction rad, strength) of the linear shading, or a function returning it.

  Returns:
    colour [T, H, W, 3], alpha [T, H, W], inside [T, H, W], as `render_object`.
  """
  per_frame = lambda a: np.asarray(a, np.float32)[:, None, None]
  dy = yy[None] - per_frame(centres[:, 0])
  dx = xx[None] - per_frame(centres[:, 1])
  cos, sin = per_frame(np.cos(theta)), per_frame(np.sin(theta))
  size = per_frame(size)
  u = (dx * cos + dy * sin) / (size * aspect)
  v = (-dx * sin + dy * cos) / (size / aspect)
  edge_px = (shape(np.arctan2(v, u)) - np.hypot(u, v)) * size * min(aspect, 1 / aspect)
  alpha = np.clip(edge_px + 0.5, 0, 1).astype(np.float32)
  texture = texture() if callable(texture) else texture  # Moves with the object.
  colour = sample_bilinear(texture, (v + 1.5) * 47 / 3, (u + 1.5) * 47 / 3)
  direction, strength = light() if callable(light) else light
  shading = 1 + strength * np.clip(u * np.cos(direction) + v * np.sin(direction), -1, 1)
  return colour * shading[..., None], alpha, edge_px > 0
