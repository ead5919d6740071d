"""World, camera and upload-edit rendering of the embedded FIVR-like collection.

The image side of `vtd.uts.data.synthetic_fivr` (whose module docstring describes the generative
model): styles, world canvases with their scenes (`World`), cameras filming a scene (`Camera`),
uploaders' channels (`make_channel`) and the uploader's edit of a video (`upload_edit`). The
planning of which videos to cut from which footage, the annotation and the files stay in
`synthetic_fivr`. Images are float32 RGB in [0, 1] until `upload_edit` returns uint8 keyframes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from vtd.data.rendering import bezier, fractal_noise, hsv_to_rgb, random_bezier_path
from vtd.data.rendering import render_object, sample_bilinear, sigmoid, smooth_noise

if TYPE_CHECKING:  # Type hints only: synthetic_fivr imports this module.
  from vtd.uts.data.synthetic_fivr import SyntheticFivrSpec

STREAMS = {"event": 0, "distractor": 1, "channel": 2, "val_event": 3, "stock": 4}  # Second key of the seed sequences.
_REGIONS = 3
_ACCENTS = 4  # Landmark and actor colours per style.


# ----------------------------------------------------------------------------- worlds

def stream(spec: SyntheticFivrSpec, *keys: int) -> np.random.Generator:
  """The independent random stream `SeedSequence([spec.seed, *keys])` (keys: STREAMS, ...)."""
  return np.random.default_rng(np.random.SeedSequence([spec.seed, *keys]))


def _cells(spec: SyntheticFivrSpec, cells: tuple[int, ...]) -> tuple[int, ...]:
  """Noise cell sizes given for 64 px frames, scaled to the frame size."""
  scale = min(spec.height, spec.width) / 64
  return tuple(max(1, int(round(c * scale))) for c in cells)


def random_style(rng: np.random.Generator) -> dict:
  """Base hue, region palettes [R, 3, 3], landmark and actor colours, texture of a world."""
  hue = float(rng.random())
  palettes = []
  for _ in range(_REGIONS):
    region_hue = hue + rng.uniform(-0.22, 0.22)
    sat, val = rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9)
    palettes.append([hsv_to_rgb(region_hue + rng.normal(0, 0.05), sat + rng.normal(0, 0.1),
                                val + rng.normal(0, 0.12)) for _ in range(3)])
  landmarks = [hsv_to_rgb(hue + 0.5 + rng.normal(0, 0.2), rng.uniform(0.4, 1.0),
                          rng.uniform(0.35, 1.0)) for _ in range(_ACCENTS)]
  actors = [hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
            for _ in range(_ACCENTS)]
  return {"hue": hue, "palettes": np.array(palettes, np.float32),
          "landmarks": np.array(landmarks, np.float32), "actors": np.array(actors, np.float32),
          "kind": int(rng.integers(3)), "angle": float(rng.uniform(0, np.pi)),
          "period": float(rng.uniform(5, 14)), "detail": float(rng.uniform(0.04, 0.15))}


def jitter_style(rng: np.random.Generator, style: dict) -> dict:
  """A hard distractor's style: the same colours and texture, slightly perturbed."""
  out = dict(style)
  for name in ("palettes", "landmarks", "actors"):
    out[name] = np.clip(style[name] * rng.normal(1, 0.05, style[name].shape), 0, 1
                        ).astype(np.float32)
  out["period"] = style["period"] * float(rng.uniform(0.85, 1.15))
  return out


