"""UTS loss, eqs. 4-8: global consistency with a frozen teacher + intra-batch inconsistency.

  L = l0 (1 - C(s, t)) + l1 (1 - C(s*, t)) + l2 I(s) + l3 I(s*)

C = batch-mean cosine of paired rows (eqs. 4-5); I = for each anchor, the mean of a band of its
sorted cosines to the batch, itself included (eqs. 6-7); s = student on augmented frames, s* =
student on the same frames without augmentation, t = teacher on the clean frames (gradient
stopped). Published weights (l0..l3) = (2, 2, 1, 1), alpha = 0.1, beta = 0.6 (reference §A.4).

Decisions on the reference's ambiguity table (defaults not from the paper):
* Sort order: descending (`descending=True`): the band skips the top alpha fraction (self,
  near-duplicates) and the bottom 1 - beta (easy negatives).
* Band indices: 0-based half-open ranks [round(alpha n), round(beta n)) (Python `round`, so
  exact halves go to even), a plain mean over exactly that many entries (n = 320: 32..191).
* s = augmented, s* = clean; with symmetric lambdas the loss is the same under either reading.
* Band scope: the global batch by default. Under `jit` with a batch-sharded input the n x n
  matrix is computed over all devices (XLA inserts the all-gather). `band_scope='per_device'`
  instead cuts the batch into `num_groups` consecutive blocks of n / num_groups rows (exactly
  each device's shard under `P('data')`, which splits the leading axis in contiguous blocks)
  and takes each row's band within its own block, as with per-GPU losses.
* Everything is computed in float32 (bf16 cosines lose the ordering inside the band).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vtd.errors import UserError
from vtd.layers import l2_normalize

BAND_SCOPES = ("global", "per_device")


def _check_pair(s: jax.Array, t: jax.Array) -> None:
  if s.ndim != 2 or s.shape != t.shape:
    raise UserError(f"UTS features must be equal [n, D] arrays, got student {tuple(s.shape)} "
                    f"and teacher {tuple(t.shape)} (student and teacher out_dim must match)")


def global_consistency(s: jax.Array, t: jax.Array) -> jax.Array:
  """Eqs. 4-5: mean_i cos(s_i, t_i) of [n, D] features (a similarity; the loss is 1 - it)."""
  _check_pair(s, t)
  s, t = s.astype(jnp.float32), t.astype(jnp.float32)
  return jnp.mean(jnp.sum(l2_normalize(s) * l2_normalize(t), axis=-1))


def band(n: int, alpha: float, beta: float) -> tuple[int, int]:
  """Half-open rank range [round(alpha n), round(beta n)) of eq. 6; a UserError if empty."""
  lo, hi = round(alpha * n), round(beta * n)
  if not 0 <= lo < hi <= n:
    raise UserError(f"UTS band [round(alpha*n), round(beta*n)) = [{lo}, {hi}) is empty or out "
                    f"of [0, {n}] for alpha={alpha}, beta={beta}, n={n} rows per band scope")
  return lo, hi


def intra_batch_inconsistency(s: jax.Array, alpha: float = 0.1, beta: float = 0.6,
                              descending: bool = True, *, num_groups: int = 1) -> jax.Array:
  """Eqs. 6-7 on the student's own [n, D] features: mean cosine over each row's rank band.

  Args:
    s: [n, D] features.
    alpha, beta: band fractions; ranks [round(alpha k), round(beta k)) of each sorted row.
    descending: sort most similar first (default) or ascending.
    num_groups: G; rows are split into G consecutive blocks of k = n / G and each row is
      compared within its block only (G = 1: the whole batch).

  Returns:
    Scalar: the mean over rows of the band mean, in [-1, 1].
  """
  if s.ndim != 2:
    raise UserError(f"UTS features must be [n, D], got {tuple(s.shape)}")
  n = s.shape[0]
  if num_groups < 1 or n % num_groups:
    raise UserError(f"UTS batch of {n} rows cannot be split into {num_groups} equal band groups "
                    f"(band_scope='per_device' needs the batch divisible by the device count)")
  k = n // num_groups
  lo, hi = band(k, alpha, beta)
  z = l2_normalize(s.astype(jnp.float32)).reshape(num_groups, k, s.shape[1])
  sim = jnp.einsum("gid,gjd->gij", z, z)  # [G, k, k], diagonal (self, 1) included.
  srt = jnp.sort(sim, axis=-1)  # A permutation, so differentiable.
  if descending:
    srt = srt[..., ::-1]
  return jnp.mean(srt[..., lo:hi])


def uts_loss(s_aug: jax.Array, s_clean: jax.Array, t: jax.Array,
             lambdas: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0),
             alpha: float = 0.1, beta: float = 0.6, descending: bool = True, *,
             band_scope: str = "global", num_groups: int | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 8.

  Args:
    s_aug: [n, D] student features of the augmented frames (s_i).
    s_clean: [n, D] student features of the same frames, not augmented (s_i*).
    t: [n, D] teacher features of the clean frames; gradient stopped (frozen teacher).
    lambdas: (l0, l1, l2, l3) weighting (1 - C(s, t), 1 - C(s*, t), I(s), I(s*)).
    alpha, beta, descending: the band of eq. 6 (see `intra_batch_inconsistency`).
    band_scope: 'global' (the whole batch) or 'per_device' (blocks of n / num_groups rows).
    num_groups: the number of devices for 'per_device' (required there; ignored for 'global').

  Returns:
    (loss, terms): terms are the four unweighted summands of eq. 8, 'global_aug' = 1 - C(s, t),
    'global_clean' = 1 - C(s*, t), 'intra_aug' = I(s), 'intra_clean' = I(s*).
  """
  if band_scope == "global":
    groups = 1
  elif band_scope == "per_device":
    if num_groups is None:
      raise UserError("uts band_scope='per_device' needs num_groups (the number of devices)")
    groups = num_groups
  else:
    raise UserError(f"uts band_scope must be one of {BAND_SCOPES}, got {band_scope!r}")
  if len(lambdas) != 4:
    raise UserError(f"uts lambdas must have 4 entries (l0..l3), got {tuple(lambdas)}")
  _check_pair(s_aug, t)
  _check_pair(s_clean, t)
  t = jax.lax.stop_gradient(t)
  intra = lambda s: intra_batch_inconsistency(s, alpha, beta, descending, num_groups=groups)
  terms = {
      "global_aug": 1.0 - global_consistency(s_aug, t),
      "global_clean": 1.0 - global_consistency(s_clean, t),
      "intra_aug": intra(s_aug),
      "intra_clean": intra(s_clean),
  }
  loss = sum(lam * terms[k] for lam, k in zip(lambdas, ("global_aug", "global_clean",
                                                        "intra_aug", "intra_clean")))
  return loss, terms
