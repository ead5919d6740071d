"""The UTS weight reader on damaged copies of a small torchvision-layout .npz: only UserError."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.data import fuzzing
from tests.uts.test_weights import vgg16_shapes
from vtd.uts import models
from vtd.uts import weights


def test_damaged_weight_files_raise_only_user_errors(tmp_path):
  rng = np.random.default_rng(0)
  # vgg16 blocks 1-4 (what the student loads) at width 1: ~50 kB, so damage often hits the zip
  # and .npy headers, not only the data.
  shapes = {k: v for k, v in vgg16_shapes(1).items()
            if k.startswith("features.") and int(k.split(".")[1]) < 23}
  path = str(tmp_path / "vgg16.npz")
  np.savez(path, **{k: rng.normal(size=v).astype(np.float32) for k, v in shapes.items()})
  student = models.Student(models.VGG16Student(width=1, head_width=4, out_dim=4))
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  template = jax.eval_shape(lambda x: student.init(jax.random.key(0), x, train=False), x)
  read = lambda p: weights.load_vgg16_npz(p, template, scope=("backbone",))
  counts = fuzzing.check_reader(read, path, 300, seed=20)
  assert counts["UserError"] > 200, counts
  # One damage the random ones rarely hit (4 in 2,400): an unknown zip compression method,
  # on which zipfile raises NotImplementedError.
  data = bytearray(open(path, "rb").read())
  central = data.index(b"PK\x01\x02")  # The first central directory entry: method at +10.
  data[central + 10:central + 12] = (99).to_bytes(2, "little")
  open(path, "wb").write(bytes(data))
  with np.testing.assert_raises_regex(weights.UserError, r"vgg16\.npz: not a readable \.npz "
                                      r"of arrays \(NotImplementedError: "):
    read(path)
