"""Bidirectional max-margin ranking loss (MoEE / Collaborative Experts / TeachText)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def max_margin_ranking_loss(sims: jax.Array, margin: float, *, fix_norm: bool = True
                            ) -> jax.Array:
  """Hinge loss over all negatives of a batch similarity matrix.

  L = mean over i != j of { relu(m - S_ii + S_ij), relu(m - S_ii + S_ji) }.

  Args:
    sims: [B, B] similarities, rows = captions, columns = videos, positives on the diagonal.
      Under jit on sharded inputs B is the *global* batch.
    margin: m.
    fix_norm: True (all CE/TeachText configs) averages over the 2B(B-1) off-diagonal terms;
      False averages over all 2B^2 terms, including the 2B diagonal ones (each equal to m), as
      the original MoEE loss.

  Returns:
    Scalar loss.
  """
  if sims.ndim != 2 or sims.shape[0] != sims.shape[1]:
    raise ValueError(f"sims must be square [B, B], got {sims.shape}")
  b = sims.shape[0]
  diag = jnp.diagonal(sims)
  text_to_video = jax.nn.relu(margin - diag[:, None] + sims)  # negatives along row i
  video_to_text = jax.nn.relu(margin - diag[None, :] + sims)  # negatives along column j
  terms = text_to_video + video_to_text
  if fix_norm:
    off_diag = 1.0 - jnp.eye(b, dtype=sims.dtype)
    return jnp.sum(terms * off_diag) / (2 * b * (b - 1))
  return jnp.sum(terms) / (2 * b * b)
