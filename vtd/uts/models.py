"""UTS networks: frozen ResNet-50 teacher with a PCA-whitening FC, VGG16 student, GAP / R-MAC.

Images are [B, H, W, 3] RGB, normalised like the converted ImageNet weights (torchvision
mean / std, `vtd/uts/weights.py`). Backbones return their last conv map [B, h, w, C]; the
`Teacher` and `Student` wrappers pool it to [B, D*] (`shared/reference/retrieval_uts_qbnorm.md`
§A.1-A.3):

  module         layout                                         output (224 x 224 input)
  ResNet50       torchvision resnet50 (v1.5: stride on the 3x3)  [B, 7, 7, 32 * width]
  VGG16Student   torchvision vgg16 features[:24] + new block 5   [B, 14, 14, out_dim]

Parameter counts at width 64 (trainable, BN scale + bias included, running stats not):
ResNet50 23,508,032 (torchvision's 25,557,032 minus the 2,049,000 of `fc`); VGG16 blocks 1-4
7,635,264 (torchvision `features[:23]`), the default head 7,080,960.

Decisions on the reference's open points (defaults not from the paper):
* Student "last block" = VGG conv block 5 (conv5_1..3 + pool5): replaced by Conv-BN-ReLU x2 +
  Conv-BN (no ReLU, so outputs can be zero-mean like the whitened teacher) at stride 16; pool4
  kept, pool5 dropped (`keep_pool5` restores it after the head). Head convs have no bias
  (each is followed by BN, which cancels it) and torchvision's kaiming-normal fan-out init.
* Training pooling (`pool`): 'gap' by default (ResNet's own global vector, and the zero-mean
  argument of §A.2 holds for averages); 'rmac' is the alternative and the retrieval default
  (pass `pool=` at call time to override the module's training choice).
* R-MAC: levels (1, 2, 3), per-region L2, no per-region whitening, sum, L2 (§A.3). A level
  whose region side floor(2 min(H, W) / (l + 1)) is 0 is skipped (the map is too small for it).
* BatchNorm follows torchvision (momentum 0.1 -> flax 0.9, eps 1e-5). The teacher always runs
  its BN on the ImageNet running statistics (it is never trained, §A.1).
* PCA: population covariance (eq. 1), eigenvector signs fixed so that each eigenvector's
  largest-magnitude entry is positive (LAPACK's signs are arbitrary; a refit on the same data
  must give the same target). Fitted once in float64 NumPy, stored in the teacher's frozen
  `pca` collection.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vtd.errors import UserError
from vtd.layers import l2_normalize, torch_batch_norm

# torchvision's ResNet / VGG conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
_KAIMING_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
POOLS = ("gap", "rmac")
RMAC_OVERLAP = 0.4  # Target overlap of consecutive regions on the long side (Tolias et al.).


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
  # torch's symmetric padding = k // 2. Not "SAME": for stride 2 on even sizes SAME pads
  # (0, 1) where torch pads (1, 1), which would shift every feature by one pixel.
  return ((kernel // 2, kernel // 2),) * 2


def _conv(features: int, kernel: int, stride: int = 1, *, name: str,
          use_bias: bool = False) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=_pad(kernel),
                 use_bias=use_bias, kernel_init=_KAIMING_OUT, name=name)


# Module names mirror torchvision's state_dict names with "." -> "_" (`layer1_0/downsample_0`
# is `layer1.0.downsample.0`), which is all `vtd/uts/weights.py` needs to map them.
class Bottleneck(nn.Module):
  """torchvision Bottleneck: 1x1 -> 3x3 (stride here, v1.5) -> 1x1 (4 x planes), + shortcut."""
  planes: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out = 4 * self.planes
    y = nn.relu(torch_batch_norm(train, "bn1")(_conv(self.planes, 1, name="conv1")(x)))
    y = nn.relu(torch_batch_norm(train, "bn2")(_conv(self.planes, 3, self.stride, name="conv2")(y)))
    y = torch_batch_norm(train, "bn3")(_conv(out, 1, name="conv3")(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = torch_batch_norm(train, "downsample_1")(_conv(out, 1, self.stride, name="downsample_0")(x))
    return nn.relu(y + x)


class ResNet50(nn.Module):
  """torchvision resnet50 without avgpool / fc: [B, H, W, 3] -> [B, H/32, W/32, 32 * width].

  Attributes:
    width: stem width (64); stage i has bottleneck width width * 2^i, output 4x that.
    stage_sizes: bottleneck blocks per stage ((3, 4, 6, 3) = ResNet-50).
  """
  width: int = 64
  stage_sizes: Sequence[int] = (3, 4, 6, 3)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    x = nn.relu(torch_batch_norm(train, "bn1")(_conv(self.width, 7, 2, name="conv1")(images)))
    # Padded with -inf, like torch's MaxPool2d(3, 2, padding=1).
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = Bottleneck(self.width * 2 ** i, stride, name=f"layer{i + 1}_{j}")(x, train=train)
    return x


# VGG16 blocks 1-4 as (width multiplier, convs); torchvision `features` indices 0..23.
_VGG16_BLOCKS = ((1, 2), (2, 2), (4, 3), (8, 3))


class VGG16Student(nn.Module):
  """VGG16 conv blocks 1-4 (+ pool4) and the UTS head in place of block 5.

  [B, H, W, 3] -> [B, H/16, W/16, out_dim] (H/32 with `keep_pool5`). Block convs are
  `features_<torchvision index>` (3x3, bias, ReLU); pools 2x2/2 floor (torch's default).

  Attributes:
    width: block-1 width (64); blocks 1-4 have width x (1, 2, 4, 8).
    head_width: width of the two Conv-BN-ReLU head layers (512).
    out_dim: D*, width of the final Conv-BN, no ReLU (512).
    head_kernel: odd kernel size of the head convs (3).
    keep_pool5: max-pool 2x2/2 after the head, as VGG's pool5 (False).
  """
  width: int = 64
  head_width: int = 512
  out_dim: int = 512
  head_kernel: int = 3
  keep_pool5: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    if self.head_kernel < 1 or self.head_kernel % 2 == 0:
      raise UserError(f"uts head_kernel must be odd and positive, got {self.head_kernel}")
    x, index = images, 0
    for mult, convs in _VGG16_BLOCKS:
      for _ in range(convs):
        x = nn.relu(_conv(self.width * mult, 3, name=f"features_{index}", use_bias=True)(x))
        index += 2  # conv + ReLU
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      index += 1
    k = self.head_kernel
    for i in (1, 2):
      x = nn.relu(torch_batch_norm(train, f"head_bn{i}")(_conv(self.head_width, k, name=f"head_conv{i}")(x)))
    x = torch_batch_norm(train, "head_bn3")(_conv(self.out_dim, k, name="head_conv3")(x))
    if self.keep_pool5:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x


# ------------------------------------------------------------------------------------- pooling
def gap(fmap: jax.Array) -> jax.Array:
  """Global average pooling [B, H, W, C] -> [B, C]."""
  return jnp.mean(fmap, axis=(1, 2))


def rmac_regions(h: int, w: int, levels: Sequence[int] = (1, 2, 3)
                 ) -> list[tuple[int, int, int, int]]:
  """R-MAC region grid of an h x w map as half-open (y0, y1, x0, x1) slices (reference §A.3).

  Square regions of side floor(2 min(h, w) / (l + 1)) per level l, l regions along the short
  side, l + extra along the long side (extra chosen for ~40% overlap). Pure Python on static
  sizes, so the slices are static inside `jit`. On tiny maps a level can repeat a region; it
  is kept (and summed twice by `rmac`), as the rules give it.
  """
  h, w = int(h), int(w)
  if h < 1 or w < 1:
    raise UserError(f"R-MAC needs a non-empty feature map, got {h} x {w}")
  short = min(h, w)
  steps = np.arange(2, 8, dtype=np.float64)
  b = (max(h, w) - short) / (steps - 1)
  idx = int(np.argmin(np.abs((short ** 2 - short * b) / short ** 2 - RMAC_OVERLAP)))
  extra_w = idx + 1 if h < w else 0
  extra_h = idx + 1 if h > w else 0
  regions = []
  for level in levels:
    if int(level) != level or level < 1:
      raise UserError(f"R-MAC levels must be positive integers, got {tuple(levels)}")
    side = math.floor(2 * short / (level + 1))
    if side == 0:
      continue  # Map smaller than this level's regions.
    half = math.floor(side / 2 - 1)

    def starts(count: int, extent: int) -> list[int]:
      stride = 0.0 if count == 1 else (extent - side) / (count - 1)
      return [math.floor(half + i * stride) - half for i in range(count)]

    for y0 in starts(level + extra_h, h):
      for x0 in starts(level + extra_w, w):
        regions.append((y0, y0 + side, x0, x0 + side))
  return regions


def rmac(fmap: jax.Array, levels: Sequence[int] = (1, 2, 3),
         region_whitening: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """R-MAC [B, H, W, C] -> [B, C'] (unit L2 norm).

  Per region: max-pool, L2, optionally whiten (x W + b, W [C, C']) and L2 again; then the sum
  over regions, L2. Without whitening C' = C.
  """
  regions = rmac_regions(fmap.shape[1], fmap.shape[2], levels)
  if not regions:
    raise UserError(f"no R-MAC region fits a {fmap.shape[1]} x {fmap.shape[2]} map at levels "
                    f"{tuple(levels)}")
  v = jnp.stack([jnp.max(fmap[:, y0:y1, x0:x1], axis=(1, 2)) for y0, y1, x0, x1 in regions],
                axis=1)  # [B, R, C]
  v = l2_normalize(v)
  if region_whitening is not None:
    v = l2_normalize(apply_pca_whitening(v, *region_whitening))
  return l2_normalize(jnp.sum(v, axis=1))


def pool_features(fmap: jax.Array, pool: str, levels: Sequence[int] = (1, 2, 3)) -> jax.Array:
  """[B, H, W, C] -> [B, C] by 'gap' or 'rmac' (levels)."""
  if pool == "gap":
    return gap(fmap)
  if pool == "rmac":
    return rmac(fmap, levels)
  raise UserError(f"uts pooling must be one of {POOLS}, got {pool!r}")


# --------------------------------------------------------------------------- PCA whitening FC
def fit_pca_whitening(features: np.ndarray, out_dim: int, eps: float = 0.0
                      ) -> tuple[np.ndarray, np.ndarray]:
  """PCA-whitening as an FC layer, eqs. 1-3: f* = f W + b, zero mean and identity covariance.

  Args:
    features: [m, D] global features f (converted to float64).
    out_dim: D*, number of leading principal directions kept.
    eps: added to the eigenvalues before the 1/sqrt (0 in eq. 3); with eps > 0, D* may
      exceed the covariance rank (the extra directions carry ~0 variance on the data).

  Returns:
    W [D, D*] = U_{D*} / sqrt(lambda_{D*} + eps) and b [D*] = -mean W, float64.
  """
  f = np.asarray(features, np.float64)
  if f.ndim != 2:
    raise UserError(f"PCA features must be [m, D], got shape {f.shape}")
  m, d = f.shape
  if m < 2:
    raise UserError(f"PCA needs at least 2 feature vectors, got {m}")
  if not 1 <= out_dim <= d:
    raise UserError(f"PCA out_dim={out_dim} must be in [1, D={d}]")
  if eps < 0:
    raise UserError(f"PCA eps must be >= 0, got {eps}")
  if not np.all(np.isfinite(f)):
    raise UserError("PCA features contain NaN or inf")
  mean = f.mean(axis=0)
  x = f - mean
  lam, u = np.linalg.eigh(x.T @ x / m)  # Eq. 1 (1/m), eq. 2; ascending.
  lam, u = lam[::-1], u[:, ::-1]
  rank = int(np.sum(lam > max(lam[0], 0.0) * d * np.finfo(np.float64).eps))
  if out_dim > rank and eps == 0:
    raise UserError(f"PCA out_dim={out_dim} exceeds the rank {rank} of the covariance of {m} "
                    f"features (at most m - 1): use more frames, a smaller feature dim, or "
                    f"pca_eps > 0")
  lam, u = np.maximum(lam[:out_dim], 0.0), u[:, :out_dim]
  sign = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(out_dim)])
  u = u * np.where(sign == 0, 1.0, sign)
  w = u / np.sqrt(lam + eps)
  return w, -mean @ w


def apply_pca_whitening(features: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """[..., D] -> [..., D*]: f W + b, computed in the features' dtype."""
  if features.shape[-1] != w.shape[0] or w.shape[1:] != b.shape:
    raise UserError(f"PCA layer W {tuple(w.shape)}, b {tuple(b.shape)} does not fit features "
                    f"of dim {features.shape[-1]}")
  dtype = features.dtype
  return features @ jnp.asarray(w, dtype) + jnp.asarray(b, dtype)


# ------------------------------------------------------------------------------------ wrappers
class Teacher(nn.Module):
  """Frozen backbone + pooling + PCA-whitening FC: [B, H, W, 3] -> [B, out_dim].

  The FC lives in the `pca` collection (W 'kernel' [D, D*], 'bias' [D*]). It starts as NaN so
  an unfitted teacher cannot silently give a constant target: fit it on
  `apply(..., whiten=False)` features (`fit_pca_whitening`) and set it with
  `with_pca_whitening`. The backbone always runs in inference mode.

  Attributes:
    backbone: a module called as backbone(images, train=False) -> [B, h, w, D].
    out_dim: D*.
    pool: training pooling, 'gap' or 'rmac'.
    rmac_levels: R-MAC levels.
  """
  backbone: nn.Module
  out_dim: int = 512
  pool: str = "gap"
  rmac_levels: Sequence[int] = (1, 2, 3)

  @nn.compact
  def __call__(self, images: jax.Array, *, whiten: bool = True,
               pool: str | None = None) -> jax.Array:
    f = pool_features(self.backbone(images, train=False), pool or self.pool, self.rmac_levels)
    d = f.shape[-1]
    kernel = self.variable("pca", "kernel", jnp.full, (d, self.out_dim), jnp.nan, jnp.float32)
    bias = self.variable("pca", "bias", jnp.full, (self.out_dim,), jnp.nan, jnp.float32)
    if not whiten:
      return f
    return apply_pca_whitening(f, kernel.value, bias.value)


def with_pca_whitening(variables: dict, w: np.ndarray, b: np.ndarray) -> dict:
  """Teacher variables with the `pca` collection replaced by a fitted (W, b) (float32)."""
  old = variables["pca"]
  if tuple(np.shape(w)) != tuple(old["kernel"].shape) or tuple(np.shape(b)) != tuple(
      old["bias"].shape):
    raise UserError(f"fitted PCA W {np.shape(w)}, b {np.shape(b)} does not match the teacher's "
                    f"FC {tuple(old['kernel'].shape)}, {tuple(old['bias'].shape)} (check "
                    f"out_dim and the pooling used for fitting)")
  pca = {"kernel": jnp.asarray(w, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}
  return {**variables, "pca": pca}


class Student(nn.Module):
  """Trainable backbone + pooling: [B, H, W, 3] -> [B, C] (C = out_dim of VGG16Student).

  Attributes:
    backbone: a module called as backbone(images, train=train) -> [B, h, w, C].
    pool: training pooling, 'gap' or 'rmac'.
    rmac_levels: R-MAC levels.
  """
  backbone: nn.Module
  pool: str = "gap"
  rmac_levels: Sequence[int] = (1, 2, 3)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, pool: str | None = None) -> jax.Array:
    return pool_features(self.backbone(images, train=train), pool or self.pool,
                         self.rmac_levels)


def check_feature_dims(teacher: Teacher, student: Student, image_size: int = 64) -> int:
  """Returns D* after checking (shapes only, nothing is computed) that both give [B, D*]."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)

  def out_dim(module, **kwargs):
    init = lambda x: module.init_with_output(jax.random.key(0), x, **kwargs)[0]
    return jax.eval_shape(init, x).shape[-1]

  dt, ds = out_dim(teacher), out_dim(student, train=False)
  if dt != ds:
    raise UserError(f"teacher features are {dt}-d (Teacher.out_dim) but the student's are "
                    f"{ds}-d (the student's out_dim): the cosine of eq. 5 needs equal dims")
  return dt
