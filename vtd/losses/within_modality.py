"""Within-modality distillation ("From Within to Between"; Tran, Balasubramanian, Hoai, ACCV 2022).

The model's own within-modal similarities teach its cross-modal ones. Reproduces the official
code, tqvinhcs/CrossKD (`model/loss.py::RankDistilLoss`, `trainer/trainer.py`,
`model/model.py::sharded_cross_view_inner_product`):

  KD_tau(X, Y) = sum_i KL(softmax(Y_i / tau) || softmax(X_i / tau)) / B
               = F.kl_div(log_softmax(X / tau), softmax(Y / tau), reduction='batchmean'),
  L_cap = KD_{tau_c}(S_tv, S_tt),   L_vid = KD_{tau_v}(S_tv^T, S_vv),
  L = cap_w L_cap + vid_w L_vid   (added to the ranking loss, and to TeachText's L_d for TT-).

S_tv [B, B] is the cross-modal matrix (rows captions, columns videos, positives on the
diagonal), S_tt caption-caption and S_vv video-video. Softmaxes run along rows over all B
columns, the diagonal included; no tau^2 factor. Released configs: cap_w 1.0, cap_t 5.0,
vid_w 0.0, vid_t 5.0 (CE+) / 1.0 (TT-CE+).

Decisions:
* Gradients: the official code does NOT detach S_tt / S_vv -- both come from the trained model's
  forward pass and flow through both arguments of the KL. `stop_gradient=False` (default)
  reproduces that; `stop_gradient=True` treats them as constant targets (a variant).
* A term whose weight is a Python 0 is not computed and reported as 0 (official: `if w > 0`);
  its matrix may then be None. A traced weight is always computed, so `jit` works either way.
* Computed in float32; KL uses log_softmax for both sides, so an underflowing target
  probability gives 0 * finite = 0 (torch's kl_div: 0 where target = 0), never NaN.
* S_tt / S_vv for multi-expert (MoEE/CE) models: the official code weights each expert's
  within-modal inner products exactly as the cross-modal ones, with caption i's MoE weights and
  the availability of the COLUMN's video j:
    S_tt[i, j] = sum_e w'_{ij,e} <t_ie, t_je>,  S_vv[i, j] = sum_e w'_{ij,e} <v_ie, v_je>,
    w'_{ij,e} = w_e(t_i) a_e(v_j) / sum_e' w_e'(t_i) a_e'(v_j).
  That is `vtd.teachtext.models.similarity` with the same modality on both sides:
    s_tt = similarity(text, weights, text, available)
    s_vv = similarity(video, weights, video, available)
  (tested in tests/losses/test_within_modality.py), so no separate helper. Differences from the
  official function: a video with no available expert gets 0 instead of 0/0 = NaN; only one
  caption per video (B captions, B videos) is meant -- the official code weights the
  within-modal products only in that case, and its caption averaging cannot reshape S_tt
  otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def kd_loss(x: jax.Array, y: jax.Array, temperature: float, *,
            stop_gradient: bool = False) -> jax.Array:
  """KD_tau(X, Y): row-wise KL(softmax(Y / tau) || softmax(X / tau)), summed, divided by B.

  Args:
    x: [B, K] student logits (a cross-modal similarity matrix).
    y: [B, K] target logits (a within-modal similarity matrix).
    temperature: tau.
    stop_gradient: treat y as a constant (default False, as the official code).

  Returns:
    Scalar, torch's kl_div(log_softmax(x/tau), softmax(y/tau), reduction='batchmean').
  """
  if x.ndim != 2 or x.shape != y.shape:
    raise ValueError(f"KD needs equal [B, K] matrices, got {tuple(x.shape)} and "
                     f"{tuple(y.shape)}")
  if stop_gradient:
    y = jax.lax.stop_gradient(y)
  log_q = jax.nn.log_softmax(x.astype(jnp.float32) / temperature, axis=-1)
  log_p = jax.nn.log_softmax(y.astype(jnp.float32) / temperature, axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q)) / x.shape[0]


def _is_zero(w) -> bool:
  # Only a concrete Python/NumPy zero is skipped; a traced weight is always computed.
  return isinstance(w, (int, float)) and w == 0


def within_modality_loss(s_tv: jax.Array, s_tt: jax.Array | None, s_vv: jax.Array | None, *,
                         caption_weight: float = 1.0, caption_temperature: float = 5.0,
                         video_weight: float = 0.0, video_temperature: float = 5.0,
                         stop_gradient: bool = False
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """cap_w KD_{tau_c}(S_tv, S_tt) + vid_w KD_{tau_v}(S_tv^T, S_vv).

  Args:
    s_tv: [B, B] cross-modal similarities, rows captions, columns videos.
    s_tt: [B, B] caption-caption similarities (None allowed when caption_weight is 0).
    s_vv: [B, B] video-video similarities (None allowed when video_weight is 0).
    caption_weight, caption_temperature: cap_w, cap_t (released: 1.0, 5.0).
    video_weight, video_temperature: vid_w, vid_t (released: 0.0; 5.0 CE+, 1.0 TT-CE+).
    stop_gradient: detach s_tt / s_vv (default False: gradients flow into them, as official).

  Returns:
    (loss, terms): terms 'caption_distill' = L_cap and 'video_distill' = L_vid, unweighted
    (0 for a term with a Python-0 weight).
  """
  if s_tv.ndim != 2 or s_tv.shape[0] != s_tv.shape[1]:
    raise ValueError(f"s_tv must be square [B, B], got {tuple(s_tv.shape)}")
  zero = jnp.zeros((), jnp.float32)
  terms = {"caption_distill": zero, "video_distill": zero}
  if not _is_zero(caption_weight):
    if s_tt is None:
      raise ValueError("caption distillation (caption_weight != 0) needs s_tt")
    terms["caption_distill"] = kd_loss(s_tv, s_tt, caption_temperature,
                                       stop_gradient=stop_gradient)
  if not _is_zero(video_weight):
    if s_vv is None:
      raise ValueError("video distillation (video_weight != 0) needs s_vv")
    terms["video_distill"] = kd_loss(s_tv.T, s_vv, video_temperature,
                                     stop_gradient=stop_gradient)
  loss = caption_weight * terms["caption_distill"] + video_weight * terms["video_distill"]
  return loss, terms
