"""Student networks (module A) and EvalSeg-Net (module C, generation 2) as linen modules.

Students map an RGB image [B, H, W, 3] in [0, 1] to a soft foreground mask [B, h, w, 1]
regressing the teacher's soft mask (`shared/reference/segmentation.md` §2):

  name          class        default input  output           params (derived, reference)
  lowres_net    LowResNet    128 x 128      32 x 32 (H/4)    78,087,232  (78.1 M, §2.1)
  fconv         FConv        128 x 128      128 x 128 (H)    10,977,409  (not in code, §8 #7)
  basic_unet    BasicUNet    256 x 256      256 x 256 (H)    34,600,353  (34.6 M, §2.2)
  dilate_unet   DilateUNet   256 x 256      256 x 256 (H)    32,234,913  (32.2 M, §2.3)
  dense_unet    DenseUNet    256 x 256      256 x 256 (H)     3,184,581  (3.2 M, §2.4)

EvalSeg-Net maps (image [B, H, W, 3], candidate soft mask [B, H, W(, 1)] in [0, 1]) at
128 x 128 to a score [B] regressing cos(candidate, Multi-Net mask): 44,535,105 params (§3.2).
Counts are trainable parameters (BatchNorm scale and bias included, running stats not).
Widths, depth and head are attributes; `output_size(input_hw)` gives each student's output
resolution so the pipeline can resize targets. Losses live in `vtd/segmentation/losses.py`.

Public-code quirks (§2, §7) -> decision -> why:
* U-Nets ignore the gradient / hue inputs (§7.1) -> faithful by default (RGB only); the
  `use_grad_hue` knob (§8 #10) feeds the 6-channel LowRes input instead.
* DilateU-Net's dilated centre is `trainable=False`, no bias, no BN (§7.2) -> faithful by
  default (`trainable_center=False`, §8 #10): the kernels go through `stop_gradient`, so their
  gradients are exactly 0 and Adam never moves them. A decoupled weight decay would still
  shrink them: mask the `dilated*` params out of it if weight decay is ever enabled.
* Dilations 8, 16, 32 on an 8 x 8 map see only zero padding off-centre (§2.3 quirk 2) ->
  faithful: that is what the architecture computes at 256 x 256; nothing to fix in the model.
* Weight decay defined but never applied (§7.3) -> faithful: the modules carry no
  regulariser; the optimiser config keeps weight_decay = 0.
* Heads end in ReLU with targets in 0-255 (§7.4) -> faithful by default (`head="relu"`); the
  target units are the pipeline's choice (MSE is scale-equivariant). `head="sigmoid"` gives
  probabilities in [0, 1], `head="linear"` logits for the "bce" loss (both not from the paper).
* LowRes FC unbounded above, inference clips at 255 (§7.5) and `imresize` min-max normalises
  (§7.6) -> faithful: the forward pass never clips; clipping / min-max belong to the Multi-Net
  and evaluation normalisation knobs (§8 #11, #20), not to the model.
* `import evalSeg-Net` syntax error (§7.7) -> fixed by construction (EvalSegNet is a class).
* MATLAB +1 background-histogram smoothing (§7.8) -> VideoPCA's business (`bg_laplace` in
  `videopca.py`), not a model quirk.
* EvalSeg-Net's linear FC-1 regressing (most likely) 100 x cos (§3.2, §8 #12) -> changed by
  default: `head="sigmoid"` regresses cos itself in [0, 1] (threshold 0.8 <=> the README's 80);
  `head="linear"` restores the code's head, to be trained on `label_scale x cos` labels.
* Dense block output excludes the block input (§2.4) -> faithful.
* Every U-Net conv has a bias before its BatchNorm (tf.layers defaults, §2.2) -> faithful (it
  is in the reference counts); with batch statistics the mean subtraction cancels it, so its
  training gradient is ~0 and it only shifts the running mean.
* Initialisation -> faithful: LowRes / FConv convs and FC truncated normal sigma 0.05 (FC bias
  0.1), U-Net / EvalSeg convs and FCs Glorot-uniform with zero bias (tf.layers defaults),
  dilated centre truncated normal 0.05. FConv's 1 x 1 score conv reuses the init of the FC it
  replaces (truncated normal 0.05, bias 0.1; not from the paper). BatchNorm: TF defaults,
  momentum 0.99, epsilon 1e-3.
* Pretrained weights (Google Drive, §3.2) -> not used: vtd trains every network from scratch;
  loading published weights is left to a later issue.

Other choices: FConv is the §8 #7 default (LowRes trunk, conv1x1-1 at H/4, bilinear to H x W,
head). U-Net decoders upsample nearest x2 (exact `repeat`) and crop to the skip's size, so any
input size works (`SAME` pooling rounds up). LowRes-Net's gradient / hue inputs are computed in
the model from the RGB input (the public code computes them in its input pipeline).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vtd import layers
from vtd.segmentation.videopca import rgb_to_hsv

_TRUNC_NORMAL = nn.initializers.truncated_normal(0.05)  # TF's sigma: of the untruncated normal.
_GLOROT = nn.initializers.glorot_uniform()               # tf.layers.conv2d / dense default.
_ZEROS = nn.initializers.zeros
_GRAY = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale weights.
HEADS = ("relu", "sigmoid", "linear")


def _apply_head(x: jax.Array, head: str) -> jax.Array:
  if head == "relu":
    return nn.relu(x)
  if head == "sigmoid":
    return nn.sigmoid(x)
  if head == "linear":
    return x
  raise ValueError(f"head must be one of {HEADS}, got {head!r}")


def image_gradients(images: jax.Array) -> jax.Array:
  """`np.gradient` of the grayscale image along rows then columns (LowRes "differences").

  Args:
    images: [B, H, W, 3] RGB in [0, 1], H, W >= 2.

  Returns:
    [B, H, W, 2]: central differences inside, one-sided at the borders (edge_order 1).
  """
  gray = images @ jnp.asarray(_GRAY, images.dtype)
  return jnp.stack([jnp.gradient(gray, axis=1), jnp.gradient(gray, axis=2)], axis=-1)


def lowres_streams(images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The three LowRes-Net inputs: RGB [B, H, W, 3], gradients [.., 2], hue [.., 1]."""
  # MATLAB and TF rgb_to_hsv differ only in tie-breaking, where the branches agree in value.
  return images, image_gradients(images), rgb_to_hsv(images)[..., :1]


