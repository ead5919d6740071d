"""Relational Knowledge Distillation (RKD; Park, Kim, Lu, Cho, CVPR 2019), distance + angle.

Reproduces the official code, lenscloth/RKD `metric/loss.py` (`RkdDistance`, `RKdAngle`) and
`metric/utils.py` (`pdist`):

* Distance-wise: psi_D(x_i, x_j) = ||x_i - x_j|| / mu. As `pdist(e, squared=False)`: squared
  distances n_i + n_j - 2 <x_i, x_j> clamped to >= 1e-12, square root, diagonal set to 0;
  mu = the mean of the entries > 0 (every off-diagonal one, since the clamp keeps them >=
  1e-6), computed per network, differentiable for the student.
  L_D = mean over all N^2 entries (diagonal included) of Huber_1(psi_D(s) - psi_D(t)).
* Angle-wise: A[j, i, k] = <e_ji, e_jk>, e_ji = (x_i - x_j) / max(||x_i - x_j||, 1e-12)
  (`F.normalize`, so a zero difference -- j = i, or duplicate rows -- normalises to 0 and gives
  a 0 potential). The vertex is the FIRST index, as the official `td = t[None] - t[:, None]`,
  `bmm(norm_td, norm_td^T).view(-1)`; the paper's psi_A(x_i, x_j, x_k) is A[j, i, k]. Only the
  order of the N^3 entries depends on this, not the loss.
  L_A = mean over all N^3 entries of Huber_1(A(s) - A(t)).
* Huber_1 = smooth_l1 (beta 1): 0.5 x^2 if |x| < 1 else |x| - 0.5. Teacher potentials are
  constants (official: computed under `torch.no_grad()`).
* `rkd_loss` = distance_weight L_D + angle_weight L_A, defaults (1, 2) from the README of the RKD
  repo (`--dist_ratio 1 --angle_ratio 2`; the script's argparse defaults are 0). A term whose
  weight is a Python 0 is not computed (reported as 0).

Implementation decisions (same values as the official code up to float rounding):
* The angle tensor is computed from the Gram matrix G = X X^T instead of the official
  [N, N, C] difference tensor: <x_i - x_j, x_k - x_j> = G_ik - G_ij - G_jk + G_jj and
  ||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij, so no [N, N, C] or [N, N, N, C] tensor exists.
  Everything after G is broadcasts of [N, N] arrays and a full reduction: XLA fuses the
  forward loss into one reduction (no [N, N, N] buffer; measured on CPU), while the backward
  pass holds a few [N, N, N] float32 buffers (~5 N^3 x 4 bytes on CPU: 5 MB at B = 64,
  340 MB at 256), as the official bmm output. The terms are grouped, and G symmetrised, so
  that j = i, k = j, and rows that are exact duplicates give exactly 0 (the F.normalize eps
  case), as the official code; for duplicates this relies on the matmul computing equal rows
  equally, which holds for XLA's (tested on CPU). An ungrouped sum would leave rounding
  noise scaled by 1/eps^2 there.
* Gram identities cancel when distances are much smaller than norms, so: rows are centred
  first (differences are translation-invariant; this matters when the batch is clustered away
  from the origin), G is float32 with
  `Precision.HIGHEST` (XLA may otherwise use TF32/bf16 passes for f32 matmuls on GPU/TPU),
  and inputs are cast to float32. Near-duplicate (not identical) rows still carry a relative
  error ~ 1e-7 ||x||^2 / ||x_i - x_j||^2 in their angles.
* As the official code, exactly duplicated STUDENT rows (not duplicated in the teacher) get
  ~1/eps-scaled gradients (the gradient of x / max(||x||, eps) at x = 0; measured 8e14);
  here rounding in the G and centring route also leaks a little of it into the other rows
  (measured ~1e2). The diagonal (j = i) is harmless: both potentials are 0 there.
* At least 2 rows are required (mu is the mean of an empty set otherwise; official: NaN).
  Under `jit` on a batch-sharded input N is the global batch (XLA gathers the rows).

Use as a TeachText baseline (the setting is not given by either paper [inferred]): RKD
transfers relations among one modality's embeddings, so the natural use is
L = L_D + 2 L_A between the student's and a teacher's caption embeddings of the batch, [B, D_s]
and [B, D_t] (and/or their video embeddings), with D_s != D_t allowed since the potentials are
dimension-free. With several teachers, average the per-teacher losses. (train.py's
`distill.method='rkd'` does this, with multi-expert embeddings concatenated per sample.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_DIST_EPS = 1e-12  # pdist clamp on squared distances.
_NORM_EPS = 1e-12  # F.normalize eps on norms.


def _check(x: jax.Array, name: str) -> None:
  if x.ndim != 2:
    raise ValueError(f"RKD {name} embeddings must be [N, D], got {tuple(x.shape)}")
  if x.shape[0] < 2:
    raise ValueError(f"RKD needs at least 2 rows, got {name} {tuple(x.shape)}")


def _gram(x: jax.Array) -> jax.Array:
  """[N, D] -> symmetric [N, N] float32 Gram matrix of the centred rows (see module doc)."""
  x = x.astype(jnp.float32)
  x = x - jnp.mean(x, axis=0, keepdims=True)
  g = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
  return 0.5 * (g + g.T)  # Exactly symmetric, so the degenerate cases cancel exactly.


def _squared_distances(g: jax.Array) -> jax.Array:
  """||x_i - x_j||^2 from the Gram matrix, unclamped (can be slightly negative)."""
  n = jnp.diagonal(g)
  return (n[:, None] + n[None, :]) - 2.0 * g


def distance_potentials(x: jax.Array) -> jax.Array:
  """psi_D: [N, D] -> [N, N] pairwise Euclidean distances / their mean over entries > 0."""
  _check(x, "input")
  d = jnp.sqrt(jnp.maximum(_squared_distances(_gram(x)), _DIST_EPS))
  d = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d)
  positive = d > 0
  mu = jnp.sum(jnp.where(positive, d, 0.0)) / jnp.sum(positive)
  return d / mu


def angle_potentials(x: jax.Array) -> jax.Array:
  """psi_A: [N, D] -> [N, N, N], A[j, i, k] = cosine of the angle x_i x_j x_k (vertex j).

  Zero-length differences give 0, as F.normalize (eps 1e-12).
  """
  _check(x, "input")
  g = _gram(x)
  # 1 / max(||x_i - x_j||, eps) == rsqrt(max(||.||^2, eps^2)), finite gradient at 0.
  inv = jax.lax.rsqrt(jnp.maximum(_squared_distances(g), _NORM_EPS ** 2))  # [j, i]
  h = g - jnp.diagonal(g)[:, None]  # h[j, k] = G_jk - G_jj
  # (G_ik - G_ji) - (G_jk - G_jj): both brackets are equal, hence 0 exactly, when i = j (or
  # x_i == x_j); the first is 0 when k = j (G symmetric), as is the second.
  dot = (g[None, :, :] - g[:, :, None]) - h[:, None, :]
  return dot * inv[:, :, None] * inv[:, None, :]


def rkd_distance_loss(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """L_D: mean Huber_1 over N^2 of psi_D(student [N, D_s]) vs psi_D(teacher [N, D_t])."""
  _check_pair(student, teacher)
  t = jax.lax.stop_gradient(distance_potentials(teacher))
  return jnp.mean(optax.huber_loss(distance_potentials(student), t, delta=1.0))


def rkd_angle_loss(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """L_A: mean Huber_1 over N^3 of psi_A(student [N, D_s]) vs psi_A(teacher [N, D_t])."""
  _check_pair(student, teacher)
  t = jax.lax.stop_gradient(angle_potentials(teacher))
  return jnp.mean(optax.huber_loss(angle_potentials(student), t, delta=1.0))


def _check_pair(student: jax.Array, teacher: jax.Array) -> None:
  _check(student, "student")
  _check(teacher, "teacher")
  if student.shape[0] != teacher.shape[0]:
    raise ValueError(f"RKD student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                     "embeddings must have the same number of rows")


def _is_zero(w) -> bool:
  # Only a concrete Python/NumPy zero is skipped; a traced weight is always computed.
  return isinstance(w, (int, float)) and w == 0


def rkd_loss(student: jax.Array, teacher: jax.Array, *, distance_weight: float = 1.0,
             angle_weight: float = 2.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """distance_weight L_D + angle_weight L_A.

  Args:
    student: [B, D_s] student embeddings of the batch (e.g. its caption embeddings).
    teacher: [B, D_t] the teacher's embeddings of the same samples; gradient stopped.
    distance_weight, angle_weight: lambda_D, lambda_A (RKD README: 1, 2). A Python 0 skips the
      term.

  Returns:
    (loss, terms): terms 'rkd_distance' = L_D and 'rkd_angle' = L_A, unweighted.
  """
  _check_pair(student, teacher)
  zero = jnp.zeros((), jnp.float32)
  terms = {
      "rkd_distance": (zero if _is_zero(distance_weight)
                       else rkd_distance_loss(student, teacher)),
      "rkd_angle": zero if _is_zero(angle_weight) else rkd_angle_loss(student, teacher),
  }
  loss = distance_weight * terms["rkd_distance"] + angle_weight * terms["rkd_angle"]
  return loss, terms
