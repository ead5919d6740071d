"""Within-modality distillation (vtd/losses/within_modality.py), CrossKD semantics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtd.losses import within_modality as wm
from vtd.teachtext.models import similarity


def _rand(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _kl_div_batchmean(x, y, tau):
  """torch F.kl_div(log_softmax(x / tau), softmax(y / tau), reduction='batchmean'), float64."""
  x, y = np.asarray(x, np.float64) / tau, np.asarray(y, np.float64) / tau
  log_q = x - x.max(1, keepdims=True)
  log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
  p = np.exp(y - y.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  pointwise = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - log_q), 0.0)  # xlogy
  return pointwise.sum() / x.shape[0]


# Hand case: X = I, Y = 0, tau = 1. Every row: p = (1/2, 1/2), q = (e, 1)/(1 + e) in some order,
# KL = log(1/2) - (1/2)(log q_1 + log q_2) = log(1 + e) - 1/2 - log 2, the same for both rows,
# and batchmean = (2 KL) / 2.
HAND_KL = math.log(1 + math.e) - 0.5 - math.log(2)


def test_hand_computed_2x2():
  x, y = jnp.eye(2), jnp.zeros((2, 2))
  np.testing.assert_allclose(wm.kd_loss(x, y, 1.0), HAND_KL, rtol=1e-6)
  # tau = 2 halves the logits: q = (e^.5, 1)/(1 + e^.5).
  np.testing.assert_allclose(wm.kd_loss(x, y, 2.0),
                             math.log(1 + math.exp(0.5)) - 0.25 - math.log(2), rtol=1e-6)
  # Target = student: 0.
  np.testing.assert_allclose(wm.kd_loss(x, x, 1.0), 0.0, atol=1e-7)
  loss, terms = wm.within_modality_loss(x, y, y, caption_weight=0.5, caption_temperature=1.0,
                                        video_weight=2.0, video_temperature=1.0)
  np.testing.assert_allclose(terms["caption_distill"], HAND_KL, rtol=1e-6)
  np.testing.assert_allclose(terms["video_distill"], HAND_KL, rtol=1e-6)  # I^T = I.
  np.testing.assert_allclose(loss, 2.5 * HAND_KL, rtol=1e-6)


def test_matches_torch_kl_div_batchmean_and_directions():
  s_tv, s_tt, s_vv = _rand(6, 6, seed=1) * 3, _rand(6, 6, seed=2) * 3, _rand(6, 6, seed=3) * 3
  loss, terms = jax.jit(lambda a, b, c: wm.within_modality_loss(
      a, b, c, caption_weight=1.0, caption_temperature=5.0, video_weight=0.7,
      video_temperature=1.0))(s_tv, s_tt, s_vv)
  cap = _kl_div_batchmean(s_tv, s_tt, 5.0)
  vid = _kl_div_batchmean(s_tv.T, s_vv, 1.0)  # Video rows: the transpose of S_tv.
  np.testing.assert_allclose(terms["caption_distill"], cap, rtol=1e-5)
  np.testing.assert_allclose(terms["video_distill"], vid, rtol=1e-5)
  np.testing.assert_allclose(loss, cap + 0.7 * vid, rtol=1e-5)
  assert not np.isclose(vid, _kl_div_batchmean(s_tv, s_vv, 1.0))  # S_tv is not symmetric.
  # Extreme logits: target probabilities underflow to 0 and contribute 0 (no NaN).
  big = np.asarray([[0.0, -1e4], [3.0, 1.0]], np.float32)
  np.testing.assert_allclose(wm.kd_loss(jnp.asarray(_rand(2, 2)), big, 1.0),
                             _kl_div_batchmean(_rand(2, 2), big, 1.0), rtol=1e-5)


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_gradient_into_within_modal_matrices(stop_gradient):
  s_tv, s_tt, s_vv = _rand(5, 5, seed=4), _rand(5, 5, seed=5), _rand(5, 5, seed=6)
  f = lambda a, b, c: wm.within_modality_loss(a, b, c, video_weight=1.0,
                                              stop_gradient=stop_gradient)[0]
  g_tv, g_tt, g_vv = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(s_tv, s_tt, s_vv)
  assert np.abs(np.asarray(g_tv)).sum() > 0
  for g in (g_tt, g_vv):
    assert (np.abs(np.asarray(g)).sum() == 0) == stop_gradient


def test_zero_weight_gives_zero_and_jit():
  s = jnp.asarray(_rand(4, 4, seed=7))
  loss, terms = wm.within_modality_loss(s, s + 1, None, caption_weight=0.0, video_weight=0.0)
  assert float(loss) == 0.0 and all(float(v) == 0.0 for v in terms.values())
  # Default: video distillation off, s_vv unused (may be None); caption term alone.
  loss, terms = wm.within_modality_loss(s, 2 * s, None)
  assert float(terms["video_distill"]) == 0.0
  np.testing.assert_allclose(loss, wm.kd_loss(s, 2 * s, 5.0), rtol=1e-6)
  # Traced weights are always computed, so a traced 0 weighs a finite term.
  f = jax.jit(lambda s, w_c, w_v: wm.within_modality_loss(
      s, 2 * s, s.T, caption_weight=w_c, video_weight=w_v))
  loss, terms = f(s, 0.0, 0.0)
  assert float(loss) == 0.0 and np.isfinite(float(terms["video_distill"]))
  g = jax.grad(lambda s: f(s, 0.0, 0.0)[0])(s)
  assert np.all(np.asarray(g) == 0)
  with pytest.raises(ValueError, match="needs s_vv"):
    wm.within_modality_loss(s, s, None, video_weight=1.0)
  with pytest.raises(ValueError, match="square"):
    wm.within_modality_loss(jnp.zeros((2, 3)), None, None)


def test_gradient_descent_on_free_cross_modal_matrix_decreases_loss():
  s_tt, s_vv = jnp.asarray(_rand(6, 6, seed=8)) * 4, jnp.asarray(_rand(6, 6, seed=9)) * 4
  f = lambda s: wm.within_modality_loss(s, s_tt, s_vv, video_weight=1.0,
                                        caption_temperature=1.0, video_temperature=1.0)[0]
  step = jax.jit(lambda s: s - 1.0 * jax.grad(f)(s))
  s = jnp.zeros((6, 6))
  losses = [float(f(s))]
  for _ in range(5):
    s = step(s)
    losses.append(float(f(s)))
  assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_moe_similarity_with_one_modality_is_official_within_modal_matrix():
  """similarity(text, w, text, a) / (video, w, video, a) = sharded_cross_view_inner_product's
  text_sims / vid_sims (one caption per video): caption i's MoE weights, video j's experts."""
  b, dims = 5, (3, 4, 2)
  rng = np.random.default_rng(10)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  text = [unit(rng.normal(size=(b, d))).astype(np.float32) for d in dims]
  video = [unit(rng.normal(size=(b, d))).astype(np.float32) for d in dims]
  w = rng.uniform(0.1, 1.0, size=(b, len(dims)))
  w = (w / w.sum(1, keepdims=True)).astype(np.float32)
  avail = np.ones((b, len(dims)), np.float32)
  avail[1, 0] = avail[3, 2] = avail[3, 1] = 0
  # Official: text_weight_tensor[i, j, e] = w[i, e] a[j, e] / sum_e' w[i, e'] a[j, e'].
  weighting = w[:, None, :] * avail[None, :, :]
  weighting /= weighting.sum(2, keepdims=True)
  for emb in (text, video):
    expected = sum(weighting[:, :, e] * (emb[e] @ emb[e].T) for e in range(len(dims)))
    np.testing.assert_allclose(similarity(emb, jnp.asarray(w), emb, jnp.asarray(avail)),
                               expected, rtol=1e-5, atol=1e-6)
