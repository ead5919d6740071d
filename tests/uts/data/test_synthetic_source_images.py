"""The generated source-domain image set (vtd/uts/data/synthetic_source_images.py)."""

import dataclasses

import numpy as np
import pytest

from vtd.uts.data import synthetic_source_images as si
from vtd.errors import UserError

SPEC = si.SourceImagesSpec(num_object_classes=6, num_texture_classes=3, train_per_class=12,
                           val_per_class=4, size=32)


@pytest.fixture(scope="module")
def data():
  return si.generate(SPEC)


def test_shapes_labels_and_determinism(data):
  n = SPEC.num_classes
  assert data.train_images.shape == (n * 12, 32, 32, 3) and data.train_images.dtype == np.uint8
  assert data.val_images.shape == (n * 4, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(data.train_labels), np.full(n, 12))
  np.testing.assert_array_equal(np.bincount(data.val_labels), np.full(n, 4))
  again = si.generate(SPEC)
  assert again.train_images.tobytes() == data.train_images.tobytes()
  other = si.generate(dataclasses.replace(SPEC, seed=1))
  assert other.train_images.tobytes() != data.train_images.tobytes()
  # Images do not depend on the split sizes (one stream per image).
  more = si.generate(dataclasses.replace(SPEC, train_per_class=13))
  np.testing.assert_array_equal(more.train_images[:12], data.train_images[:12])
  assert all(img.std() > 3 for img in data.train_images)  # No blank images.


def _features(images):
  """Colour histogram (4 x 4 x 4 bins) + mean gradient energy: a crude fixed feature."""
  q = (images // 64).reshape(len(images), -1, 3)
  codes = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
  hist = np.stack([np.bincount(c, minlength=64) for c in codes]).astype(np.float64)
  return hist / hist.sum(1, keepdims=True)


def test_classes_are_learnable_and_instances_vary(data):
  """A nearest-class-mean classifier on colour histograms is far above chance (the classes are
  consistent), yet instances of a class are not copies (pose, background, clutter vary)."""
  train, val = _features(data.train_images), _features(data.val_images)
  means = np.stack([train[data.train_labels == c].mean(0) for c in range(SPEC.num_classes)])
  pred = np.argmin(((val[:, None] - means[None]) ** 2).sum(-1), axis=1)
  accuracy = np.mean(pred == data.val_labels)
  assert accuracy > 3 / SPEC.num_classes, accuracy
  first = data.train_images[data.train_labels == 0].astype(np.float32)
  assert np.abs(first[1:] - first[:1]).mean() > 10


def test_cache_round_trip_and_stale_key(data, tmp_path, monkeypatch):
  first = si.load_or_generate(SPEC, str(tmp_path))
  assert first.train_images.tobytes() == data.train_images.tobytes()
  monkeypatch.setattr(si, "generate", lambda spec: pytest.fail("regenerated"))
  cached = si.load_or_generate(SPEC, str(tmp_path))
  np.testing.assert_array_equal(cached.val_labels, data.val_labels)
  path = next(tmp_path.iterdir())
  with pytest.raises(UserError, match="another spec"):
    si.load_npz(str(path), dataclasses.replace(SPEC, seed=3))
  with pytest.raises(UserError, match="invalid SourceImagesSpec"):
    si.SourceImagesSpec(num_object_classes=1, num_texture_classes=0).validate()
