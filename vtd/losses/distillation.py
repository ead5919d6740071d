"""TeachText distillation: the student's B x B similarity matrix towards an aggregate of teachers'.

L_d = criterion(S_s, Phi(S_1, ..., S_N)), with the teacher matrices treated as constants.
The official code uses Phi = mean and SmoothL1 (Huber, beta = 1) averaged over the B^2 entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

AGGREGATIONS = ("mean", "median", "max", "min")
CRITERIA = ("smooth_l1", "l2", "l1", "kl")


def aggregate_teachers(teacher_sims: jax.Array, how: str = "mean") -> jax.Array:
  """Phi: [N, B, B] teacher similarity matrices -> [B, B] supervisory matrix."""
  if teacher_sims.ndim != 3:
    raise ValueError(f"teacher_sims must be [N, B, B], got {teacher_sims.shape}")
  if how == "mean":
    return jnp.mean(teacher_sims, axis=0)
  if how == "median":
    return jnp.median(teacher_sims, axis=0)
  if how == "max":
    return jnp.max(teacher_sims, axis=0)
  if how == "min":
    return jnp.min(teacher_sims, axis=0)
  raise ValueError(f"distillation aggregation must be one of {AGGREGATIONS}, got {how!r}")


def similarity_distillation_loss(student_sims: jax.Array, target_sims: jax.Array,
                                 criterion: str = "smooth_l1", *, temperature: float = 1.0
                                 ) -> jax.Array:
  """Distance between the student's and the (aggregated) teachers' [B, B] matrices.

  Args:
    student_sims: [B, B] S_s.
    target_sims: [B, B] Phi(S_1..S_N); gradients are stopped.
    criterion: 'smooth_l1' (official: Huber with delta 1, mean over B^2 entries), 'l2' (mean
      squared error), 'l1', or 'kl' (row-wise KL(softmax(T/t) || softmax(S/t)), averaged over
      rows and both retrieval directions).
    temperature: softmax temperature for 'kl'.
  """
  if student_sims.shape != target_sims.shape:
    raise ValueError(f"student {student_sims.shape} and teacher {target_sims.shape} similarity "
                     "matrices differ in shape")
  target = jax.lax.stop_gradient(target_sims)
  diff = student_sims - target
  if criterion == "smooth_l1":
    return jnp.mean(optax.huber_loss(student_sims, target, delta=1.0))
  if criterion == "l2":
    return jnp.mean(diff ** 2)
  if criterion == "l1":
    return jnp.mean(jnp.abs(diff))
  if criterion == "kl":
    def kl(s, t):
      log_p_t = jax.nn.log_softmax(t / temperature, axis=-1)
      log_p_s = jax.nn.log_softmax(s / temperature, axis=-1)
      return jnp.mean(jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1))
    return 0.5 * (kl(student_sims, target) + kl(student_sims.T, target.T))
  raise ValueError(f"distillation criterion must be one of {CRITERIA}, got {criterion!r}")