def _canvas(rng: np.random.Generator, spec: SyntheticFivrSpec, style: dict, h: int, w: int,
            num_landmarks: int) -> np.ndarray:
  """[h, w, 3] float32 world canvas in [0, 1]: regions, textures, landmarks."""
  layout = np.stack([fractal_noise(rng, h, w, _cells(spec, (96, 48)))
                     for _ in range(_REGIONS)], -1)
  weights = np.exp(3.0 * layout)
  weights /= weights.sum(-1, keepdims=True)  # [h, w, R] soft region membership.
  t1 = sigmoid(2.0 * fractal_noise(rng, h, w, _cells(spec, (32, 16, 8))))[..., None]
  t2 = sigmoid(2.0 * fractal_noise(rng, h, w, _cells(spec, (12, 6))) - 1.0)[..., None]
  canvas = np.zeros((h, w, 3), np.float32)
  for r in range(_REGIONS):
    p = style["palettes"][r]
    region = (1 - t1) * p[0] + t1 * p[1]
    canvas += weights[..., r, None] * ((1 - 0.6 * t2) * region + 0.6 * t2 * p[2])
  canvas *= 1.0 + style["detail"] * fractal_noise(rng, h, w, _cells(spec, (4, 2)))[..., None]
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  scale = min(spec.height, spec.width) / 64
  if style["kind"] == 1:  # Warped stripes over the first region (e.g. fields, facades).
    phase = 2 * np.pi * (xx * np.cos(style["angle"]) + yy * np.sin(style["angle"])) / (
        style["period"] * scale)
    stripes = np.sin(phase + 1.5 * smooth_noise(rng, h, w, _cells(spec, (24,))[0]))[..., None]
    canvas *= 1 + 0.25 * weights[..., :1] * stripes
  elif style["kind"] == 2:  # Soft blobs in the style's colours (bushes, crowds, debris).
    for _ in range(int(rng.integers(10, 25))):
      cy, cx = rng.uniform(0, h), rng.uniform(0, w)
      radius = rng.uniform(3, 12) * scale
      colour = style["palettes"][rng.integers(_REGIONS), rng.integers(3)] * rng.uniform(0.6, 1.3)
      y0, y1 = int(max(0, cy - 3 * radius)), int(min(h, cy + 3 * radius + 1))
      x0, x1 = int(max(0, cx - 3 * radius)), int(min(w, cx + 3 * radius + 1))
      alpha = 0.7 * np.exp(-((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2) / (
          2 * radius ** 2))[..., None]
      canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - alpha) + alpha * colour
  for k in range(num_landmarks):  # Static distinctive objects (buildings, vehicles, signs).
    radius = rng.uniform(0.07, 0.14) * min(h, w)
    centre = np.array([rng.uniform(radius, h - radius), rng.uniform(radius, w - radius)])
    main = np.clip(style["landmarks"][k % _ACCENTS] * rng.normal(1, 0.05, 3), 0, 1)
    _paint(rng, canvas, centre, radius, main)
  return np.clip(canvas, 0, 1).astype(np.float32)


def _paint(rng: np.random.Generator, canvas: np.ndarray, centre: np.ndarray, radius: float,
           main: np.ndarray) -> None:
  """Paints a static `render_object` shape on `canvas` in place (only near the object)."""
  h, w = canvas.shape[:2]
  reach = 2.6 * radius  # Largest extent of a `random_shape` times the largest aspect ratio.
  y0, y1 = int(max(0, centre[0] - reach)), int(min(h, centre[0] + reach + 1))
  x0, x1 = int(max(0, centre[1] - reach)), int(min(w, centre[1] + reach + 1))
  if y1 <= y0 or x1 <= x0:
    return
  yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
  colour, alpha, _ = render_object(rng, np.asarray(centre, np.float64)[None], radius, main, yy,
                                   xx)
  canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - alpha[0, ..., None]) + (
      colour[0] * alpha[0, ..., None])


class World:
  """An event's (or a distractor's, or a channel's studio) world canvas and scenes."""

  def __init__(self, spec: SyntheticFivrSpec, rng: np.random.Generator, style: dict,
               num_scenes: int, num_landmarks: int, num_actors: int):
    self.spec = spec
    h, w = spec.height, spec.width
    self.ch, self.cw = int(round(spec.world_scale * h)), int(round(spec.world_scale * w))
    self.canvas = _canvas(rng, spec, style, self.ch, self.cw, num_landmarks)
    self.scenes = []
    length = spec.scene_frames
    u = np.arange(length) / (length - 1)
    size = np.array([self.ch, self.cw], np.float64)
    for s in range(num_scenes):
      for _ in range(20):  # Later scenes happen elsewhere in the world.
        centre = size * rng.uniform(0.3, 0.7, 2)
        if s == 0 or np.linalg.norm((centre - self.scenes[0]["centre"]) / size) >= 0.35:
          break
      if s == 0:
        gain, tint, haze = 1.0, np.ones(3, np.float32), 0.0
      else:  # Another time of day, weather, smoke.
        gain = float(np.exp(rng.choice([-1, 1]) * rng.uniform(0.5, 1) * spec.lighting_shift))
        tint = rng.normal(1, spec.lighting_shift / 4, 3).astype(np.float32)
        haze = float(rng.uniform(0, spec.lighting_shift))
      haze_colour = hsv_to_rgb(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.4, 0.9))
      # Props: static objects of this scene only (parked vehicles, debris, tents).
      canvas = self.canvas.copy() if spec.props_per_scene else self.canvas
      for _ in range(spec.props_per_scene):
        radius = rng.uniform(0.09, 0.16) * min(h, w)
        main = style["actors"][int(rng.integers(_ACCENTS))] * rng.normal(1, 0.1, 3)
        _paint(rng, canvas, centre + rng.uniform(-0.6, 0.6, 2) * np.array([h, w]), radius,
               np.clip(main, 0, 1))
      actors = []
      for a in range(num_actors):
        if s > 0 and rng.random() < 0.5:  # The same actor, later, elsewhere.
          look = dict(self.scenes[0]["actors"][a])
        else:
          main = style["actors"][int(rng.integers(_ACCENTS))] * rng.normal(1, 0.08, 3)
          look = {"seed": int(rng.integers(2 ** 31)),
                  "radius": float(rng.uniform(0.08, 0.15) * min(h, w)),
                  "main": np.clip(main, 0, 1).astype(np.float32)}
        lo, hi = centre - 0.6 * np.array([h, w]), centre + 0.6 * np.array([h, w])
        points = random_bezier_path(rng, lo, hi, rng.uniform(0.3, 0.9) * min(h, w), 1.0)
        actors.append({**look, "centres": bezier(points, u)})
      self.scenes.append({"centre": centre, "gain": gain, "tint": tint, "haze": haze,
                          "haze_colour": haze_colour, "canvas": canvas, "actors": actors})


