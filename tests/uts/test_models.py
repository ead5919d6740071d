"""UTS networks, pooling and the PCA-whitening FC (vtd/uts/models.py).

Shapes and parameter counts come from `jax.eval_shape` (nothing is initialised or compiled);
the few numerical checks use tiny widths with random variables filled in NumPy, since XLA
compile time, not FLOPs, is what these tests spend on CPU (a jitted ResNet init compiles for
seconds).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtd.errors import UserError
from vtd.uts import models


def _abstract(module, shape, **kwargs):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **kwargs), x)


def _random_variables(module, shape, seed=0, **kwargs):
  """He-normal kernels, init-like everything else; the teacher's PCA stays NaN (unfitted)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if path[0].key == "pca":
      return jnp.full(leaf.shape, jnp.nan, leaf.dtype)
    if name == "kernel":
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) * std, leaf.dtype)
    return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, _abstract(module, shape, **kwargs))


def _num_params(tree):
  return sum(int(np.prod(l.shape)) for l in jax.tree.leaves(tree))


def _images(b, h, w, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, h, w, 3)), jnp.float32)


# ------------------------------------------------------------------------------ parameter counts
def _conv(k, cin, cout, bias=False):
  return k * k * cin * cout + (cout if bias else 0)


def _resnet50_count(w, stages=(3, 4, 6, 3)):
  n, cin = _conv(7, 3, w) + 2 * w, w  # Stem conv + BN.
  for i, blocks in enumerate(stages):
    p = w * 2 ** i
    for j in range(blocks):
      n += _conv(1, cin, p) + _conv(3, p, p) + _conv(1, p, 4 * p) + 2 * (p + p + 4 * p)
      if j == 0:
        n += _conv(1, cin, 4 * p) + 2 * 4 * p
      cin = 4 * p
  return n


VGG_BLOCKS_1_4 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)  # features[:23]


def _vgg_blocks_count(scale=1):
  n, cin = 0, 3
  for c in VGG_BLOCKS_1_4:
    if c != "M":
      n, cin = n + _conv(3, cin, c // scale, bias=True), c // scale
  return n


def test_resnet50_param_count_at_reference_width():
  v = _abstract(models.ResNet50(), (1, 32, 32, 3), train=False)
  n = _num_params(v["params"])
  assert n == _resnet50_count(64) == 23_508_032
  assert n + 2048 * 1000 + 1000 == 25_557_032  # torchvision resnet50, fc included.
  # BN running mean + var (batch_stats) match BN scale + bias (the only 1-d params).
  assert _num_params(v["batch_stats"]) == sum(
      l.shape[0] for l in jax.tree.leaves(v["params"]) if l.ndim == 1)
  assert _num_params(_abstract(models.ResNet50(width=8), (1, 32, 32, 3), train=False)["params"]
                     ) == _resnet50_count(8)


def test_vgg16_student_param_count():
  params = _abstract(models.VGG16Student(), (1, 32, 32, 3), train=False)["params"]
  blocks = _num_params({k: v for k, v in params.items() if k.startswith("features_")})
  assert blocks == _vgg_blocks_count() == 7_635_264  # torchvision vgg16 features[:23].
  head = 3 * (_conv(3, 512, 512) + 2 * 512)  # Three bias-free convs + BN scale / bias.
  assert _num_params(params) == blocks + head == 14_716_224
  small = models.VGG16Student(width=8, head_width=16, out_dim=32, head_kernel=1)
  params = _abstract(small, (1, 32, 32, 3), train=False)["params"]
  head = _conv(1, 64, 16) + _conv(1, 16, 16) + _conv(1, 16, 32) + 2 * (16 + 16 + 32)
  assert _num_params(params) == _vgg_blocks_count(scale=8) + head


# ------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("hw, out_hw", [((224, 224), (7, 7)), ((225, 161), (8, 6)),
                                        ((32, 64), (1, 2))])
def test_resnet50_output_shape(hw, out_hw):
  x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
  m = models.ResNet50(width=8)
  out = jax.eval_shape(lambda x: m.init_with_output(jax.random.key(0), x, train=False)[0], x)
  assert out.shape == (2, *out_hw, 256)


@pytest.mark.parametrize("hw, keep_pool5, out_hw", [((224, 224), False, (14, 14)),
                                                    ((224, 224), True, (7, 7)),
                                                    ((100, 70), False, (6, 4))])
