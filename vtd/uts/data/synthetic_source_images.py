r"""Labelled source-domain images (an ImageNet stand-in), generated deterministically.

UTS's teacher is an ImageNet-pretrained ResNet-50 whose features suffer a *domain shift* on
the target videos (`shared/reference/retrieval_uts_qbnorm.md` §A.1, [seed uts_net.txt §2.1]:
"the distribution gap for feature representation exists between the source domain (e.g.,
pre-trained dataset) and the target domain"). vtd downloads nothing, so this module renders a
labelled image set on which `vtd/uts/pretrain.py` trains the ResNet-50 by supervised
classification, the way ImageNet pretraining does.

Classes
-------
* **Object classes** (`num_object_classes`): a class is one random shape outline
  (`rendering.random_shape`: ellipse, rounded polygon or harmonic blob), one aspect ratio, one
  main colour and one surface texture (`rendering.object_texture`: mottling, spots or
  stripes), drawn from the class's own random stream. The shapes and textures are those the
  embedded FIVR worlds use for their landmarks, props and actors, so the teacher learns
  detectors for the kind of parts the target videos are made of (as ImageNet classes cover
  the objects of news footage) but never sees those particular objects.
  An instance: the class object at a random rotation, a radius of 22-40 % of the image, its
  aspect x exp(N(0, 0.08)), centred +-15 %, colour x N(1, 0.08) per channel, a random linear
  shading; on a class-independent background (fractal noise between two random colours); with
  p 0.5 a smaller clutter object of another class (radius 10-18 %) behind it.
* **Texture classes** (`num_texture_classes`): a class is a 3-colour palette and a pattern
  (warped stripes of a given angle and period, soft blobs, or multi-scale mottling); an
  instance is a new random field of that pattern (angle +-0.2 rad, period x exp(N(0, 0.1))),
  as ImageNet's texture-like classes (grass, fabric, honeycomb).

Rendering statistics (what differs from the target videos, `synthetic_fivr`): clean sRGB with
no camera colour response or gamma, no sensor noise, no blur, no JPEG, no overlays (intros,
watermarks, banners, letterboxes), object-centred framing, neutral lighting. The target
frames have all of these, so the pretrained features are good but shifted.

Default size: 100 classes x (80 train + 10 validation) images of 64 x 64 px (9,000 images,
110 MB uint8); generated in about 30 s on a shared 2-core CPU and cached as .npz under
`cache_dir`, keyed by the spec and `VERSION`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from vtd import artifacts
from vtd.data import cache
from vtd.data.rendering import draw_shape, fractal_noise, hsv_to_rgb, object_texture
from vtd.data.rendering import random_shape, sigmoid, smooth_noise
from vtd.errors import UserError

VERSION = 1  # Bump when the generator changes: it is part of the cache key.
_STREAM_CLASS, _STREAM_IMAGE = 0, 1


@dataclasses.dataclass(frozen=True)
class SourceImagesSpec:
  """Every parameter of the generator (the cache key). Not from the paper: an ImageNet
  stand-in sized for a CPU pretraining run."""
  seed: int = 0
  num_object_classes: int = 80
  num_texture_classes: int = 20
  train_per_class: int = 80
  val_per_class: int = 10
  size: int = 64  # Image side, px.

  @property
  def num_classes(self) -> int:
    return self.num_object_classes + self.num_texture_classes

  def cache_key(self) -> str:
    payload = json.dumps({**dataclasses.asdict(self), "version": VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

  def validate(self) -> None:
    if self.num_classes < 2 or min(self.num_object_classes, self.num_texture_classes) < 0:
      raise UserError(f"invalid SourceImagesSpec: need >= 2 classes ({self})")
    if self.train_per_class < 1 or self.val_per_class < 1 or self.size < 16:
      raise UserError(f"invalid SourceImagesSpec: need >= 1 image per class and split and "
                      f"size >= 16 ({self})")


@dataclasses.dataclass
class SourceImages:
  """The image set.

  Attributes:
    spec: the generator parameters.
    train_images, val_images: uint8 [N, S, S, 3] RGB.
    train_labels, val_labels: int32 [N] class index in [0, num_classes); object classes first.
  """
  spec: SourceImagesSpec
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray


def _stream(spec: SourceImagesSpec, *keys: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([spec.seed, *keys]))


def _object_class(rng: np.random.Generator) -> dict:
  main = hsv_to_rgb(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
  return {"shape": random_shape(rng), "aspect": float(np.exp(rng.uniform(-0.35, 0.35))),
          "texture": object_texture(rng, main)}


def _texture_class(rng: np.random.Generator) -> dict:
  hue = rng.random()
  palette = np.array([hsv_to_rgb(hue + rng.normal(0, 0.12), rng.uniform(0.2, 0.9),
                                 rng.uniform(0.25, 0.95)) for _ in range(3)], np.float32)
  return {"palette": palette, "kind": int(rng.integers(3)), "angle": float(rng.uniform(0, np.pi)),
          "period": float(rng.uniform(4, 12)), "cell": float(rng.uniform(3, 10))}


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
  a = hsv_to_rgb(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9))
  b = hsv_to_rgb(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9))
  t = sigmoid(1.5 * fractal_noise(rng, s, s, (max(2, s // 2), max(2, s // 6))))[..., None]
  return ((1 - t) * a + t * b).astype(np.float32)


def _draw(rng: np.random.Generator, image: np.ndarray, cls: dict, radius: float,
          centre: np.ndarray) -> None:
  """Composites one instance of object class `cls` onto `image` [S, S, 3] in place."""
  s = image.shape[0]
  yy, xx = np.mgrid[:s, :s].astype(np.float32)
  aspect = cls["aspect"] * float(np.exp(rng.normal(0, 0.08)))
  texture = np.clip(cls["texture"] * rng.normal(1, 0.08, 3), 0, 1).astype(np.float32)
  light = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.05, 0.25)))
  colour, alpha, _ = draw_shape(cls["shape"], aspect, np.array([rng.uniform(0, 2 * np.pi)]),
                                np.array([radius]), yy, xx, centre[None], texture, light)
  image[:] = image * (1 - alpha[0, ..., None]) + colour[0] * alpha[0, ..., None]


def _object_image(rng: np.random.Generator, classes: list[dict], label: int, s: int
                  ) -> np.ndarray:
  image = _background(rng, s)
  if rng.random() < 0.5 and len(classes) > 1:  # Clutter: a smaller object of another class.
    other = int(rng.integers(len(classes) - 1))
    other += other >= label
    _draw(rng, image, classes[other], rng.uniform(0.10, 0.18) * s, rng.uniform(0.1, 0.9, 2) * s)
  _draw(rng, image, classes[label], rng.uniform(0.22, 0.40) * s,
        (0.5 + rng.uniform(-0.15, 0.15, 2)) * (s - 1))
  return image


def _texture_image(rng: np.random.Generator, cls: dict, s: int) -> np.ndarray:
  p = cls["palette"]
  t1 = sigmoid(2.0 * fractal_noise(rng, s, s, (max(2, s // 3), max(2, s // 8))))[..., None]
  image = (1 - t1) * p[0] + t1 * p[1]
  yy, xx = np.mgrid[:s, :s].astype(np.float32)
  if cls["kind"] == 0:  # Warped stripes.
    angle = cls["angle"] + rng.uniform(-0.2, 0.2)
    period = cls["period"] * float(np.exp(rng.normal(0, 0.1))) * s / 64
    phase = 2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period
    t2 = 0.5 + 0.5 * np.sin(phase + 1.2 * smooth_noise(rng, s, s, max(2, s // 3)))
  elif cls["kind"] == 1:  # Soft blobs.
    t2 = sigmoid(5.0 * (smooth_noise(rng, s, s, max(1, int(cls["cell"] * s / 64))) - 0.6))
  else:  # Multi-scale mottling.
    cell = max(1, int(cls["cell"] * s / 64))
    t2 = sigmoid(3.0 * fractal_noise(rng, s, s, (2 * cell, cell)))
  image = (1 - 0.7 * t2[..., None]) * image + 0.7 * t2[..., None] * p[2]
  return image.astype(np.float32)


def generate(spec: SourceImagesSpec = SourceImagesSpec()) -> SourceImages:
  """Renders the image set (deterministic in `spec`; module docstring)."""
  spec.validate()
  objects = [_object_class(_stream(spec, _STREAM_CLASS, c))
             for c in range(spec.num_object_classes)]
  textures = [_texture_class(_stream(spec, _STREAM_CLASS, spec.num_object_classes + c))
              for c in range(spec.num_texture_classes)]
  per_class = spec.train_per_class + spec.val_per_class
  images = np.zeros((spec.num_classes, per_class, spec.size, spec.size, 3), np.uint8)
  for c in range(spec.num_classes):
    for k in range(per_class):  # One stream per image: images do not depend on the counts.
      rng = _stream(spec, _STREAM_IMAGE, c, k)
      if c < spec.num_object_classes:
        image = _object_image(rng, objects, c, spec.size)
      else:
        image = _texture_image(rng, textures[c - spec.num_object_classes], spec.size)
      images[c, k] = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
  labels = np.broadcast_to(np.arange(spec.num_classes, dtype=np.int32)[:, None],
                           (spec.num_classes, per_class))
  n = spec.train_per_class
  flat = lambda a: a.reshape(-1, *a.shape[2:])
  return SourceImages(spec, flat(images[:, :n]), flat(labels[:, :n]).copy(),
                      flat(images[:, n:]), flat(labels[:, n:]).copy())


def save_npz(data: SourceImages, path: str) -> None:
  artifacts.save_npz_atomic(path, **{"meta/cache_key": np.asarray(data.spec.cache_key())},
                            train_images=data.train_images, train_labels=data.train_labels,
                            val_images=data.val_images, val_labels=data.val_labels)


def load_npz(path: str, spec: SourceImagesSpec) -> SourceImages:
  """Reads a file written by `save_npz` for `spec`; a stale or broken file is a UserError."""
  try:
    with np.load(path) as f:
      if str(f["meta/cache_key"]) != spec.cache_key():
        raise UserError(f"source image cache {path} was written for another spec")
      return SourceImages(spec, f["train_images"], f["train_labels"], f["val_images"],
                          f["val_labels"])
  except (OSError, ValueError, KeyError) as e:
    if isinstance(e, UserError):
      raise
    raise UserError(f"cannot read source image cache {path}: {type(e).__name__}: {e}") from None


def load_or_generate(spec: SourceImagesSpec = SourceImagesSpec(),
                     cache_dir: str | None = None) -> SourceImages:
  """The cached image set for `spec`, generated (and cached) on first use."""
  path = cache_dir and cache.cache_file(cache_dir, "source_images", spec.cache_key())
  return cache.load_or_generate(path, lambda: generate(spec), lambda p: load_npz(p, spec),
                                save_npz)