class Camera:
  """A camera filming one scene of a world; renders only the time steps asked for.

  Every video cut from a camera's footage takes its frames from one rendering of the union of
  the steps asked for (`take`, then `render`), so they share pixels exactly. (An actor's
  rotation follows the rendered steps, so it differs between cameras: a different view.)
  """

  def __init__(self, world: World, rng: np.random.Generator, scene: int, static: bool = False):
    spec, sc = world.spec, world.scenes[scene]
    self.world, self.scene = world, sc
    h, w, length = spec.height, spec.width, spec.scene_frames
    u = np.arange(length) / (length - 1)
    self.zoom = float(np.exp(rng.uniform(-0.4, 0.4)))
    half = np.array([h, w]) / (2 * self.zoom)
    direction = rng.normal(size=2)
    pan = (0.0 if static else rng.uniform(0, 0.4)) * h / self.zoom * direction / np.linalg.norm(
        direction)
    wobble = (0.0 if static else 1.0) * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * u[:, None]
                                               + rng.uniform(0, 2 * np.pi, 2))
    start = sc["centre"] + rng.normal(0, spec.viewpoint_spread * h, 2)
    view = start + (u[:, None] - 0.5) * pan + wobble
    self.view = np.clip(view, half + 1, np.array([world.ch, world.cw]) - half - 2)
    self.response = rng.normal(1, 0.08, 3).astype(np.float32) * sc["gain"] * sc["tint"]
    self.gamma = float(rng.uniform(0.85, 1.15))
    self.noise = float(rng.uniform(1, 3)) / 255
    self.seed = int(rng.integers(2 ** 63))
    self.wanted: set[int] = set()
    self.rows: dict[int, int] = {}
    self.footage: np.ndarray | None = None

  def take(self, steps: np.ndarray) -> tuple[Camera, np.ndarray]:
    """Asks for time steps (rendered later); returns a (camera, steps) segment."""
    self.wanted.update(np.asarray(steps).tolist())
    return self, np.asarray(steps)

  def render(self, all_steps: bool = False) -> None:
    """Renders the steps asked for (or all) as float32 [n, H, W, 3] in [0, 1]."""
    spec = self.world.spec
    h, w = spec.height, spec.width
    steps = np.arange(spec.scene_frames) if all_steps else np.array(sorted(self.wanted), np.int64)
    self.rows = {int(t): i for i, t in enumerate(steps)}
    if not len(steps):
      return
    view = self.view[steps]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    ys = view[:, 0, None, None] + (yy - (h - 1) / 2) / self.zoom
    xs = view[:, 1, None, None] + (xx - (w - 1) / 2) / self.zoom
    frames = sample_bilinear(self.scene["canvas"], ys, xs)
    screen_centre = np.array([(h - 1) / 2, (w - 1) / 2])
    for actor in self.scene["actors"]:
      centres = (actor["centres"][steps] - view) * self.zoom + screen_centre
      radius = actor["radius"] * self.zoom
      if (np.abs(centres - screen_centre) > screen_centre + 2.6 * radius).any(axis=1).all():
        continue  # Never in view.
      colour, alpha, _ = render_object(np.random.default_rng(actor["seed"]), centres, radius,
                                       actor["main"], yy, xx)
      frames = frames * (1 - alpha[..., None]) + colour * alpha[..., None]
    frames = (1 - self.scene["haze"]) * frames + self.scene["haze"] * self.scene["haze_colour"]
    frames = np.clip(frames * self.response, 0, 1) ** self.gamma
    for i, t in enumerate(steps):  # Sensor noise, a function of the step only.
      noise = np.random.default_rng([self.seed, int(t)]).standard_normal((h, w, 3), np.float32)
      frames[i] += self.noise * noise
    self.footage = np.clip(frames, 0, 1).astype(np.float32)

  def frames(self, steps: np.ndarray) -> np.ndarray:
    return self.footage[[self.rows[int(t)] for t in steps]]


# ----------------------------------------------------------------------------- uploads