def test_vgg16_student_output_shape(hw, keep_pool5, out_hw):
  x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
  m = models.VGG16Student(width=4, head_width=8, out_dim=12, keep_pool5=keep_pool5)
  out = jax.eval_shape(lambda x: m.init_with_output(jax.random.key(0), x, train=False)[0], x)
  assert out.shape == (2, *out_hw, 12)
  with pytest.raises(UserError, match="odd"):
    _abstract(models.VGG16Student(width=4, head_kernel=2), (1, 32, 32, 3), train=False)


# -------------------------------------------------------------------------------------- R-MAC
def _reference_regions(H, W, L):
  """Literal transcription of reference §A.3, rule by rule (vectorised, duplicates kept)."""
  w = min(H, W)
  steps = np.array([2, 3, 4, 5, 6, 7])
  b = (max(H, W) - w) / (steps - 1)
  idx = np.argmin(np.abs((w ** 2 - w * b) / w ** 2 - 0.4))
  Wd, Hd = (idx + 1, 0) if H < W else ((0, idx + 1) if H > W else (0, 0))
  out = []
  for l in L:
    wl = np.floor(2 * w / (l + 1))
    wl2 = np.floor(wl / 2 - 1)
    if wl == 0:
      continue
    bW = 0 if l + Wd == 1 else (W - wl) / (l + Wd - 1)
    bH = 0 if l + Hd == 1 else (H - wl) / (l + Hd - 1)
    cW = np.floor(wl2 + np.arange(l + Wd) * bW) - wl2
    cH = np.floor(wl2 + np.arange(l + Hd) * bH) - wl2
    out += [(int(y), int(y + wl), int(x), int(x + wl)) for y in cH for x in cW]
  return out


def test_rmac_regions_brute_force():
  for h in range(1, 25):
    for w in range(1, 25):
      for levels in ((1, 2, 3), (3,), (1, 4)):
        got = models.rmac_regions(h, w, levels)
        assert sorted(got) == sorted(_reference_regions(h, w, levels)), (h, w, levels)
        assert all(0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w for y0, y1, x0, x1 in got)


def test_rmac_regions_known_values():
  for s in (4, 7, 14, 30):
    assert len(models.rmac_regions(s, s)) == 1 + 4 + 9
  assert models.rmac_regions(7, 7) == [
      (0, 7, 0, 7),                                                  # l = 1: side 7
      (0, 4, 0, 4), (0, 4, 3, 7), (3, 7, 0, 4), (3, 7, 3, 7),       # l = 2: side 4, stride 3
      (0, 3, 0, 3), (0, 3, 2, 5), (0, 3, 4, 7), (2, 5, 0, 3), (2, 5, 2, 5), (2, 5, 4, 7),
      (4, 7, 0, 3), (4, 7, 2, 5), (4, 7, 4, 7)]                     # l = 3: side 3, stride 2
  # 7 x 10 (ResNet at 224 x 320): one extra region on the long side (b = 3, overlap 4/7).
  assert [r for r in models.rmac_regions(7, 10, (1,))] == [(0, 7, 0, 7), (0, 7, 3, 10)]
  assert models.rmac_regions(1, 1) == [(0, 1, 0, 1)]  # Levels 2, 3 have side 0: skipped.
  with pytest.raises(UserError, match="positive"):
    models.rmac_regions(7, 7, (0, 1))


