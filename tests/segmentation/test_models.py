"""Students, EvalSeg-Net and their losses (vtd/segmentation/models.py, losses.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import segmentation as segmentation_config
from vtd.segmentation import losses
from vtd.segmentation import models

# Tiny widths and depths: XLA compile time, not FLOPs, is what these tests spend on CPU.
TINY = {
    "lowres_net": dict(features=4, bottleneck=2),
    # Width 4 barely learns: at tiny widths the sigma-0.05 trunk init shrinks the signal.
    "fconv": dict(features=8, bottleneck=4),
    "basic_unet": dict(features=(4, 8), center_features=8),
    "dilate_unet": dict(features=(4, 8), dilations=(1, 2, 4)),
    "dense_unet": dict(growth_rates=(2,), transition_features=(4,), center_growth=4,
                       center_transition=8, block_layers=3),
}
NAMES = sorted(models.STUDENTS)
HAS_BN = {"basic_unet", "dilate_unet", "dense_unet"}


def _key(seed):
  # XLA's RngBitGenerator: compiling threefry for every parameter shape dominates the run
  # time of these tiny models on CPU.
  return jax.random.key(seed, impl="rbg")


def _images(b, h, w, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(b, h, w, 3)), jnp.float32)


def _init(model, x):
  return jax.jit(lambda x: model.init(_key(1), x, train=False))(x)


def _disk(h, w, radius=0.3):
  yy, xx = np.mgrid[:h, :w]
  return (((yy + 0.5) / h - 0.5) ** 2 + ((xx + 0.5) / w - 0.5) ** 2 < radius ** 2)


def _num_params(tree):
  return sum(int(np.prod(l.shape)) for l in jax.tree.leaves(tree))


# --------------------------------------------------------------------- reference parameter counts
# conv(k, cin, cout) = k*k*cin*cout + cout (bias); BatchNorm adds scale + bias = 2 * C (its
# running mean / variance are batch_stats, not params). Layer tables: reference §2.1-2.4, §3.2.

def _conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def _cbr(k, cin, cout):  # conv(bias) -> BN -> ReLU
  return _conv(k, cin, cout) + 2 * cout


def _trunk(stream_channels, f=256, bottleneck=64):
  n = sum(_conv(3, c, f) + _conv(5, f, f) for c in stream_channels)  # streams, then concat
  n += _conv(3, f * len(stream_channels), f) + _conv(5, f, f)          # conv2
  return n + _conv(3, f, f) + _conv(5, f, f) + _conv(5, f, bottleneck)  # conv3


def _unet(center, center_out, widths=(32, 64, 128, 256, 512)):
  n, cin = 0, 3
  for f in widths:  # encoder: 2 conv-BN-ReLU per level
    n += _cbr(3, cin, f) + _cbr(3, f, f)
    cin = f
  n += center
  prev = center_out
  for f in reversed(widths):  # decoder: concat(skip f, upsampled prev), 3 conv-BN-ReLU
    n += _cbr(3, f + prev, f) + 2 * _cbr(3, f, f)
    prev = f
  return n + _conv(1, widths[0], 1)  # head conv1x1 -> 1


def _dense_level(cin, k, c, layers=4):
  n = _cbr(3, cin, k) + sum(_cbr(3, j * k, k) for j in range(1, layers))  # layer j: j*k in
  return n + _cbr(1, layers * k, c)  # transition from concat(l1..l4) = 4k channels


def _dense_unet():
  enc = [(12, 32), (24, 64), (48, 128), (64, 256)]
  n, cin = 0, 3
  for k, c in enc:
    n += _dense_level(cin, k, c)
    cin = c
  n += _dense_level(256, 128, 512)  # centre @16
  prev = 512
  for k, c in reversed(enc):
    n += _dense_level(c + prev, k, c)
    prev = c
  return n + _conv(1, 32, 1)


REFERENCE_COUNTS = {  # name -> (exact count from the table, rounded millions the reference gives)
    # 3 streams (RGB 3, grad 2, hue 1 ch) + conv2 + conv3 + FC 32*32*64 -> 1024 (bias).
    "lowres_net": (_trunk((3, 2, 1)) + _conv(1, 32 * 32 * 64, 1024), 78.1),
    # §8 #7 default: the LowRes trunk + conv1x1 64 -> 1; bilinear upsampling has no params.
    "fconv": (_trunk((3, 2, 1)) + _conv(1, 64, 1), None),
    # Centre: 2 conv-BN-ReLU of 1024 at 8x8.
    "basic_unet": (_unet(_cbr(3, 512, 1024) + _cbr(3, 1024, 1024), 1024), 34.6),
    # Centre: 6 dilated 3x3 convs 512 -> 512, no bias, no BN (14.2 M of them).
    "dilate_unet": (_unet(6 * _conv(3, 512, 512, bias=False), 512), 32.2),
    "dense_unet": (_dense_unet(), 3.2),
}


@pytest.mark.parametrize("name", NAMES)
def test_default_parameter_count_matches_reference(name):
  cls = models.STUDENTS[name]
  x = jax.ShapeDtypeStruct((1, *cls.DEFAULT_INPUT_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: cls().init(jax.random.key(0), x, train=False), x)
  want, millions = REFERENCE_COUNTS[name]
  assert _num_params(shapes["params"]) == want
  if millions is not None:
    assert round(want / 1e6, 1) == millions
  out = jax.eval_shape(lambda v, x: cls().apply(v, x, train=False), shapes, x)
  assert out.shape == (1, *cls.output_size(cls.DEFAULT_INPUT_SIZE), 1)
  if name == "lowres_net":
    assert out.shape == (1, 32, 32, 1)


def test_default_dilated_centre_size():
  x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  params = jax.eval_shape(lambda x: models.DilateUNet().init(jax.random.key(0), x, train=False),
                          x)["params"]
  centre = {k: v for k, v in params.items() if k.startswith("dilated")}
  assert len(centre) == 6 and _num_params(centre) == 6 * 9 * 512 * 512  # 14.2 M frozen


def test_evalseg_default_parameter_count():
  img = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)
  mask = jax.ShapeDtypeStruct((1, 128, 128, 1), jnp.float32)
  shapes = jax.eval_shape(
      lambda i, m: models.EvalSegNet().init(jax.random.key(0), i, m, train=False), img, mask)
  # Streams RGB 3 / mask 1 / HSV 3 ch, conv2, conv3, FC 65 536 -> 512, FC 512 -> 1.
  want = _trunk((3, 1, 3)) + _conv(1, 32 * 32 * 64, 512) + _conv(1, 512, 1)
  assert _num_params(shapes["params"]) == want == 44_535_105


# ------------------------------------------------------------------------------ tiny students

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(16, 16), (12, 20), (10, 14)])
def test_output_shapes(name, hw):
  model = models.build_student(name, **TINY[name])
  x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
  out = jax.eval_shape(lambda x: model.init_with_output(_key(0), x, train=False)[0], x)
  assert out.shape == (2, *models.STUDENTS[name].output_size(hw), 1)


def test_output_sizes():
  assert models.LowResNet.output_size((128, 128)) == (32, 32)
  assert models.LowResNet.output_size((130, 126)) == (33, 32)  # SAME pooling rounds up
  for name in ("fconv", "basic_unet", "dilate_unet", "dense_unet"):
    assert models.STUDENTS[name].output_size((256, 200)) == (256, 200)


def test_unet_grad_hue_inputs():
  model = models.BasicUNet(features=(4, 8), center_features=8, use_grad_hue=True)
  x = jax.ShapeDtypeStruct((1, 10, 14, 3), jnp.float32)
  out, variables = jax.eval_shape(lambda x: model.init_with_output(_key(0), x, train=False), x)
  assert variables["params"]["Conv_0"]["kernel"].shape == (3, 3, 6, 4)  # RGB + grad 2 + hue 1
  assert out.shape == (1, 10, 14, 1)


def test_unknown_student_and_head():
  with pytest.raises(ValueError, match="valid names.*basic_unet"):
    models.build_student("resnet")
  assert isinstance(models.build_student("fconv", features=4), models.FConv)
  model = models.build_student("fconv", head="softmax", **TINY["fconv"])
  with pytest.raises(ValueError, match="head"):
    jax.eval_shape(lambda x: model.init(_key(0), x, train=False), jnp.zeros((1, 8, 8, 3)))


@pytest.fixture(scope="module", params=NAMES)
def run(request):
  """One short Adam run per tiny student, shared by the tests below (XLA compiles dominate)."""
  name = request.param
  model = models.build_student(name, **TINY[name])
  sigmoid_model = models.build_student(name, head="sigmoid", **TINY[name])
  x = _images(4, 16, 16, seed=3)
  x_other = x.at[1:].set(_images(3, 16, 16, seed=4))  # same first image, other batch-mates
  out_hw = models.STUDENTS[name].output_size((16, 16))
  target = jnp.asarray(np.broadcast_to(_disk(*out_hw)[None, ..., None], (4, *out_hw, 1)),
                       jnp.float32)
  variables = _init(model, x)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, state, opt_state, x):
    def loss_fn(p):  # train=True: BatchNorm uses batch statistics and updates batch_stats
      out, new_state = model.apply({"params": p, **state}, x, train=True, mutable=list(state))
      return losses.mask_loss(out, target), (new_state, out)
    (loss, (new_state, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss, grads, out

  @jax.jit
  def evaluate(variables, x):
    return model.apply(variables, x, train=False), sigmoid_model.apply(variables, x, train=False)

  r = dict(name=name, variables=variables)
  r["eval_out"], r["sigmoid_out"] = evaluate(variables, x)
  r["eval_other"], _ = evaluate(variables, x_other)
  r["train_other"] = step(params, state, opt_state, x_other)[-1]
  history = []
  for i in range(25):
    params, state, opt_state, loss, grads, out = step(params, state, opt_state, x)
    if i == 0:
      r["grads"], r["train_out"] = grads, out
    history.append(float(loss))
  r.update(history=history, params=params, state=state, out_hw=out_hw)
  return r


def test_output_range(run):
  out, p = run["eval_out"], run["sigmoid_out"]
  assert out.shape == p.shape == (4, *run["out_hw"], 1)
  assert bool(jnp.all(out >= 0)) and bool(jnp.all(jnp.isfinite(out)))  # ReLU head
  assert bool(jnp.all((p >= 0) & (p <= 1)))                            # sigmoid head


def test_gradients_reach_every_parameter(run):
  grads = run["grads"]
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    key = jax.tree_util.keystr(path)
    size = float(jnp.max(jnp.abs(g)))
    assert bool(jnp.all(jnp.isfinite(g))), key
    if run["name"] == "dilate_unet" and key.startswith("['dilated"):
      assert size == 0, key  # frozen centre (public code's trainable=False)
    elif run["name"] in HAS_BN and key.startswith("['Conv_") and key.endswith("['bias']"):
      # Faithful conv bias right before BatchNorm: in train mode the batch mean cancels it,
      # so its gradient is 0 in exact arithmetic (rounding noise only).
      assert size < 1e-4 * scale, key
    else:
      assert size > 0, f"zero gradient for {key}"


def test_dilated_centre_trainable_knob():
  model = models.DilateUNet(features=(4,), dilations=(1, 2), trainable_center=True)
  x = _images(2, 8, 8)
  variables = _init(model, x)
  grads = jax.jit(jax.grad(lambda p: losses.mask_loss(
      model.apply({**variables, "params": p}, x, train=False), jnp.ones((2, 8, 8, 1)))))(
          variables["params"])
  assert all(float(jnp.max(jnp.abs(grads[f"dilated{i}"]["kernel"]))) > 0 for i in range(2))


def test_training_reduces_loss(run):
  history = run["history"]
  assert history[-1] < 0.7 * history[0], history
  initial = run["variables"]
  if run["name"] in HAS_BN:  # running statistics moved in train mode
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                         initial["batch_stats"], run["state"]["batch_stats"])
    assert all(d > 0 for d in jax.tree.leaves(moved))
  else:
    assert not run["state"]
  if run["name"] == "dilate_unet":  # Adam never moves the frozen centre (zero gradients)
    for key in run["params"]:
      if key.startswith("dilated"):
        np.testing.assert_array_equal(run["params"][key]["kernel"],
                                      initial["params"][key]["kernel"])


def test_train_vs_eval_mode(run):
  """BN students: batch stats in train mode, running stats in eval. No dropout anywhere."""
  np.testing.assert_allclose(run["eval_out"][0], run["eval_other"][0], rtol=1e-5, atol=1e-5)
  if run["name"] in HAS_BN:
    assert not np.allclose(run["train_out"][0], run["train_other"][0], atol=1e-4)
    assert not np.allclose(run["train_out"], run["eval_out"], atol=1e-4)
  else:
    assert "batch_stats" not in run["variables"]
    np.testing.assert_allclose(run["train_out"], run["eval_out"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run["train_out"][0], run["train_other"][0], rtol=1e-5, atol=1e-6)


def test_lowres_input_streams():
  x = _images(2, 6, 5)
  rgb, grad, hue = models.lowres_streams(x)
  gray = np.asarray(x) @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  np.testing.assert_allclose(grad[..., 0], np.gradient(gray, axis=1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad[..., 1], np.gradient(gray, axis=2), rtol=1e-5, atol=1e-6)
  assert rgb.shape == x.shape and hue.shape == (2, 6, 5, 1)
  assert bool(jnp.all((hue >= 0) & (hue <= 1)))


# ------------------------------------------------------------------------------- EvalSeg-Net

def _cosine(a, b):
  a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
  return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)


def test_evalseg_shape_range_and_training():
  model = models.EvalSegNet(features=8, bottleneck=4, hidden=16)
  rng = np.random.default_rng(0)
  images = _images(8, 16, 16, seed=5)
  ref = _disk(16, 16).astype(np.float32)
  # Candidates from the reference disk (high cos) to random blobs (low cos).
  noise = rng.uniform(size=(8, 16, 16)).astype(np.float32)
  alpha = np.linspace(0, 1, 8, dtype=np.float32)[:, None, None]
  masks = alpha * ref + (1 - alpha) * noise
  labels = jnp.asarray(_cosine(masks, np.broadcast_to(ref, masks.shape)))
  variables = jax.jit(lambda i, m: model.init(_key(0), i, m, train=False))(images, masks)
  scores = jax.jit(lambda v: model.apply(v, images, masks[..., None], train=False))(variables)
  assert scores.shape == (8,) and bool(jnp.all((scores >= 0) & (scores <= 1)))

  tx = optax.adam(1e-3)
  params = variables["params"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    loss, g = jax.value_and_grad(lambda p: losses.evalseg_loss(
        model.apply({"params": p}, images, masks, train=False), labels))(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  history = []
  for _ in range(30):
    params, opt_state, loss = step(params, opt_state)
    history.append(float(loss))
  assert history[-1] < 0.5 * history[0], history
  with pytest.raises(ValueError, match="head"):
    models.EvalSegNet(features=4, bottleneck=2, hidden=4, head="relu").init(
        _key(0), images, masks, train=False)


# ------------------------------------------------------------------------------------- losses

def test_mask_loss():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)
  target = rng.uniform(size=(3, 4, 4)).astype(np.float32)
  np.testing.assert_allclose(losses.mask_loss(pred, target),
                             np.mean((pred[..., 0] - target) ** 2), rtol=1e-6)
  bce = optax.sigmoid_binary_cross_entropy(pred[..., 0], target).mean()
  np.testing.assert_allclose(losses.mask_loss(pred, target, "bce"), bce, rtol=1e-5)
  w = np.array([1.0, 0.0, 1.0], np.float32)
  np.testing.assert_allclose(losses.mask_loss(pred, target, weights=w),
                             np.mean((pred[[0, 2], ..., 0] - target[[0, 2]]) ** 2), rtol=1e-6)
  with pytest.raises(ValueError, match="output_size"):
    losses.mask_loss(pred, target[:, :2])
  with pytest.raises(ValueError, match="mse"):
    losses.mask_loss(pred, target, "l1")


def test_evalseg_loss():
  pred, target = jnp.array([0.2, 0.9]), jnp.array([[0.0], [1.0]])
  np.testing.assert_allclose(losses.evalseg_loss(pred, target), (0.04 + 0.01) / 2, rtol=1e-6)
  np.testing.assert_allclose(losses.evalseg_loss(pred, target, jnp.array([0.0, 1.0])), 0.01,
                             rtol=1e-5)


def _widths(module) -> dict:
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.name not in ("parent", "name")}


def test_reference_preset_builds_the_reference_networks():
  """configs/segmentation.py:reference gives every network the reference widths (whose
  parameter counts the tests above check) and the reference resolutions."""
  config = segmentation_config.get_config("reference")
  for name in NAMES:
    cls = models.STUDENTS[name]
    assert _widths(cls(**config.students[name])) == _widths(cls()), name
  assert _widths(models.EvalSegNet(**config.evalseg.model)) == _widths(models.EvalSegNet())
  assert config.data.image_size == 256 and config.evalseg.image_size == 128