def make_channel(spec: SyntheticFivrSpec, index: int) -> dict:
  """An uploader: intro logo frame, watermark [m, m, 4] (RGB + alpha) and studio footage."""
  rng = stream(spec, STREAMS["channel"], index)
  h, w = spec.height, spec.width
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  back = hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.1, 0.9))
  logo_colour = hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0))
  colour, alpha, _ = render_object(rng, np.array([[(h - 1) / 2, (w - 1) / 2]]), 0.3 * min(h, w),
                                   logo_colour, yy, xx)
  intro = back * (1 - alpha[0, ..., None]) + colour[0] * alpha[0, ..., None]
  mark_size = max(4, min(h, w) // 5)
  mark = cv2.resize(np.concatenate([colour[0], alpha[0, ..., None]], -1), (mark_size, mark_size),
                    interpolation=cv2.INTER_AREA)
  studio = Camera(World(spec, rng, random_style(rng), 1, num_landmarks=2, num_actors=1), rng, 0,
                  static=True)
  studio.render(all_steps=True)
  return {"intro": intro.astype(np.float32), "mark": mark.astype(np.float32),
          "corner": int(rng.integers(4)), "studio": studio}


def upload_edit(rng: np.random.Generator, spec: SyntheticFivrSpec, content: np.ndarray,
                strength: float, channel: dict, intro: bool) -> np.ndarray:
  """The uploader's edit of `content` [T, H, W, 3] float32 -> uint8 keyframes.

  Edits of strength `strength` (crop, flip, letterbox, colour, blur, noise, JPEG), the
  `channel`'s watermark and, if `intro`, its intro frames (`synthetic_fivr` module docstring).
  """
  h, w = spec.height, spec.width
  v = content
  if rng.random() < 0.7 * strength:  # Crop, resized back.
    top, bottom, left, right = rng.uniform(0, 0.35 * strength, 4)
    y0, y1 = int(top * h / 2), h - int(bottom * h / 2)
    x0, x1 = int(left * w / 2), w - int(right * w / 2)
    v = np.stack([cv2.resize(f[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_LINEAR)
                  for f in v])
  if rng.random() < 0.4 * strength:  # Horizontal flip.
    v = v[:, :, ::-1]
  if rng.random() < 0.3 * strength:  # Letter- or pillar-box.
    f = rng.uniform(0.65, 0.9)
    out = np.zeros_like(v)
    if rng.random() < 0.5:
      hh = max(2, int(round(h * f)))
      out[:, (h - hh) // 2:(h - hh) // 2 + hh] = np.stack(
          [cv2.resize(x, (w, hh), interpolation=cv2.INTER_AREA) for x in v])
    else:
      ww = max(2, int(round(w * f)))
      out[:, :, (w - ww) // 2:(w - ww) // 2 + ww] = np.stack(
          [cv2.resize(x, (ww, h), interpolation=cv2.INTER_AREA) for x in v])
    v = out
  grey = v.mean(-1, keepdims=True)  # Colour: saturation, balance, contrast, brightness.
  v = grey + float(np.exp(rng.normal(0, 0.25 * strength))) * (v - grey)
  v = v * rng.normal(1, 0.06 * strength, 3).astype(np.float32)
  v = (v - 0.5) * float(np.exp(rng.normal(0, 0.15 * strength))) + 0.5 + rng.normal(
      0, 0.06 * strength)
  if rng.random() < 0.5 * strength:  # Blur.
    sigma = rng.uniform(0.4, 1.2) * min(h, w) / 64
    v = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in v])
  if rng.random() < 0.5:  # The channel's watermark in its corner.
    mark = channel["mark"]
    m = mark.shape[0]
    y0 = 1 if channel["corner"] < 2 else h - m - 1
    x0 = 1 if channel["corner"] % 2 == 0 else w - m - 1
    a = mark[..., 3:]
    v = v.copy()
    v[:, y0:y0 + m, x0:x0 + m] = v[:, y0:y0 + m, x0:x0 + m] * (1 - a) + mark[..., :3] * a
  if intro:  # The channel's intro as the first 1-2 keyframes (the content's last ones are cut).
    n = 1 + int(rng.random() < 0.3)
    v = np.concatenate([np.repeat(channel["intro"][None], n, 0), v[:len(v) - n]])
  v = v + rng.uniform(0, 4 * strength) / 255 * rng.standard_normal(v.shape, np.float32)
  v = np.clip(np.rint(v * 255), 0, 255).astype(np.uint8)
  quality = int(np.clip(90 - 60 * strength + rng.normal(0, 8), 10, 95))
  params = [int(cv2.IMWRITE_JPEG_QUALITY), quality]
  return np.stack([cv2.imdecode(cv2.imencode(".jpg", f[..., ::-1], params)[1],
                                cv2.IMREAD_COLOR)[..., ::-1] for f in v])
