"""On-device augmentation: exact identities, flips, determinism per key, value range."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vtd.data import augment

_OFF = augment.AugmentConfig(crop_area=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_deg=0.0,
                             flip=0.0, brightness=0.0, contrast=0.0, saturation=0.0)


def _images(b=3, h=9, w=12):
  return jnp.asarray(np.random.default_rng(0).uniform(size=(b, h, w, 3)), jnp.float32)


def test_disabled_augmentation_is_identity():
  x = _images()
  np.testing.assert_allclose(augment.augment(jax.random.key(1), x, _OFF), x, atol=1e-6)


def test_flip_mirrors_columns():
  x = _images()
  cfg = augment.AugmentConfig(**{**_OFF.__dict__, "flip": 1.0})
  np.testing.assert_allclose(augment.augment(jax.random.key(2), x, cfg), x[:, :, ::-1],
                             atol=1e-5)


def test_crop_is_a_zoom_into_the_image():
  # Area 1/4 with ratio 1: each output pixel steps half an input pixel.
  cfg = augment.AugmentConfig(**{**_OFF.__dict__, "crop_area": (0.25, 0.25)})
  mats = augment.affine_matrices(jax.random.key(3), 2, 8, 8, cfg)
  np.testing.assert_allclose(mats[:, :, :2], np.broadcast_to(0.5 * np.eye(2), (2, 2, 2)),
                             atol=1e-6)
  # The crop lies inside the image: corners map into [-0.5, 7.5].
  corners = np.array([[0, 0, 1], [0, 7, 1], [7, 0, 1], [7, 7, 1]], np.float32).T
  mapped = np.einsum("bij,jk->bik", np.asarray(mats), corners)
  assert mapped.min() >= -0.5 - 1e-5 and mapped.max() <= 7.5 + 1e-5


def test_same_key_same_output_and_range():
  x = _images()
  cfg = augment.AugmentConfig()
  f = jax.jit(lambda k, x: augment.augment(k, x, cfg))
  a, b = f(jax.random.key(4), x), f(jax.random.key(4), x)
  c = f(jax.random.key(5), x)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1


def test_colour_jitter_keeps_grey_images_grey():
  x = jnp.broadcast_to(jnp.linspace(0, 1, 12)[None, None, :, None], (2, 4, 12, 3))
  out = augment.colour_jitter(jax.random.key(6), x, augment.AugmentConfig())
  np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
  np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-6)


def test_from_config_validates():
  cfg = ml_collections.ConfigDict(dict(crop_area=(0.5, 1.0), rotation_deg=5.0))
  assert augment.AugmentConfig.from_config(cfg).rotation_deg == 5.0
  with pytest.raises(ValueError, match="crop_area"):
    augment.AugmentConfig.from_config(ml_collections.ConfigDict(dict(crop_area=(0.0, 1.0))))
