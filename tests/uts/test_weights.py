"""Loading torchvision state_dict .npz files into the UTS backbones (vtd/uts/weights.py).

The test files are written in exactly the documented format: one array per torchvision
state_dict name with torch's shapes (conv OIHW), built here from an independent transcription
of torchvision's resnet50 / vgg16 layouts at a small width, filled with random values.
"""

import collections
import io
import pickle
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtd.errors import UserError
from vtd.uts import models
from vtd.uts import weights


def _bn(shapes, name, c):
  for leaf in ("weight", "bias", "running_mean", "running_var"):
    shapes[f"{name}.{leaf}"] = (c,)
  shapes[f"{name}.num_batches_tracked"] = ()


def resnet50_shapes(width=64, stages=(3, 4, 6, 3), classes=1000):
  """torchvision resnet50 state_dict names -> shapes."""
  s = {"conv1.weight": (width, 3, 7, 7)}
  _bn(s, "bn1", width)
  cin = width
  for i, blocks in enumerate(stages):
    p = width * 2 ** i
    for j in range(blocks):
      pre = f"layer{i + 1}.{j}"
      for k, (cout, cin_k, ks) in enumerate([(p, cin, 1), (p, p, 3), (4 * p, p, 1)], 1):
        s[f"{pre}.conv{k}.weight"] = (cout, cin_k, ks, ks)
        _bn(s, f"{pre}.bn{k}", cout)
      if j == 0:
        s[f"{pre}.downsample.0.weight"] = (4 * p, cin, 1, 1)
        _bn(s, f"{pre}.downsample.1", 4 * p)
      cin = 4 * p
  s["fc.weight"], s["fc.bias"] = (classes, cin), (classes,)
  return s


def vgg16_shapes(width=64, hidden=4096, classes=1000):
  """torchvision vgg16 (no BN) state_dict names -> shapes."""
  cfg = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]
  s, cin, idx = {}, 3, 0
  for c in cfg:
    if c == "M":
      idx += 1  # MaxPool2d
      continue
    s[f"features.{idx}.weight"] = (c * width, cin, 3, 3)
    s[f"features.{idx}.bias"] = (c * width,)
    cin, idx = c * width, idx + 2  # Conv2d, ReLU
  s["classifier.0.weight"], s["classifier.0.bias"] = (hidden, cin * 49), (hidden,)
  s["classifier.3.weight"], s["classifier.3.bias"] = (hidden, hidden), (hidden,)
  s["classifier.6.weight"], s["classifier.6.bias"] = (classes, hidden), (classes,)
  return s


def _params(shapes):
  return sum(int(np.prod(v)) for k, v in shapes.items() if "running" not in k and v)


def test_transcriptions_match_torchvision_counts():
  assert _params(resnet50_shapes()) == 25_557_032
  assert _params(vgg16_shapes()) == 138_357_544
  assert sorted(int(k.split(".")[1]) for k in vgg16_shapes() if k.startswith("features")
                and k.endswith("weight")) == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def _write(path, shapes, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {}
  for k, shape in shapes.items():
    if k.endswith("num_batches_tracked"):
      arrays[k] = np.asarray(7, np.int64)
    elif k.endswith("running_var"):
      arrays[k] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    else:
      arrays[k] = rng.normal(size=shape).astype(np.float32)
  np.savez(path, **arrays)
  return arrays


def _flax_path(key):
  """Independent inverse of the naming rule: 'layer1.0.downsample.1.running_var' ->
  ('batch_stats', ('layer1_0', 'downsample_1', 'var'))."""
  *module, leaf = key.split(".")
  parts = []
  for m in module:
    if m.isdigit():
      parts[-1] += f"_{m}"
    else:
      parts.append(m)
  if leaf.startswith("running_"):
    return "batch_stats", (*parts, leaf[len("running_"):])
  return "params", (*parts, leaf)


def _flax_leaf(variables, key, src):
  collection, path = _flax_path(key)
  tree = variables[collection]
  for p in path[:-1]:
    tree = tree[p]
  leaf = path[-1]
  if leaf == "weight":
    leaf = "kernel" if src.ndim == 4 else "scale"
  return tree[leaf]


def _template(module, **kwargs):
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  kwargs = kwargs or {"train": False}
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **kwargs), x)


