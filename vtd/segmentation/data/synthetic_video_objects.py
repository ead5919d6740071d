r"""Object classes of the embedded segmentation videos: what a student can learn from one frame.

The teacher (VideoPCA) finds objects by motion and by a colour model pooled over one video; a
student sees one frame and must learn what objects *look like*. So every video shows objects of
one of `NUM_CLASSES` classes, and a class fixes what an appearance prior can latch on to, while
videos of a class still differ (so the prior must generalise):

* **shape family** -- ellipse, rounded polygon (3-6 sides) or blob (circle + harmonics 2-5); the
  class fixes the kind, the number of sides / the harmonic amplitudes and the mean aspect ratio;
  a video jitters the amplitudes (x U(0.7, 1.3)), the aspect (x e^U(-0.15, 0.15)) and the phase;
* **appearance** -- a hue (the classes spread over the colour wheel), saturation and value
  ranges, and a texture style (mottling, spots or stripes with a class period); a video jitters
  the hue by N(0, 0.03) and draws saturation, value and the second texture colour;
* **size** -- the class's median box area (fraction of the frame) from YouTube-Objects
  (`YTO_CLASS_MEDIAN_BOX_AREA`), spread like the YouTube-Objects box areas
  (`YTO_BOX_AREA_QUANTILES`).

Sources of the statistics [measured: `yto_stats`]: the 6,087 annotated frames (6,326 boxes) of
YouTube-Objects v2.3 (Kalogeiton et al., TPAMI 2016) shown in the dataset's public viewer
(github.com/vkalogeiton/yto-dataset, docs/img/gt-images, ground-truth boxes drawn in pure
green; commit 89a41dd), boxes found as green outlines (docs/segmentation.md gives the script):
* boxes per frame: 1 in 96.9 %, 2 in 2.5 %, 3 in 0.4 %;
* box area / frame area: mean 0.281; quantiles p10 0.032, p25 0.082, p50 0.219, p75 0.404,
  p90 0.658;
* distance of the box centre from the frame centre (in frame widths / heights, Euclidean):
  p25 0.071, p50 0.127, p75 0.204, p90 0.304;
* median box area per class: aeroplane 0.228, bird 0.233, boat 0.227, car 0.220, cat 0.342,
  cow 0.238, dog 0.163, horse 0.215, motorbike 0.091, train 0.364.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from vtd.data.rendering import fractal_noise, hsv_to_rgb, sample_bilinear, sigmoid, smooth_noise

# [measured: yto_stats] (module docstring).
YTO_BOX_AREA_QUANTILES = ((0.10, 0.032), (0.25, 0.082), (0.50, 0.219), (0.75, 0.404),
                          (0.90, 0.658))
YTO_CLASS_MEDIAN_BOX_AREA = (("aeroplane", 0.228), ("bird", 0.233), ("boat", 0.227),
                             ("car", 0.220), ("cat", 0.342), ("cow", 0.238), ("dog", 0.163),
                             ("horse", 0.215), ("motorbike", 0.091), ("train", 0.364))
YTO_SINGLE_OBJECT_FRACTION = 0.969
YTO_CENTRE_OFFSET_MEDIAN = 0.127
NUM_CLASSES = len(YTO_CLASS_MEDIAN_BOX_AREA)
_SHAPE_KINDS = ("ellipse", "polygon", "blob")
_TEXTURES = ("mottled", "spots", "stripes")
_TEXTURE_SIZE = 48  # Texture patch side (px), over object coordinates [-1.5, 1.5]^2.


@dataclasses.dataclass(frozen=True)
class ObjectClass:
  """What the objects of one class share (module docstring).

  Attributes:
    name: the YouTube-Objects class whose size statistics it takes (names only label the
      classes; the rendered objects are abstract shapes).
    median_box_area: median tight-box area as a fraction of the frame area.
    hue: main hue in turns [0, 1).
    saturation, value: (lo, hi) ranges of the main colour.
    shape: one of "ellipse", "polygon", "blob".
    sides: polygon sides (3-6; unused otherwise).
    rounding: polygon rounding in [0.2, 0.6] (blend with a circle).
    harmonics: blob amplitudes of harmonics 2..5.
    aspect: mean aspect ratio (width / height in object coordinates).
    texture: one of "mottled", "spots", "stripes".
    texture_period: stripe period / spot cell size in texture pixels.
    texture_strength: weight of the second colour in the texture.
  """
  name: str
  median_box_area: float
  hue: float
  saturation: tuple[float, float]
  value: tuple[float, float]
  shape: str
  sides: int
  rounding: float
  harmonics: tuple[float, ...]
  aspect: float
  texture: str
  texture_period: float
  texture_strength: float


def make_classes(seed: int) -> tuple[ObjectClass, ...]:
  """The `NUM_CLASSES` classes of a dataset seed (deterministic; own random stream)."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, 7, 7]))
  hues = (np.arange(NUM_CLASSES) + rng.uniform(-0.2, 0.2, NUM_CLASSES)) / NUM_CLASSES
  order = rng.permutation(NUM_CLASSES)  # Hue order independent of the size order.
  shapes = np.resize(np.arange(len(_SHAPE_KINDS)), NUM_CLASSES)[rng.permutation(NUM_CLASSES)]
  textures = np.resize(np.arange(len(_TEXTURES)), NUM_CLASSES)[rng.permutation(NUM_CLASSES)]
  classes = []
  for k, (name, area) in enumerate(YTO_CLASS_MEDIAN_BOX_AREA):
    s_lo = rng.uniform(0.45, 0.75)
    v_lo = rng.uniform(0.4, 0.7)
    classes.append(ObjectClass(
        name=name, median_box_area=area, hue=float(hues[order[k]] % 1.0),
        saturation=(s_lo, min(1.0, s_lo + 0.25)), value=(v_lo, min(1.0, v_lo + 0.3)),
        shape=_SHAPE_KINDS[shapes[k]], sides=int(rng.integers(3, 7)),
        rounding=float(rng.uniform(0.2, 0.6)),
        harmonics=tuple(float(rng.uniform(0.15, 0.6) / j) for j in range(2, 6)),
        aspect=float(np.exp(rng.uniform(-0.35, 0.35))), texture=_TEXTURES[textures[k]],
        texture_period=float(rng.uniform(5, 12)), texture_strength=float(rng.uniform(0.3, 0.7))))
  return tuple(classes)


