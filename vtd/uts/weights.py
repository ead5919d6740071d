"""ImageNet weights for the UTS backbones, from a local torchvision `state_dict` saved as .npz.

File format: an .npz whose keys are torchvision `state_dict` names (`conv1.weight`,
`bn1.running_mean`, `layer1.0.downsample.0.weight`, `features.0.weight`, ...) and whose values
keep torch's layouts (conv weights [O, I, kh, kw]). Make one on any machine with torchvision
(vtd never downloads weights):

    import numpy as np, torchvision
    model = torchvision.models.resnet50(weights="IMAGENET1K_V1")  # or vgg16(weights=...)
    np.savez("resnet50_imagenet.npz", **{k: v.numpy() for k, v in model.state_dict().items()})

IMAGENET1K_V1 are the classic weights (the paper's "official" ResNet-50 / VGG16, 2019); V2 has
the same layout. Preprocessing these weights expect (torchvision's ImageNet transforms): RGB
in [0, 1], minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225), see
`imagenet_normalize`. Feeding BGR or caffe-style inputs silently corrupts the features and
hence the teacher's PCA.

Mapping: flax module path with "_" -> "." is the torch module name (`vtd/uts/models.py` names
its modules that way); conv kernel [kh, kw, I, O] <- weight.transpose(2, 3, 1, 0), conv bias
<- bias, BatchNorm scale / bias / mean / var <- weight / bias / running_mean / running_var.
`num_batches_tracked` is ignored, and so are the parts the UTS models drop: ResNet's `fc.*`,
VGG16's block 5 (`features.24/26/28.*`, replaced by the UTS head, which keeps its random init)
and `classifier.*`. Any other difference (missing key, unexpected key, shape) is a UserError
naming the file and the key.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vtd.data import file_errors
from vtd.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (flax collection, flax leaf name) -> torch parameter / buffer suffix.
_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_VGG16_BLOCK5 = ("features.24.", "features.26.", "features.28.")


def imagenet_normalize(images: jax.Array) -> jax.Array:
  """[..., 3] RGB (uint8 0-255, or float in [0, 1]) -> torchvision-normalised float32."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
  """torch conv weight [O, I, kh, kw] -> flax kernel [kh, kw, I, O]."""
  return np.transpose(w, (2, 3, 1, 0))


def torch_name(collection: str, path: Sequence[str]) -> str:
  """torchvision state_dict key of a flax leaf, e.g. ('layer1_0', 'bn1', 'mean') ->
  'layer1.0.bn1.running_mean'."""
  module = ".".join(p.replace("_", ".") for p in path[:-1])
  return f"{module}.{_TORCH_LEAF[(collection, path[-1])]}"


def _read_npz(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise UserError(f"{path}: weights file not found (see vtd/uts/weights.py for how to make it)")
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except file_errors.CORRUPT_FILE_ERRORS as e:  # Damaged bytes raise many types (file_errors).
    raise UserError(f"{path}: not a readable .npz of arrays ({file_errors.describe(e)}); make "
                    f"it again as vtd/uts/weights.py describes") from None


def _subtree(tree: Any, path: Sequence[str]) -> Any:
  for p in path:
    if not isinstance(tree, Mapping) or p not in tree:
      return None
    tree = tree[p]
  return tree


def _replace(tree: dict, path: Sequence[str], value: Any) -> dict:
  if not path:
    return value
  return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def _load(path: str, template: dict, scope: Sequence[str], what: str,
          loads: Callable[[tuple[str, ...]], bool], ignored: Callable[[str], bool]) -> dict:
  """Fills the leaves of `template[collection][*scope]` whose module path satisfies `loads`."""
  template = dict(template)
  if _subtree(template, ("params", *scope)) is None:
    raise UserError(f"no parameters at {'/'.join(scope) or 'the top level'} of the variables "
                    f"given for the {what} weights in {path}")
  # torch key -> (collection, flax path, template leaf)
  expected: dict[str, tuple[str, tuple[str, ...], Any]] = {}
  for collection in ("params", "batch_stats"):
    sub = _subtree(template, (collection, *scope))
    for p, leaf in traverse_util.flatten_dict(sub or {}).items():
      if loads(p[:-1]):
        expected[torch_name(collection, p)] = (collection, p, leaf)

  data = _read_npz(path)
  keys = {k for k in data if not k.endswith(".num_batches_tracked")}
  missing = sorted(set(expected) - keys)
  if missing:
    raise UserError(f"{path}: missing key {missing[0]!r} ({len(missing)} missing) for a "
                    f"torchvision {what} state_dict")
  unexpected = sorted(k for k in keys - set(expected) if not ignored(k))
  if unexpected:
    raise UserError(f"{path}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected) "
                    f"for a torchvision {what} state_dict")

  new: dict[str, dict[tuple[str, ...], Any]] = {"params": {}, "batch_stats": {}}
  for key, (collection, p, leaf) in expected.items():
    arr = np.asarray(data[key])
    is_conv = p[-1] == "kernel" and len(leaf.shape) == 4
    want = (leaf.shape[3], leaf.shape[2], *leaf.shape[:2]) if is_conv else tuple(leaf.shape)
    if arr.shape != want:
      raise UserError(f"{path}: key {key!r} has shape {arr.shape}, the model expects {want} "
                      f"(torch layout; is the model's width that of the checkpoint?)")
    new[collection][p] = jnp.asarray(oihw_to_hwio(arr) if is_conv else arr, leaf.dtype)

  for collection, leaves in new.items():
    sub = _subtree(template, (collection, *scope))
    if sub is None:
      continue
    flat = traverse_util.flatten_dict(sub)
    flat.update(leaves)
    template = _replace(template, (collection, *scope), traverse_util.unflatten_dict(flat))
  return template


def load_resnet50_npz(path: str, variables_template: dict, *, scope: Sequence[str] = ()) -> dict:
  """torchvision resnet50 weights into `models.ResNet50` variables.

  Args:
    path: .npz of a torchvision resnet50 state_dict (module docstring).
    variables_template: {'params', 'batch_stats'} of the model (concrete arrays or
      `jax.eval_shape` structs: only shapes and dtypes are read), or of a wrapper holding it.
    scope: path of the backbone inside the template, e.g. ('backbone',) for a `Teacher`.

  Returns:
    The template with every backbone leaf loaded (`fc.*` ignored); other leaves unchanged.
  """
  return _load(path, variables_template, tuple(scope), "resnet50", lambda module: True,
               lambda key: key.startswith("fc."))


def load_vgg16_npz(path: str, variables_template: dict, *, scope: Sequence[str] = ()) -> dict:
  """torchvision vgg16 (no BN) blocks 1-4 (`features.0..21`) into `models.VGG16Student`.

  Same arguments as `load_resnet50_npz` (scope ('backbone',) for a `Student`). Block 5 and
  the classifier in the file are ignored; the UTS head leaves are returned unchanged.
  """
  return _load(path, variables_template, tuple(scope), "vgg16",
               lambda module: module[0].startswith("features_"),
               lambda key: key.startswith(("classifier.", *_VGG16_BLOCK5)))