TORCH_TO_FLAX = lambda a: np.transpose(a, (2, 3, 1, 0)) if a.ndim == 4 else a


def test_resnet50_npz_roundtrip(tmp_path):
  path = str(tmp_path / "resnet50.npz")
  src = _write(path, resnet50_shapes(8, classes=10))
  template = _template(models.ResNet50(width=8))
  loaded = weights.load_resnet50_npz(path, template)
  assert jax.tree.structure(loaded) == jax.tree.structure(template)
  used = [k for k in src if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
  assert len(used) == len(jax.tree.leaves(template))  # Every leaf has exactly one source.
  for k in used:
    np.testing.assert_array_equal(_flax_leaf(loaded, k, src[k]), TORCH_TO_FLAX(src[k]), k)

  # The same file through a Teacher, whose backbone sits under 'backbone'.
  teacher = models.Teacher(models.ResNet50(width=8), out_dim=4)
  tv = weights.load_resnet50_npz(path, _template(teacher, whiten=True), scope=("backbone",))
  np.testing.assert_array_equal(tv["params"]["backbone"]["layer4_2"]["conv3"]["kernel"],
                                loaded["params"]["layer4_2"]["conv3"]["kernel"])
  assert isinstance(tv["pca"]["kernel"], jax.ShapeDtypeStruct)  # Outside the scope: untouched.


def test_vgg16_npz_roundtrip_keeps_head(tmp_path):
  path = str(tmp_path / "vgg16.npz")
  src = _write(path, vgg16_shapes(8, hidden=16, classes=10))
  student = models.Student(models.VGG16Student(width=8, head_width=16, out_dim=16))
  template = _template(student)
  loaded = weights.load_vgg16_npz(path, template, scope=("backbone",))
  used = [k for k in src if k.startswith("features.") and int(k.split(".")[1]) < 23]
  assert len(used) == 20
  for k in used:
    np.testing.assert_array_equal(_flax_leaf({c: v["backbone"] for c, v in loaded.items()}, k,
                                             src[k]), TORCH_TO_FLAX(src[k]), k)
  head = {k: v for k, v in loaded["params"]["backbone"].items() if k.startswith("head")}
  assert head and all(isinstance(l, jax.ShapeDtypeStruct) for l in jax.tree.leaves(head))
  bn = loaded["batch_stats"]["backbone"]
  assert set(bn) == {"head_bn1", "head_bn2", "head_bn3"}  # VGG16 (no BN): only the head's.
  assert all(isinstance(l, jax.ShapeDtypeStruct) for l in jax.tree.leaves(bn))


def test_errors_name_file_and_key(tmp_path):
  template = _template(models.ResNet50(width=8))
  shapes = resnet50_shapes(8, classes=10)
  path = str(tmp_path / "w.npz")

  def write(shapes):
    _write(path, shapes)

  write({k: v for k, v in shapes.items() if k != "layer3.1.bn2.running_var"})
  with pytest.raises(UserError, match=r"w\.npz: missing key 'layer3\.1\.bn2\.running_var'"):
    weights.load_resnet50_npz(path, template)
  write({**shapes, "layer2.0.conv2.weight": (64, 16, 3, 3)})
  with pytest.raises(UserError, match=r"'layer2\.0\.conv2\.weight' has shape \(64, 16, 3, 3\), "
                     r"the model expects \(16, 16, 3, 3\)"):
    weights.load_resnet50_npz(path, template)
  write({**shapes, "layer5.0.conv1.weight": (8, 8, 1, 1)})
  with pytest.raises(UserError, match=r"unexpected key 'layer5\.0\.conv1\.weight'"):
    weights.load_resnet50_npz(path, template)
  write(shapes)  # A ResNet file is not a VGG16 one.
  with pytest.raises(UserError, match="missing key 'features.0.bias'"):
    weights.load_vgg16_npz(path, _template(models.VGG16Student(width=8)))
  with pytest.raises(UserError, match="not found"):
    weights.load_resnet50_npz(str(tmp_path / "nope.npz"), template)
  (tmp_path / "bad.npz").write_text("not a zip")
  with pytest.raises(UserError, match="bad.npz: not a readable"):
    weights.load_resnet50_npz(str(tmp_path / "bad.npz"), template)


def _torch_conv2d(x, w, stride, pad):
  """torch.nn.functional.conv2d by loops: x [N, C, H, W], w [O, C, kh, kw] (cross-correlation)."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  kh, kw = w.shape[2:]
  oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], w.shape[0], oh, ow))
  for i in range(oh):
    for j in range(ow):
      patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
      out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
  return out


def test_oihw_conversion_matches_cross_correlation():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 2, 5, 6)).astype(np.float32)   # NCHW
  w = rng.normal(size=(3, 2, 3, 2)).astype(np.float32)   # OIHW, non-square kernel
  out = jax.lax.conv_general_dilated(
      jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(weights.oihw_to_hwio(w)), (1, 1),
      ((1, 1), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # Padding 1 along H only (the helper pads both axes alike).
  ref = _torch_conv2d(np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0))), w, 1, 0)
  np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), ref, rtol=1e-5, atol=1e-5)


def test_loaded_resnet_convs_compute_torch_convs(tmp_path):
  """The stem (7x7/2, pad 3) and the v1.5 stride-2 3x3 of layer2.0 equal torch's conv2d."""
  path = str(tmp_path / "r.npz")
  src = _write(path, resnet50_shapes(4, stages=(1, 1), classes=10))
  model = models.ResNet50(width=4, stage_sizes=(1, 1))
  variables = weights.load_resnet50_npz(path, _template(model))
  x = np.random.default_rng(1).normal(size=(1, 20, 18, 3)).astype(np.float32)
  _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                              mutable=["intermediates"]))(variables, x)
  inter = state["intermediates"]
  nchw = lambda a: np.asarray(a, np.float64).transpose(0, 3, 1, 2)
  stem = _torch_conv2d(x.transpose(0, 3, 1, 2), src["conv1.weight"], 2, 3)
  np.testing.assert_allclose(nchw(inter["conv1"]["__call__"][0]), stem, rtol=1e-4, atol=1e-4)
  block = inter["layer2_0"]
  conv2_in = np.maximum(nchw(block["bn1"]["__call__"][0]), 0)
  np.testing.assert_allclose(nchw(block["conv2"]["__call__"][0]),
                             _torch_conv2d(conv2_in, src["layer2.0.conv2.weight"], 2, 1),
                             rtol=1e-4, atol=1e-4)
  assert block["conv2"]["__call__"][0].shape == (1, 3, 3, 8)  # 20x18 -> 10x9 -> 5x5 -> 3x3