def sample_box_area(rng: np.random.Generator, cls: ObjectClass) -> float:
  """A box area (fraction of the frame) for an object of `cls`.

  The inverse CDF is piecewise linear in log-area through the YouTube-Objects quantiles,
  extended linearly beyond p10 / p90, rescaled so its median is the class's median, and clipped
  to [0.01, 0.7].
  """
  p = np.array([q for q, _ in YTO_BOX_AREA_QUANTILES])
  log_a = np.log([a for _, a in YTO_BOX_AREA_QUANTILES])
  u = rng.uniform()
  if u < p[0]:
    value = log_a[0] + (u - p[0]) * (log_a[1] - log_a[0]) / (p[1] - p[0])
  elif u > p[-1]:
    value = log_a[-1] + (u - p[-1]) * (log_a[-1] - log_a[-2]) / (p[-1] - p[-2])
  else:
    value = np.interp(u, p, log_a)
  scaled = np.exp(value) * cls.median_box_area / dict(YTO_BOX_AREA_QUANTILES)[0.50]
  return float(np.clip(scaled, 0.01, 0.7))


def _shape_fn(rng: np.random.Generator, cls: ObjectClass) -> Callable[[np.ndarray], np.ndarray]:
  """r(phi) of one object of `cls` (about 1; the class's family with per-object jitter)."""
  phase = rng.uniform(0, 2 * np.pi)
  if cls.shape == "ellipse":
    return lambda phi: np.ones_like(phi)
  if cls.shape == "polygon":
    sector, rounding = 2 * np.pi / cls.sides, cls.rounding
    return lambda phi: rounding + (1 - rounding) * 1.1 * np.cos(sector / 2) / np.cos(
        np.mod(phi - phase, sector) - sector / 2)
  amps = [a * rng.uniform(0.7, 1.3) for a in cls.harmonics]
  phases = rng.uniform(0, 2 * np.pi, len(amps))
  return lambda phi: 1 + sum(a * np.cos(j * phi + p) for j, (a, p) in
                             enumerate(zip(amps, phases), start=2))


