"""The UTS student's training loss: eq. 8 on a clean and an augmented view of each frame.

The terms (global consistency with the teacher, eqs. 4-5; intra-batch inconsistency over a
band of the sorted similarities, eqs. 6-7) are in `vtd/losses/uts.py`; this module builds the
loss function the shared loop (`vtd.train.fit`) differentiates.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vtd.data import augment
from vtd.losses import uts as uts_terms
from vtd.uts import weights


def make_loss_fn(student: nn.Module, loss_cfg: ml_collections.ConfigDict,
                 augment_cfg: augment.AugmentConfig, num_groups: int) -> Callable[..., Any]:
  """loss_fn(params, batch_stats, batch, frozen, rng) -> (loss, (terms, new batch_stats)).

  batch: "image" [B, H, W, 3] uint8 frames, "teacher" [B, D] the teacher's whitened features.
  The augmented view is drawn on device from the step's key `rng` (a resumed run replays it).
  num_groups: the band scope's groups ("per_device": the device count).
  """

  def loss_fn(params, batch_stats, batch, frozen, rng):
    del frozen
    clean = batch["image"].astype(jnp.float32) / 255.0
    augmented = augment.augment(rng, clean, augment_cfg)
    n = clean.shape[0]
    # One pass over both views: BatchNorm normalises them with shared batch statistics.
    both = weights.imagenet_normalize(jnp.concatenate([augmented, clean]))
    feats, updates = student.apply({"params": params, "batch_stats": batch_stats}, both,
                                   train=True, mutable=["batch_stats"])
    loss, terms = uts_terms.uts_loss(
        feats[:n], feats[n:], batch["teacher"], tuple(loss_cfg.lambdas), loss_cfg.alpha,
        loss_cfg.beta, loss_cfg.band_sort == "descending", band_scope=loss_cfg.band_scope,
        num_groups=num_groups)
    return loss, (terms, updates["batch_stats"])

  return loss_fn