# ------------------------------------------------------------------ validation before any work

def _fake_torch_modules():
  """Stand-ins for `torch` / `torch._utils` (torch is not installed here), so that `pickle`
  writes exactly the globals torch.save writes: torch._utils._rebuild_tensor_v2 and
  torch.FloatStorage."""
  torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

  class FloatStorage:
    pass

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: vtd does not unpickle torch files")

  FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  torch_mod.FloatStorage, torch_mod._utils = FloatStorage, utils_mod
  utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
  return {"torch": torch_mod, "torch._utils": utils_mod}


def write_torch_save_zip(path, tensors, archive="resnet50"):
  """Writes {name: float32 array} in torch.save's zip format (torch >= 1.6, the default):

  a stored (uncompressed) zip whose records sit under one folder: `data.pkl` (protocol-2 pickle
  of an OrderedDict name -> torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
  requires_grad, backward_hooks), each storage a persistent id ('storage', torch.FloatStorage,
  key, 'cpu', numel)), `data/<key>` (the raw little-endian storage bytes), `byteorder` and
  `version`. Written here without torch, by pickling the same globals (`_fake_torch_modules`).
  """
  modules = _fake_torch_modules()
  saved = {name: sys.modules.get(name) for name in modules}
  sys.modules.update(modules)
  try:
    rebuild = modules["torch._utils"]._rebuild_tensor_v2
    storage_cls = modules["torch"].FloatStorage

    class Storage:
      def __init__(self, key, numel):
        self.key, self.numel = key, numel

    class Tensor:
      def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

      def __reduce__(self):
        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return rebuild, (self.storage, 0, tuple(self.shape), stride, False,
                         collections.OrderedDict())

    class Pickler(pickle.Pickler):
      def persistent_id(self, obj):
        if isinstance(obj, Storage):
          return ("storage", storage_cls, obj.key, "cpu", obj.numel)
        return None

    state = collections.OrderedDict(
        (name, Tensor(Storage(str(i), arr.size), arr.shape))
        for i, (name, arr) in enumerate(tensors.items()))
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(state)
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
    z.writestr(f"{archive}/data.pkl", buffer.getvalue())
    z.writestr(f"{archive}/byteorder", "little")
    for i, arr in enumerate(tensors.values()):
      z.writestr(f"{archive}/data/{i}", np.ascontiguousarray(arr, "<f4").tobytes())
    z.writestr(f"{archive}/version", "3\n")