def _texture(rng: np.random.Generator, cls: ObjectClass, main: np.ndarray) -> np.ndarray:
  """[48, 48, 3] float32 texture of one object of `cls` over object coordinates."""
  size = _TEXTURE_SIZE
  second = np.clip(main * rng.uniform(0.5, 1.4) + rng.normal(0, 0.12, 3), 0, 1)
  if cls.texture == "mottled":
    t = sigmoid(2 * fractal_noise(rng, size, size, (12, 6)))
  elif cls.texture == "spots":
    t = sigmoid(6 * (smooth_noise(rng, size, size, max(2, int(cls.texture_period / 2))) - 0.5))
  else:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle))
                           / cls.texture_period)
  t = (cls.texture_strength * t)[..., None]
  return ((1 - t) * main + t * second).astype(np.float32)


def main_colour(rng: np.random.Generator, cls: ObjectClass) -> np.ndarray:
  """[3] RGB main colour of one object of `cls` (hue jitter N(0, 0.03))."""
  return hsv_to_rgb(cls.hue + rng.normal(0, 0.03), rng.uniform(*cls.saturation),
                    rng.uniform(*cls.value))


def render(rng: np.random.Generator, cls: ObjectClass, centres: np.ndarray, radius: float,
           main: np.ndarray, yy: np.ndarray, xx: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Renders one object of `cls` over T frames (textured, turning, pulsing, shaded).

  Args:
    rng: the object's random stream.
    cls: its class.
    centres: [T, 2] (y, x) centre per frame, px.
    radius: mean radius, px.
    main: [3] RGB main colour in [0, 1] (after any camouflage blend).
    yy, xx: [H, W] pixel coordinates.

  Returns:
    colour [T, H, W, 3] float32 (unclipped), alpha [T, H, W] float32 in [0, 1] (anti-aliased
    over 1 px) and inside [T, H, W] bool (the object's ground-truth pixels).
  """
  t = centres.shape[0]
  shape = _shape_fn(rng, cls)
  aspect = cls.aspect * float(np.exp(rng.uniform(-0.15, 0.15)))
  theta = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.03, 0.03) * np.arange(t)
  scale = 1 + rng.uniform(0, 0.1) * np.sin(
      2 * np.pi * rng.uniform(0.3, 1.5) * np.arange(t) / t + rng.uniform(0, 2 * np.pi))
  per_frame = lambda a: np.asarray(a, np.float32)[:, None, None]
  dy = yy[None] - per_frame(centres[:, 0])
  dx = xx[None] - per_frame(centres[:, 1])
  cos, sin = per_frame(np.cos(theta)), per_frame(np.sin(theta))
  size = per_frame(radius * scale)
  u = (dx * cos + dy * sin) / (size * aspect)
  v = (-dx * sin + dy * cos) / (size / aspect)
  edge_px = (shape(np.arctan2(v, u)) - np.hypot(u, v)) * size * min(aspect, 1 / aspect)
  alpha = np.clip(edge_px + 0.5, 0, 1).astype(np.float32)
  texture = _texture(rng, cls, main)
  scale_px = (_TEXTURE_SIZE - 1) / 3
  colour = sample_bilinear(texture, (v + 1.5) * scale_px, (u + 1.5) * scale_px)
  light, strength = rng.uniform([0, 0.05], [2 * np.pi, 0.25]).tolist()
  shading = 1 + strength * np.clip(u * np.cos(light) + v * np.sin(light), -1, 1)
  return colour * shading[..., None], alpha, edge_px > 0
