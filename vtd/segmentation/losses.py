"""Losses of the segmentation students and of EvalSeg-Net (`shared/reference/segmentation.md`).

* Students (§2.5): plain MSE, `reduce_mean((pred - target)^2)` over every pixel and the batch,
  on the head's output (ReLU in the public code) with targets in the pipeline's units (0-255
  in the public code). No cross-entropy, no sigmoid, no weight decay (it is defined in the
  code but never added to the loss, §7.3).
* Alternative, not from the paper: "bce", sigmoid cross-entropy on logits (a student with
  `head="linear"`) against targets in [0, 1].
* EvalSeg-Net (§3.2): MSE between the predicted score and the label (cos or label_scale x cos).

Optional per-example `weights` [B] (e.g. 0 for padding examples of a fixed-size batch) give
sum_b w_b L_b / sum_b w_b, with L_b the example's mean loss; all-ones weights give the plain
mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_LOSSES = ("mse", "bce")


def _weighted_mean(per_example: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.mean(per_example)
  weights = jnp.asarray(weights, per_example.dtype).reshape(per_example.shape)
  return jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), 1e-12)


def _match(pred: jax.Array, target: jax.Array) -> jax.Array:
  target = jnp.asarray(target, pred.dtype)
  if target.shape != pred.shape:
    if target.size != pred.size:
      raise ValueError(f"target shape {target.shape} does not match prediction {pred.shape}; "
                       "resize targets to the student's output_size(input_hw)")
    target = target.reshape(pred.shape)  # e.g. [B, h, w] targets for [B, h, w, 1] outputs
  return target


def mask_loss(pred: jax.Array, target: jax.Array, kind: str = "mse",
              weights: jax.Array | None = None) -> jax.Array:
  """Student loss between predicted and teacher soft masks.

  Args:
    pred: [B, h, w, 1] student output (head output for "mse", logits for "bce").
    target: [B, h, w, 1] or [B, h, w] teacher masks at the student's output resolution.
    kind: "mse" (the reference) or "bce" (targets in [0, 1]; not from the paper).
    weights: optional [B] per-example weights.

  Returns:
    Scalar loss.
  """
  target = _match(pred, target)
  if kind == "mse":
    per_pixel = jnp.square(pred - target)
  elif kind == "bce":
    # Stable sigmoid cross-entropy: max(x, 0) - x z + log(1 + exp(-|x|)).
    per_pixel = jnp.maximum(pred, 0) - pred * target + jnp.log1p(jnp.exp(-jnp.abs(pred)))
  else:
    raise ValueError(f"mask loss kind must be one of {MASK_LOSSES}, got {kind!r}")
  return _weighted_mean(per_pixel.reshape(pred.shape[0], -1).mean(axis=1), weights)


def evalseg_loss(pred: jax.Array, target: jax.Array,
                 weights: jax.Array | None = None) -> jax.Array:
  """EvalSeg-Net MSE between predicted scores [B] and labels [B] (or [B, 1])."""
  pred = pred.reshape(pred.shape[0])
  target = _match(pred, target)
  return _weighted_mean(jnp.square(pred - target), weights)