def test_torch_save_files_are_named_as_such(tmp_path):
  template = _template(models.ResNet50(width=8))
  arrays = {k: np.zeros(v, np.float32) for k, v in resnet50_shapes(8, classes=10).items()
            if v}
  path = tmp_path / "resnet50-0676ba61.pth"
  write_torch_save_zip(str(path), arrays)
  with zipfile.ZipFile(path) as z:  # The layout torch writes.
    assert {"resnet50/data.pkl", "resnet50/byteorder", "resnet50/version"} <= set(z.namelist())
    assert b"torch._utils" in z.read("resnet50/data.pkl")
  assert weights.torch_save_format(str(path)) == "zip"
  with pytest.raises(UserError, match=r"resnet50-0676ba61\.pth: a torch\.save file \(zip "
                     r"format\), not an \.npz of arrays: convert it"):
    weights.load_resnet50_npz(str(path), template)
  legacy = tmp_path / "old.pth"  # torch < 1.6: magic number, protocol version, ... pickled.
  legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
                     + pickle.dumps(1001, protocol=2) + b"...")
  assert weights.torch_save_format(str(legacy)) == "legacy"
  with pytest.raises(UserError, match=r"old\.pth: a torch\.save file \(legacy pickle format\)"):
    weights.load_resnet50_npz(str(legacy), template)
  npz = tmp_path / "ok.npz"
  _write(str(npz), resnet50_shapes(8, classes=10))
  assert weights.torch_save_format(str(npz)) is None  # An .npz is a zip too, not torch's.


def test_dtype_and_non_finite_values_are_rejected(tmp_path):
  template = _template(models.ResNet50(width=8))
  shapes = resnet50_shapes(8, classes=10)
  path = str(tmp_path / "w.npz")
  arrays = _write(path, shapes)
  np.savez(path, **{**arrays, "layer1.0.conv1.weight":
                    arrays["layer1.0.conv1.weight"].astype(np.int32)})
  with pytest.raises(UserError, match=r"'layer1\.0\.conv1\.weight' has dtype int32, the model "
                     r"expects floating point"):
    weights.load_resnet50_npz(path, template)
  bad = arrays["layer4.2.bn3.running_var"].copy()
  bad[[0, 3]] = [np.nan, np.inf]
  np.savez(path, **{**arrays, "layer4.2.bn3.running_var": bad})
  with pytest.raises(UserError, match=r"'layer4\.2\.bn3\.running_var' has 2 NaN or inf values"):
    weights.load_resnet50_npz(path, template)
