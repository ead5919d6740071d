"""Layers and constants shared by the methods' models.

Each method ports a public PyTorch or TensorFlow model, so the normalisation constants follow
the framework the weights come from; they live here once instead of once per model file.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch BatchNorm: running = 0.9 running + 0.1 batch (torch's momentum 0.1), eps 1e-5.
TORCH_BN_MOMENTUM = 0.9
TORCH_BN_EPS = 1e-5
# tf.layers.batch_normalization defaults: momentum 0.99, epsilon 1e-3.
TF_BN_MOMENTUM = 0.99
TF_BN_EPS = 1e-3
L2_EPS = 1e-12  # torch.nn.functional.normalize's eps.


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = L2_EPS) -> jax.Array:
  """x / max(||x||, eps) along `axis` (torch semantics), with a finite gradient at x = 0."""
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def torch_batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's constants (batch statistics when training)."""
  return nn.BatchNorm(use_running_average=not train, momentum=TORCH_BN_MOMENTUM,
                      epsilon=TORCH_BN_EPS, name=name)
