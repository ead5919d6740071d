"""The UTS networks as configured, and their per-frame embedding functions.

`teacher` = frozen ResNet-50 + pooling + PCA-whitening FC (eqs. 1-3); `student` = VGG16 with the
UTS head (blocks 1-4 + Conv-BN-ReLU x2 + Conv-BN). Both take uint8 frames and apply the
torchvision ImageNet normalisation their (optional) converted weights expect.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vtd.errors import UserError
from vtd.uts import models
from vtd.uts import weights


def build_teacher(config: ml_collections.ConfigDict) -> models.Teacher:
  return models.Teacher(backbone=models.ResNet50(width=config.teacher.width),
                        out_dim=config.teacher.pca_dim, pool=config.teacher.pool,
                        rmac_levels=tuple(config.extract.rmac_levels))


def build_student(config: ml_collections.ConfigDict) -> models.Student:
  scfg = config.student
  backbone = models.VGG16Student(width=scfg.width, head_width=scfg.head_width,
                                 out_dim=config.teacher.pca_dim, head_kernel=scfg.head_kernel,
                                 keep_pool5=scfg.keep_pool5)
  return models.Student(backbone=backbone, pool=scfg.pool,
                        rmac_levels=tuple(config.extract.rmac_levels))


def teacher_input(frames: jax.Array, size: int) -> jax.Array:
  """uint8 [B, S, S, 3] -> normalised float [B, size, size, 3] (bilinear resize)."""
  x = weights.imagenet_normalize(frames)
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
  return x


def _template(module, size: int, **kwargs) -> dict[str, Any]:
  """Variable shapes of `module` (nothing is computed)."""
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  return dict(jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **kwargs), x))


def check_weight_files(config: ml_collections.ConfigDict) -> list[str]:
  """Validates every configured weight file before any stage runs; returns the files checked.

  Each file is read and matched against the configured model (keys, shapes, float dtype,
  finite values: `weights._load`), so a wrong or corrupt file is reported in seconds instead
  of after the teacher stage. A UserError names the file, the key and the fix.
  """
  checked = []
  if config.teacher.weights:
    weights.load_resnet50_npz(config.teacher.weights,
                              _template(build_teacher(config), config.teacher.image_size),
                              scope=("backbone",))
    checked.append(config.teacher.weights)
  if config.student.weights:
    weights.load_vgg16_npz(config.student.weights,
                           _template(build_student(config), config.data.image_size, train=False),
                           scope=("backbone",))
    checked.append(config.student.weights)
  return checked


def init_teacher(config: ml_collections.ConfigDict,
                 pretrained: dict[str, Any] | None = None) -> dict[str, Any]:
  """Teacher variables (PCA FC still unfitted).

  The backbone comes from `config.teacher.weights` (converted ImageNet weights) if set, else
  from `pretrained` ({'params', 'batch_stats'} of a `models.ResNet50`, the source-domain
  pretraining), else from a random init seeded by `config.teacher.init_seed`.
  """
  teacher = build_teacher(config)
  size = config.teacher.image_size
  x = jnp.zeros((1, size, size, 3))
  if config.teacher.weights or pretrained is not None:
    # Every backbone leaf is replaced below and the PCA FC is fitted afterwards: only the
    # shapes are needed (a random ResNet-50 init costs ~20 s of XLA compilation on a CPU).
    shapes = jax.eval_shape(lambda: teacher.init(jax.random.key(0), x))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(shapes))
  else:
    variables = dict(teacher.init(jax.random.key(config.teacher.init_seed), x))
  if config.teacher.weights:
    variables = weights.load_resnet50_npz(config.teacher.weights, variables,
                                          scope=("backbone",))
  elif pretrained is not None:
    for col in ("params", "batch_stats"):
      want = jax.tree.map(jnp.shape, variables[col]["backbone"])
      got = jax.tree.map(jnp.shape, pretrained[col])
      if want != got:
        raise UserError("the pretrained ResNet-50 does not match teacher.width: delete the "
                        "pretraining cache entry or fix the config")
      variables[col] = {**variables[col],
                        "backbone": jax.tree.map(jnp.asarray, pretrained[col])}
  return variables


def init_student(config: ml_collections.ConfigDict, rng: jax.Array,
                 pretrained: dict[str, Any] | None = None) -> dict[str, Any]:
  """Student variables: VGG16 blocks 1-4 from `config.student.weights` (converted ImageNet
  VGG16) if set, else from `pretrained` (the source-domain pretraining's VGG16), else random;
  the UTS head always starts from its random init (it replaces block 5)."""
  size = config.data.image_size
  variables = dict(build_student(config).init(rng, jnp.zeros((2, size, size, 3)), train=False))
  if config.student.weights:
    variables = weights.load_vgg16_npz(config.student.weights, variables, scope=("backbone",))
  elif pretrained is not None:
    backbone = dict(variables["params"]["backbone"])
    for name, leaves in pretrained["params"].items():
      if name.startswith("features_"):
        if jax.tree.map(jnp.shape, leaves) != jax.tree.map(jnp.shape, backbone[name]):
          raise UserError(f"the pretrained VGG16's {name} does not match student.width")
        backbone[name] = jax.tree.map(jnp.asarray, leaves)
    variables["params"] = {**variables["params"], "backbone": backbone}
  return variables


def _sub(variables: dict[str, Any], name: str) -> dict[str, Any]:
  return {col: tree[name] for col, tree in variables.items() if name in tree}


def teacher_embed_fn(config: ml_collections.ConfigDict, variables: dict[str, Any],
                     whiten: bool = True) -> Callable[[jax.Array], dict[str, jax.Array]]:
  """Jitted uint8 frames [B, S, S, 3] -> {'gap': [B, D*], 'rmac': [B, D]} teacher features.

  'gap' is the teacher's output f* (the student's target). 'rmac' is R-MAC of the backbone map
  without whitening (the paper's "ResNet50 + R-MAC" rows): the PCA FC was fitted on pooled
  features f, not on L2-normalised region vectors, so applying it per region (classic R-MAC)
  would map every region near the constant -mean W. `whiten=False` returns the raw pooled f
  as 'gap' (for fitting the PCA).
  """
  teacher = build_teacher(config)
  size = config.teacher.image_size
  levels = tuple(config.extract.rmac_levels)
  pca = (variables["pca"]["kernel"], variables["pca"]["bias"]) if whiten else None

  @jax.jit
  def embed(frames):
    x = teacher_input(frames, size)
    fmap = teacher.backbone.apply(_sub(variables, "backbone"), x, train=False)
    pooled = models.pool_features(fmap, config.teacher.pool, levels)
    out = {"gap": models.apply_pca_whitening(pooled, *pca) if whiten else pooled}
    out["rmac"] = models.rmac(fmap, levels)
    return out

  return embed


def student_embed_fn(config: ml_collections.ConfigDict, variables: dict[str, Any]
                     ) -> Callable[[jax.Array], dict[str, jax.Array]]:
  """Jitted uint8 frames [B, S, S, 3] -> {'gap': [B, D*], 'rmac': [B, D*]} student features."""
  student = build_student(config)
  levels = tuple(config.extract.rmac_levels)

  @jax.jit
  def embed(frames):
    fmap = student.backbone.apply(_sub(variables, "backbone"), weights.imagenet_normalize(frames),
                                  train=False)
    return {"gap": models.gap(fmap), "rmac": models.rmac(fmap, levels)}

  return embed
