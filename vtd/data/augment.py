"""Jitted, per-example image augmentation on device, driven by explicit `jax.random` keys.

Used inside a training step (the key comes from the step's rng, so a resumed run replays the
same augmentations): random resized crop + rotation + horizontal flip as one affine warp with
bilinear sampling, then colour jitter. Images are float [B, H, W, 3] in [0, 1].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from jax.scipy import ndimage


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Magnitudes of the augmentations (0 or a (1, 1) range disables one).

  Attributes:
    crop_area: (min, max) fraction of the image area kept by the random crop.
    crop_ratio: (min, max) aspect ratio (width / height) of the crop.
    rotation_deg: rotations are uniform in [-rotation_deg, rotation_deg] degrees.
    flip: probability of a horizontal flip.
    brightness, contrast, saturation: jitter strengths s; factors are uniform in
      [1 - s, 1 + s] (torchvision's ColorJitter convention).
  """
  crop_area: tuple[float, float] = (0.5, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  rotation_deg: float = 10.0
  flip: float = 0.5
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> "AugmentConfig":
    d = cfg.to_dict()
    for k in ("crop_area", "crop_ratio"):
      if k in d:
        d[k] = tuple(float(v) for v in d[k])
    out = cls(**d)
    lo, hi = out.crop_area
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"crop_area must satisfy 0 < min <= max <= 1, got {out.crop_area}")
    if not 0 < out.crop_ratio[0] <= out.crop_ratio[1]:
      raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {out.crop_ratio}")
    return out


def affine_matrices(key: jax.Array, batch: int, height: int, width: int,
                    cfg: AugmentConfig) -> jax.Array:
  """[B, 2, 3] maps from output pixel (y, x, 1) to input pixel (y, x) coordinates."""
  k_area, k_ratio, k_rot, k_flip, k_pos = jax.random.split(key, 5)
  area = jax.random.uniform(k_area, (batch,), minval=cfg.crop_area[0], maxval=cfg.crop_area[1])
  log_ratio = jax.random.uniform(k_ratio, (batch,), minval=jnp.log(cfg.crop_ratio[0]),
                                 maxval=jnp.log(cfg.crop_ratio[1]))
  ratio = jnp.exp(log_ratio)
  # Crop side lengths as fractions of the image side, clipped so the crop fits.
  ch = jnp.minimum(jnp.sqrt(area / ratio), 1.0)
  cw = jnp.minimum(jnp.sqrt(area * ratio), 1.0)
  # Crop centre, uniform over the positions where it fits (fractions of the side).
  u = jax.random.uniform(k_pos, (batch, 2))
  cy = (ch / 2 + u[:, 0] * (1 - ch)) * height
  cx = (cw / 2 + u[:, 1] * (1 - cw)) * width
  angle = jnp.deg2rad(jax.random.uniform(k_rot, (batch,), minval=-cfg.rotation_deg,
                                         maxval=cfg.rotation_deg))
  flip = jnp.where(jax.random.uniform(k_flip, (batch,)) < cfg.flip, -1.0, 1.0)
  # Output pixel p (centred at the output centre) -> input: c + R(angle) diag(sy, sx F) p.
  sy, sx = ch, cw * flip
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  a = jnp.stack([jnp.stack([cos * sy, -sin * sx], -1), jnp.stack([sin * sy, cos * sx], -1)], -2)
  centre_out = jnp.array([(height - 1) / 2, (width - 1) / 2])
  offset = jnp.stack([cy - 0.5, cx - 0.5], -1) - jnp.einsum("bij,j->bi", a, centre_out)
  return jnp.concatenate([a, offset[..., None]], axis=-1)


def warp(images: jax.Array, mats: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, H, W, C]: bilinear sampling at `mats` [B, 2, 3]; edges clamp."""
  _, h, w, _ = images.shape
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=images.dtype), jnp.arange(w, dtype=images.dtype),
                        indexing="ij")
  grid = jnp.stack([yy, xx, jnp.ones_like(yy)])  # [3, H, W]

  def one(image, mat):
    coords = jnp.einsum("ij,jhw->ihw", mat, grid)
    per_channel = lambda c: ndimage.map_coordinates(c, [coords[0], coords[1]], order=1,
                                                    mode="nearest")
    return jax.vmap(per_channel, in_axes=-1, out_axes=-1)(image)

  return jax.vmap(one)(images, mats)


def colour_jitter(key: jax.Array, images: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """Brightness, contrast and saturation factors per image, in that fixed order; clipped."""
  b = images.shape[0]
  kb, kc, ks = jax.random.split(key, 3)

  def factor(k, s):
    return jax.random.uniform(k, (b, 1, 1, 1), minval=1 - s, maxval=1 + s)

  grey_w = jnp.array([0.299, 0.587, 0.114], images.dtype)
  x = images * factor(kb, cfg.brightness)
  mean_grey = jnp.mean(x @ grey_w, axis=(1, 2))[:, None, None, None]
  x = mean_grey + factor(kc, cfg.contrast) * (x - mean_grey)
  grey = (x @ grey_w)[..., None]
  x = grey + factor(ks, cfg.saturation) * (x - grey)
  return jnp.clip(x, 0.0, 1.0)


def augment(key: jax.Array, images: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """The full augmentation of float [B, H, W, 3] images in [0, 1]."""
  k_geo, k_col = jax.random.split(key)
  b, h, w, _ = images.shape
  out = warp(images, affine_matrices(k_geo, b, h, w, cfg))
  return colour_jitter(k_col, out, cfg)