def _conv(features: int, kernel: int, name: str | None = None, *, init=_GLOROT,
          use_bias: bool = True) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), padding="SAME", use_bias=use_bias,
                 kernel_init=init, bias_init=_ZEROS, name=name)


def _pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


def _upsample_to(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Nearest-neighbour x2 (= tf.image.resize_nearest_neighbor to 2h), cropped to `hw`."""
  x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x[:, :hw[0], :hw[1]]


def _conv_bn_relu(x: jax.Array, features: int, train: bool, kernel: int = 3) -> jax.Array:
  """tf.layers.conv2d (bias, Glorot) -> batch_normalization(training=train) -> ReLU."""
  x = _conv(features, kernel)(x)
  x = nn.BatchNorm(use_running_average=not train, momentum=layers.TF_BN_MOMENTUM, epsilon=layers.TF_BN_EPS)(x)
  return nn.relu(x)


def _unet_input(images: jax.Array, use_grad_hue: bool) -> jax.Array:
  if not use_grad_hue:
    return images
  return jnp.concatenate(lowres_streams(images), axis=-1)


def _same_size(input_hw: Sequence[int]) -> tuple[int, int]:
  return int(input_hw[0]), int(input_hw[1])


class StreamTrunk(nn.Module):
  """LowRes-Net / FConv / EvalSeg-Net trunk: streams [B, H, W, c_i] -> [B, H/4, W/4, bottleneck].

  Per stream conv3x3 -> conv5x5 -> pool; concat; conv3x3 -> conv5x5 -> pool; conv3x3 -> conv5x5
  -> conv5x5-`bottleneck`. Every conv: stride 1, SAME, bias, ReLU; pools 2x2/2 SAME.

  Attributes:
    features: width of every conv but the last (256).
    bottleneck: width of the last conv (64).
    init: "truncated_normal" (sigma 0.05, LowRes-Net) or "glorot" (EvalSeg-Net).
  """
  features: int = 256
  bottleneck: int = 64
  init: str = "truncated_normal"

  @nn.compact
  def __call__(self, streams: Sequence[jax.Array]) -> jax.Array:
    if self.init not in ("truncated_normal", "glorot"):
      raise ValueError(f"init must be 'truncated_normal' or 'glorot', got {self.init!r}")
    init = _TRUNC_NORMAL if self.init == "truncated_normal" else _GLOROT
    f = self.features

    def conv(x, features, kernel, name):
      return nn.relu(_conv(features, kernel, name, init=init)(x))

    outs = []
    for i, s in enumerate(streams):
      s = conv(conv(s, f, 3, f"stream{i}_conv1"), f, 5, f"stream{i}_conv2")
      outs.append(_pool(s))
    x = jnp.concatenate(outs, axis=-1)
    x = _pool(conv(conv(x, f, 3, "conv2_1"), f, 5, "conv2_2"))
    x = conv(conv(x, f, 3, "conv3_1"), f, 5, "conv3_2")
    return conv(x, self.bottleneck, 5, "conv3_3")


class LowResNet(nn.Module):
  """ICCV'17 student (§2.1): three streams, 7 convs, 2 pools, FC to a low-resolution mask.

  Attributes:
    features: trunk width (256).
    bottleneck: width of conv3_3 (64); the FC has (H/4)(W/4) * bottleneck inputs.
    head: "relu" (public code), "sigmoid" or "linear".
  """
  features: int = 256
  bottleneck: int = 64
  head: str = "relu"
  DEFAULT_INPUT_SIZE = (128, 128)

  @staticmethod
  def output_size(input_hw: Sequence[int]) -> tuple[int, int]:
    """Two SAME 2x2 pools: (ceil(H/4), ceil(W/4)); 128 -> 32."""
    return -(-int(input_hw[0]) // 4), -(-int(input_hw[1]) // 4)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, 3] in [0, 1] -> [B, ceil(H/4), ceil(W/4), 1]. No BN / dropout: `train` unused.

    The FC's output size is fixed by the input size seen at `init`.
    """
    del train
    b = images.shape[0]
    h, w = self.output_size(images.shape[1:3])
    x = StreamTrunk(self.features, self.bottleneck, "truncated_normal",
                    name="trunk")(lowres_streams(images))
    x = nn.Dense(h * w, kernel_init=_TRUNC_NORMAL, bias_init=nn.initializers.constant(0.1),
                 name="fc1")(x.reshape(b, -1))
    return _apply_head(x, self.head).reshape(b, h, w, 1)  # row-major, as tf.reshape


class FConv(nn.Module):
  """Fully convolutional student (§2.6, §8 #7; not in the public code, architecture inferred).

  LowRes-Net trunk, the FC replaced by conv1x1-1 at H/4, bilinear upsampling to H x W, head.

  Attributes:
    features: trunk width (256).
    bottleneck: width of conv3_3 (64).
    head: "relu" (as the other students), "sigmoid" or "linear".
  """
  features: int = 256
  bottleneck: int = 64
  head: str = "relu"
  DEFAULT_INPUT_SIZE = (128, 128)

  @staticmethod
  def output_size(input_hw: Sequence[int]) -> tuple[int, int]:
    return _same_size(input_hw)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, 3] in [0, 1] -> [B, H, W, 1]. No BN / dropout: `train` unused."""
    del train
    b, h, w, _ = images.shape
    x = StreamTrunk(self.features, self.bottleneck, "truncated_normal",
                    name="trunk")(lowres_streams(images))
    # The FC's init (truncated normal, bias 0.1): the positive bias keeps the ReLU head alive
    # at initialisation, as it does for LowRes-Net.
    x = nn.Conv(1, (1, 1), kernel_init=_TRUNC_NORMAL, bias_init=nn.initializers.constant(0.1),
                name="score")(x)
    # Upsample the score before the head, so "linear" stays a logit map and "relu" is >= 0.
    x = jax.image.resize(x, (b, h, w, 1), method="bilinear")
    return _apply_head(x, self.head)


class BasicUNet(nn.Module):
  """BasicU-Net (§2.2): conv-BN-ReLU U-Net, 2 convs per encoder level, 3 per decoder level.

  Attributes:
    features: encoder widths, one level per entry, each followed by a 2x2 pool
      ((32, 64, 128, 256, 512): 256 -> 8 at the centre).
    center_features: width of the two centre convs (1024).
    head: "relu" (public code), "sigmoid" or "linear".
    use_grad_hue: also feed the gradient and hue channels (6 input channels). The public
      code computes them but feeds RGB only (§7.1); not from the paper.
  """
  features: Sequence[int] = (32, 64, 128, 256, 512)
  center_features: int = 1024
  head: str = "relu"
  use_grad_hue: bool = False
  DEFAULT_INPUT_SIZE = (256, 256)

  @staticmethod
  def output_size(input_hw: Sequence[int]) -> tuple[int, int]:
    return _same_size(input_hw)

  def center(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, h, w, features[-1]] pooled encoder output -> centre features."""
    x = _conv_bn_relu(x, self.center_features, train)
    return _conv_bn_relu(x, self.center_features, train)

  def decoder_block(self, x: jax.Array, features: int, train: bool) -> jax.Array:
    for _ in range(3):
      x = _conv_bn_relu(x, features, train)
    return x

  def encoder_block(self, x: jax.Array, features: int, train: bool) -> jax.Array:
    return _conv_bn_relu(_conv_bn_relu(x, features, train), features, train)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, 3] in [0, 1] -> [B, H, W, 1]; `train` switches BatchNorm to batch stats."""
    x = _unet_input(images, self.use_grad_hue)
    skips = []
    for f in self.features:
      x = self.encoder_block(x, f, train)
      skips.append(x)
      x = _pool(x)
    x = self.center(x, train)
    for f, skip in zip(reversed(self.features), reversed(skips)):
      x = jnp.concatenate([skip, _upsample_to(x, skip.shape[1:3])], axis=-1)
      x = self.decoder_block(x, f, train)
    return _apply_head(_conv(1, 1, "score")(x), self.head)


class DilatedConv(nn.Module):
  """3x3 dilated conv without bias (DilateU-Net centre); frozen unless `trainable`."""
  features: int
  dilation: int
  trainable: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", _TRUNC_NORMAL, (3, 3, x.shape[-1], self.features))
    if not self.trainable:
      # TF `trainable=False`: the kernel stays at its random init. Gradients still flow
      # through the block to the encoder; only the kernel's own gradient is zero.
      kernel = jax.lax.stop_gradient(kernel)
    d = self.dilation
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), "SAME",
                                        rhs_dilation=(d, d),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class DilateUNet(BasicUNet):
  """DilateU-Net (§2.3): BasicU-Net with the 1024 centre replaced by dilated convs.

  The centre is `len(dilations)` 3x3 convs features[-1] -> features[-1] with dilations
  1, 2, 4, 8, 16, 32, each followed by ReLU; no bias, no BatchNorm.

  Attributes (besides BasicU-Net's; `center_features` is unused):
    dilations: dilation of each centre conv.
    trainable_center: False reproduces the public code's frozen random centre (§7.2).
  """
  dilations: Sequence[int] = (1, 2, 4, 8, 16, 32)
  trainable_center: bool = False

  def center(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    for i, d in enumerate(self.dilations):
      x = nn.relu(DilatedConv(x.shape[-1], d, self.trainable_center, name=f"dilated{i}")(x))
    return x


class DenseUNet(nn.Module):
  """DenseU-Net (§2.4): U-Net of dense blocks and 1x1 transitions, all conv-BN-ReLU.

  Dense block(k): `block_layers` x conv3x3-k; layer j takes concat(layers 1..j-1) (layer 1 the
  block input) and the block outputs concat(all layers) -- the block input is not included.
  Transition: conv1x1-C. Decoder level: nearest x2, concat the encoder transition at that
  resolution, dense block, transition.

  Attributes:
    growth_rates: k of each encoder level, mirrored by the decoder ((12, 24, 48, 64)).
    transition_features: C of each encoder level, mirrored by the decoder ((32, 64, 128, 256)).
    center_growth: k of the centre block (128).
    center_transition: C of the centre transition (512).
    block_layers: conv layers per dense block (4).
    head: "relu" (public code), "sigmoid" or "linear".
    use_grad_hue: as BasicUNet.
  """
  growth_rates: Sequence[int] = (12, 24, 48, 64)
  transition_features: Sequence[int] = (32, 64, 128, 256)
  center_growth: int = 128
  center_transition: int = 512
  block_layers: int = 4
  head: str = "relu"
  use_grad_hue: bool = False
  DEFAULT_INPUT_SIZE = (256, 256)

  @staticmethod
  def output_size(input_hw: Sequence[int]) -> tuple[int, int]:
    return _same_size(input_hw)

  def dense_level(self, x: jax.Array, growth: int, features: int, train: bool) -> jax.Array:
    """Dense block then transition."""
    layers = []
    for _ in range(self.block_layers):
      layers.append(_conv_bn_relu(x, growth, train))
      x = jnp.concatenate(layers, axis=-1)
    return _conv_bn_relu(x, features, train, kernel=1)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, 3] in [0, 1] -> [B, H, W, 1]; `train` switches BatchNorm to batch stats."""
    if len(self.growth_rates) != len(self.transition_features):
      raise ValueError("growth_rates and transition_features must have the same length")
    x = _unet_input(images, self.use_grad_hue)
    levels = list(zip(self.growth_rates, self.transition_features))
    skips = []
    for k, c in levels:
      x = self.dense_level(x, k, c, train)
      skips.append(x)
      x = _pool(x)
    x = self.dense_level(x, self.center_growth, self.center_transition, train)
    for (k, c), skip in zip(reversed(levels), reversed(skips)):
      x = jnp.concatenate([skip, _upsample_to(x, skip.shape[1:3])], axis=-1)
      x = self.dense_level(x, k, c, train)
    return _apply_head(_conv(1, 1, "score")(x), self.head)


class EvalSegNet(nn.Module):
  """EvalSeg-Net (§3.2): (image, candidate soft mask) -> predicted mask quality.

  Three streams (RGB, mask, HSV of the image) through the LowRes-style trunk with Glorot init,
  then flatten -> FC-hidden + ReLU -> FC-1 -> head.

  Attributes:
    features: trunk width (256).
    bottleneck: width of conv3_3 (64).
    hidden: width of the first FC (512).
    head: "sigmoid" (vtd default: regress cos in [0, 1]) or "linear" (public code's FC-1,
      trained on label_scale x cos).
  """
  features: int = 256
  bottleneck: int = 64
  hidden: int = 512
  head: str = "sigmoid"
  DEFAULT_INPUT_SIZE = (128, 128)

  @nn.compact
  def __call__(self, images: jax.Array, masks: jax.Array, *, train: bool) -> jax.Array:
    """Score candidate masks.

    Args:
      images: [B, H, W, 3] RGB in [0, 1].
      masks: [B, H, W] or [B, H, W, 1] candidate soft masks in [0, 1].
      train: unused (no BN / dropout).

    Returns:
      [B] scores; in [0, 1] with the default sigmoid head.
    """
    del train
    if self.head not in ("sigmoid", "linear"):
      raise ValueError(f"EvalSegNet head must be 'sigmoid' or 'linear', got {self.head!r}")
    if masks.ndim == 3:
      masks = masks[..., None]
    masks = masks.astype(images.dtype)
    x = StreamTrunk(self.features, self.bottleneck, "glorot",
                    name="trunk")((images, masks, rgb_to_hsv(images)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, kernel_init=_GLOROT, name="fc1")(x))
    x = nn.Dense(1, kernel_init=_GLOROT, name="fc2")(x)
    return _apply_head(x[:, 0], self.head)


STUDENTS: dict[str, type[nn.Module]] = {
    "lowres_net": LowResNet,
    "fconv": FConv,
    "basic_unet": BasicUNet,
    "dilate_unet": DilateUNet,
    "dense_unet": DenseUNet,
}


def build_student(name: str, **kwargs) -> nn.Module:
  """Student by registry name; kwargs are the class's attributes (e.g. head, widths)."""
  if name not in STUDENTS:
    raise ValueError(f"unknown student {name!r}; valid names: {sorted(STUDENTS)}")
  return STUDENTS[name](**kwargs)
