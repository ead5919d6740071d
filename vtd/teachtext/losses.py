"""TeachText's training loss: L_r(S_s) + lambda * L_d + the within-modality terms.

Built from the loss primitives of `vtd/losses/` (ranking, distillation, relational,
within_modality); this module only decides which terms a model trains with, from
`config.loss`, `config.distill` and `config.within`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from vtd import config_lib
from vtd.losses import distillation, ranking, relational, within_modality
from vtd.teachtext import teachers as teachers_lib
from vtd.teachtext.models import RetrievalModel, similarity, stack_available

DISTILL_METHODS = ("teachtext", "rkd")


def _flat(parts: Sequence[jax.Array]) -> jax.Array:
  """Per-expert unit vectors [B, d_m] -> one [B, sum d_m] unit vector per row (for RKD)."""
  return jnp.concatenate(parts, axis=-1) / jnp.sqrt(len(parts))


def check_distill_config(distill_cfg: ml_collections.ConfigDict) -> None:
  """One-line errors for `config.distill` before anything is trained."""
  config_lib.check_choice(distill_cfg.method, DISTILL_METHODS, "distill.method")
  config_lib.check_choice(distill_cfg.rkd_on, ("text", "video", "both"), "distill.rkd_on")
  config_lib.check_choice(distill_cfg.teacher_mode, teachers_lib.MODES, "distill.teacher_mode")
  config_lib.check_choice(distill_cfg.aggregation, distillation.AGGREGATIONS,
                          "distill.aggregation")
  config_lib.check_choice(distill_cfg.criterion, distillation.CRITERIA, "distill.criterion")


def distillation_term(distill_cfg: ml_collections.ConfigDict, sims: jax.Array,
                      text: Sequence[jax.Array], video: Sequence[jax.Array],
                      embs: Sequence[teachers_lib.Embeddings]) -> jax.Array:
  """L_d of the student's batch towards the teachers' embeddings `embs`.

  TeachText (`method=teachtext`): criterion(S_s [B, B], Phi(S_1..S_N)). RKD (`rkd`): distance-
  and angle-wise relations of the student's joint-space embeddings towards each teacher's,
  averaged over teachers.
  """
  if distill_cfg.method == "teachtext":
    target = distillation.aggregate_teachers(jnp.stack([similarity(*e) for e in embs]),
                                             distill_cfg.aggregation)
    return distillation.similarity_distillation_loss(sims, target, distill_cfg.criterion,
                                                     temperature=distill_cfg.temperature)
  sides = {"text": [(_flat(text), _flat(e[0])) for e in embs],
           "video": [(_flat(video), _flat(e[2])) for e in embs]}
  on = ("text", "video") if distill_cfg.rkd_on == "both" else (distill_cfg.rkd_on,)
  return sum(relational.rkd_loss(s, t, distance_weight=distill_cfg.rkd_distance_weight,
                                 angle_weight=distill_cfg.rkd_angle_weight)[0]
             for side in on for s, t in sides[side]) / len(embs)


def within_modality_term(within_cfg: ml_collections.ConfigDict, sims, text, weights, video,
                         available) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Caption / video distillation of "From Within to Between" on the student's own S_tt and
  S_vv (weighted like S_tv); a term with weight 0 is not computed."""
  s_tt = (similarity(text, weights, text, available) if within_cfg.caption_weight > 0
          else None)
  s_vv = (similarity(video, weights, video, available) if within_cfg.video_weight > 0
          else None)
  return within_modality.within_modality_loss(
      sims, s_tt, s_vv, caption_weight=within_cfg.caption_weight,
      caption_temperature=within_cfg.caption_temperature,
      video_weight=within_cfg.video_weight, video_temperature=within_cfg.video_temperature,
      stop_gradient=within_cfg.stop_gradient)


def make_loss_fn(model: RetrievalModel, text_embedding: str,
                 loss_cfg: ml_collections.ConfigDict, *,
                 distill_cfg: ml_collections.ConfigDict | None = None,
                 distill_weight: float = 0.0,
                 teachers: tuple[teachers_lib.Teacher, ...] = (),
                 within_cfg: ml_collections.ConfigDict | None = None):
  """L_r(S_s) + lambda * L_d (`distillation_term`) + the within-modality terms, on the global
  batch. `distill_cfg` is needed when `distill_weight > 0`, `within_cfg` for the within terms.
  """
  use_within = within_cfg is not None and (within_cfg.caption_weight > 0
                                           or within_cfg.video_weight > 0)

  def loss_fn(params, batch_stats, batch, frozen, rng):
    del rng  # The models are deterministic (no dropout), as the official configs.
    (text, weights, video), updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["text"][text_embedding],
        batch["experts"], batch["available"], train=True, mutable=["batch_stats"])
    available = stack_available(batch["available"], model.expert_names)
    sims = similarity(text, weights, video, available)
    rank_loss = ranking.max_margin_ranking_loss(sims, loss_cfg.margin,
                                                fix_norm=loss_cfg.fix_norm)
    measurements = {"ranking_loss": rank_loss}
    loss = rank_loss
    if distill_weight > 0:
      embs = teachers_lib.teacher_embeddings(teachers, frozen, batch, distill_cfg.teacher_mode)
      distill_loss = distillation_term(distill_cfg, sims, text, video, embs)
      measurements["distill_loss"] = distill_loss
      loss = loss + distill_weight * distill_loss
    if use_within:
      within_loss, parts = within_modality_term(within_cfg, sims, text, weights, video,
                                                available)
      measurements.update(parts)
      loss = loss + within_loss
    return loss, (measurements, updates["batch_stats"])

  return loss_fn