def _l2(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_rmac_matches_numpy():
  fmap = np.random.default_rng(1).normal(size=(2, 5, 7, 6)).astype(np.float32)
  wmat = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
  bias = np.random.default_rng(3).normal(size=(4,)).astype(np.float32)
  regs = models.rmac_regions(5, 7)
  v = _l2(np.stack([fmap[:, a:b, c:d].max(axis=(1, 2)) for a, b, c, d in regs], axis=1))
  np.testing.assert_allclose(models.rmac(jnp.asarray(fmap)), _l2(v.sum(1)), rtol=1e-5, atol=1e-6)
  vw = _l2(v @ wmat + bias)
  np.testing.assert_allclose(models.rmac(jnp.asarray(fmap), region_whitening=(wmat, bias)),
                             _l2(vw.sum(1)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(models.gap(jnp.asarray(fmap)), fmap.mean(axis=(1, 2)), rtol=1e-5)
  with pytest.raises(UserError, match="pooling"):
    models.pool_features(jnp.asarray(fmap), "max")


# ---------------------------------------------------------------------------------------- PCA
def _correlated(m, d, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(m, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d) * 5


@pytest.mark.parametrize("out_dim", [16, 5])
def test_pca_whitening_zero_mean_identity_covariance(out_dim):
  f = _correlated(200, 16)
  w, b = models.fit_pca_whitening(f, out_dim)
  assert w.shape == (16, out_dim) and b.shape == (out_dim,)
  y = f @ w + b
  np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-10)
  np.testing.assert_allclose(y.T @ y / len(y), np.eye(out_dim), atol=1e-8)  # Eq. 1's 1/m.
  # Variances are in decreasing order before whitening; the sign convention is reproducible.
  proj = (f - f.mean(0)) @ (w * np.sqrt(np.var(f @ w, axis=0)))
  assert np.all(np.diff(proj.var(0)) <= 1e-9)
  w2, b2 = models.fit_pca_whitening(f[::-1], out_dim)
  np.testing.assert_allclose(w2, w, atol=1e-8)
  np.testing.assert_allclose(np.asarray(models.apply_pca_whitening(jnp.asarray(f[:3], jnp.float32),
                                                                   w, b)), y[:3], atol=1e-3)


def test_pca_eps_and_errors():
  f = _correlated(100, 8, seed=1)
  lam = np.linalg.eigvalsh(np.cov(f.T, bias=True))[::-1]
  w, b = models.fit_pca_whitening(f, 8, eps=0.5)
  y = f @ w + b
  np.testing.assert_allclose(np.diag(y.T @ y / len(y)), lam / (lam + 0.5), rtol=1e-8)
  few = f[:5]  # Rank 4 (m - 1).
  with pytest.raises(UserError, match="rank 4"):
    models.fit_pca_whitening(few, 5)
  assert models.fit_pca_whitening(few, 5, eps=1e-3)[0].shape == (8, 5)
  for args, match in [((f, 9), r"\[1, D=8\]"), ((f[:1], 1), "at least 2"),
                      ((f[0], 1), r"\[m, D\]"), ((f, 2, -1.0), "eps")]:
    with pytest.raises(UserError, match=match):
      models.fit_pca_whitening(*args)
  with pytest.raises(UserError, match="does not fit"):
    models.apply_pca_whitening(jnp.zeros((2, 7)), w, b)


# ----------------------------------------------------------------------------------- wrappers
def test_teacher_pca_end_to_end():
  teacher = models.Teacher(models.ResNet50(width=4, stage_sizes=(1, 1)), out_dim=6)
  variables = _random_variables(teacher, (1, 32, 32, 3))
  assert variables["pca"]["kernel"].shape == (32, 6)  # D = 4 x 2 x width (2 stages).
  apply = jax.jit(teacher.apply, static_argnames="whiten")
  x = _images(24, 32, 32)
  assert np.all(np.isnan(apply(variables, x[:1])))  # Unfitted: NaN, never a silent target.
  f = np.asarray(apply(variables, x, whiten=False), np.float64)
  assert f.shape == (24, 32)
  w, b = models.fit_pca_whitening(f, 6)
  variables = models.with_pca_whitening(variables, w, b)
  y = np.asarray(apply(variables, x), np.float64)
  np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-3)
  np.testing.assert_allclose(y.T @ y / len(y), np.eye(6), atol=1e-3)
  with pytest.raises(UserError, match="does not match"):
    models.with_pca_whitening(variables, w[:, :5], b[:5])


def test_student_zero_mean_train_bn_and_pool_override():
  student = models.Student(models.VGG16Student(width=4, head_width=8, out_dim=6))
  variables = _random_variables(student, (1, 32, 32, 3), train=False)

  @jax.jit
  def run(variables, x):
    s, updates = student.apply(variables, x, train=True, mutable=["batch_stats"])
    return s, updates, student.apply(variables, x, train=False, pool="rmac")

  s, updates, r = run(variables, _images(8, 32, 32))
  assert s.shape == (8, 6) and r.shape == (8, 6)
  # The last layer is Conv-BN without ReLU: in training its per-channel mean over (B, h, w) is
  # the BN bias (0 here), so the GAP features have zero batch mean and negative entries.
  np.testing.assert_allclose(np.asarray(s).mean(0), 0.0, atol=1e-5)
  assert np.any(np.asarray(s) < 0)
  np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, rtol=1e-5)
  old = variables["batch_stats"]["backbone"]["head_bn3"]["mean"]
  assert not np.allclose(updates["batch_stats"]["backbone"]["head_bn3"]["mean"], old)


def test_check_feature_dims():
  teacher = models.Teacher(models.ResNet50(width=4, stage_sizes=(1,)), out_dim=12)
  student = models.Student(models.VGG16Student(width=4, head_width=8, out_dim=12), pool="rmac")
  assert models.check_feature_dims(teacher, student) == 12
  with pytest.raises(UserError, match="needs equal dims"):
    models.check_feature_dims(teacher.clone(out_dim=8), student)
