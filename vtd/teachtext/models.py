"""MoEE and Collaborative Experts (CE) retrieval models, as built by the official CE code.

Both are one linen module, `RetrievalModel`, switched by `arch` ('moee' | 'ce'), mirroring
`CENet` in albanie/collaborative-experts. Experts are processed in alphabetical order (the
MoE-weight index m follows it). Shapes: Q queries (captions), V videos, L tokens, M experts.

Faithfulness notes (see ../shared/reference/teachtext.md §1):
* Linear layers use PyTorch's default init, U(+-1/sqrt(fan_in)) for weight and bias.
* BatchNorm uses PyTorch's momentum 0.1 (flax momentum 0.9) and eps 1e-5.
* NetVLAD does not mask padded tokens (the official `mask` argument is ignored).
* CE's pair module g is called once per ordered pair (i, j), j including i, so its BN layers
  normalise with each pair's statistics and update their running averages M^2 times per step.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vtd.layers import l2_normalize, torch_batch_norm



def _torch_uniform(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class TorchDense(nn.Module):
  """nn.Linear with PyTorch's default initialisation (kaiming-uniform a=sqrt(5))."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", _torch_uniform(fan_in), (fan_in, self.features))
    bias = self.param("bias", _torch_uniform(fan_in), (self.features,))
    return x @ kernel + bias


def mish(x: jax.Array) -> jax.Array:
  return x * jnp.tanh(jax.nn.softplus(x))


class NetVLAD(nn.Module):
  """NetVLAD pooling [B, N, D] -> [B, D * clusters] (CE model/net_vlad.py).

  Soft assignment a = softmax(BN(x C)) over clusters + ghost clusters (ghosts dropped after
  the softmax), residuals sum_n a_nk (x_n - c_k), intra-normalised per cluster, flattened and
  L2-normalised. The BN is over the flattened B*N rows, padding included (as the official code).
  """
  clusters: int
  ghost_clusters: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    b, n, d = x.shape
    k, g = self.clusters, self.ghost_clusters
    init = nn.initializers.normal(stddev=1.0 / np.sqrt(d))
    assign_w = self.param("clusters", init, (d, k + g))
    centres = self.param("clusters2", init, (d, k))
    logits = x.reshape(b * n, d) @ assign_w
    logits = torch_batch_norm(train, "assignment_bn")(logits)
    assign = jax.nn.softmax(logits, axis=-1)[:, :k].reshape(b, n, k)
    weighted = jnp.einsum("bnk,bnd->bdk", assign, x)
    vlad = weighted - assign.sum(axis=1)[:, None, :] * centres[None]
    vlad = l2_normalize(vlad, axis=1)  # intra-normalisation over D, per cluster
    return l2_normalize(vlad.reshape(b, d * k))


class ContextGating(nn.Module):
  """y = x * sigmoid(BN(W x + b))."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    gate = torch_batch_norm(train)(TorchDense(x.shape[-1])(x))
    return x * jax.nn.sigmoid(gate)


class GatedEmbeddingUnit(nn.Module):
  """GEU: Linear -> context gating -> L2 normalisation."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return l2_normalize(ContextGating()(TorchDense(self.features)(x), train=train))


class GatedEmbeddingUnitReasoning(nn.Module):
  """CE's fused gate: y = e * sigmoid(BN_a(T) + BN_b(W e + b)), then L2 normalisation."""

  @nn.compact
  def __call__(self, e: jax.Array, context: jax.Array, *, train: bool) -> jax.Array:
    gate = (torch_batch_norm(train, "context_bn")(context) +
            torch_batch_norm(train, "self_bn")(TorchDense(e.shape[-1])(e)))
    return l2_normalize(e * jax.nn.sigmoid(gate))


class PairModule(nn.Module):
  """CE's g: [e_i ; e_j] -> L3(act(BN(L2(act(BN(L1(.))))))), shared by all expert pairs."""
  features: int
  num_layers: int = 3
  use_mish: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = mish if self.use_mish else jax.nn.relu
    for i in range(self.num_layers):
      if i > 0:
        x = act(torch_batch_norm(train, f"bn{i}")(x))
      x = TorchDense(self.features, name=f"linear{i}")(x)
    return x


class RetrievalModel(nn.Module):
  """Text and video encoders of MoEE / CE producing per-expert joint embeddings.

  Attributes:
    expert_shapes: ((name, per-video feature shape), ...) sorted by name; a 2-D shape
      (T, D) marks a token-sequence expert pooled by NetVLAD.
    arch: 'moee' (per-expert GEUs, raw dims) or 'ce' (ReduceDim to `shared_dim` +
      collaborative gating).
    shared_dim: CE's common dimension d (ce_shared_dim).
    text_clusters / text_ghost_clusters: NetVLAD on word features.
    expert_clusters: NetVLAD clusters for token-sequence experts.
    freeze_moe_weights: uniform mixture weights 1/M (the "CE - MW" ablation).
    use_mish: Mish (else ReLU) inside the pair module.
    pair_layers: number of linear layers of g.
  """
  expert_shapes: tuple[tuple[str, tuple[int, ...]], ...]
  arch: str = "ce"
  shared_dim: int = 256
  text_clusters: int = 8
  text_ghost_clusters: int = 1
  expert_clusters: int = 4
  freeze_moe_weights: bool = False
  use_mish: bool = True
  pair_layers: int = 3

  def setup(self):
    if self.arch not in ("ce", "moee"):
      raise ValueError(f"model.arch must be 'ce' or 'moee', got {self.arch!r}")
    names = [n for n, _ in self.expert_shapes]
    if names != sorted(names):
      raise ValueError(f"expert_shapes must be sorted by name, got {names}")
    self.text_vlad = NetVLAD(self.text_clusters, self.text_ghost_clusters)
    self.moe_logits = TorchDense(len(names))
    self.poolers = [NetVLAD(self.expert_clusters) if len(s) == 2 else None
                    for _, s in self.expert_shapes]
    out_dims = self.embedding_dims
    self.text_units = [GatedEmbeddingUnit(d) for d in out_dims]
    if self.arch == "moee":
      self.video_units = [GatedEmbeddingUnit(d) for d in out_dims]
    else:
      self.reduce_units = [TorchDense(self.shared_dim) for _ in names]
      self.pair_module = PairModule(self.shared_dim, self.pair_layers, self.use_mish)
      self.reasoning_units = [GatedEmbeddingUnitReasoning() for _ in names]

  @property
  def embedding_dims(self) -> tuple[int, ...]:
    """Per-expert joint-space dimension: d for CE, the raw (token) dim for MoEE."""
    if self.arch == "ce":
      return tuple(self.shared_dim for _ in self.expert_shapes)
    return tuple(s[-1] for _, s in self.expert_shapes)

  def encode_text(self, tokens: jax.Array, *, train: bool
                  ) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """[Q, L, D_text] word features -> (per-expert [Q, d_m] unit vectors, weights [Q, M])."""
    pooled = self.text_vlad(tokens, train=train)
    embeddings = tuple(unit(pooled, train=train) for unit in self.text_units)
    logits = self.moe_logits(pooled)
    if self.freeze_moe_weights:
      weights = jnp.full(logits.shape, 1.0 / logits.shape[-1], logits.dtype)
    else:
      weights = jax.nn.softmax(logits, axis=-1)
    return embeddings, weights

  @property
  def expert_names(self) -> tuple[str, ...]:
    return tuple(n for n, _ in self.expert_shapes)

  def encode_video(self, experts: dict[str, jax.Array], available: dict[str, jax.Array], *,
                   train: bool) -> tuple[jax.Array, ...]:
    """Expert features (name -> [V, D] or [V, T, D]) and availability (name -> [V]) ->
    per-expert [V, d_m] unit vectors. Experts the model does not use are ignored."""
    feats = []
    for (name, _), pooler in zip(self.expert_shapes, self.poolers):
      x = experts[name]
      feats.append(pooler(x, train=train) if pooler is not None else x)
    if self.arch == "moee":
      return tuple(unit(x, train=train) for unit, x in zip(self.video_units, feats))
    reduced = [l2_normalize(unit(x)) for unit, x in zip(self.reduce_units, feats)]
    avail = stack_available(available, self.expert_names)
    outputs = []
    for i, e_i in enumerate(reduced):
      total = jnp.zeros_like(e_i)
      norm = jnp.zeros(e_i.shape[:1] + (1,), e_i.dtype)
      for j, e_j in enumerate(reduced):
        a_ij = (avail[:, i] * avail[:, j])[:, None]
        total += a_ij * self.pair_module(jnp.concatenate([e_i, e_j], -1), train=train)
        norm += a_ij
      context = total / (norm + 1e-11)  # masked mean over partners (official: not a sum)
      outputs.append(self.reasoning_units[i](e_i, context, train=train))
    return tuple(outputs)

  def __call__(self, tokens: jax.Array, experts: dict[str, jax.Array],
               available: dict[str, jax.Array], *, train: bool):
    text, weights = self.encode_text(tokens, train=train)
    video = self.encode_video(experts, available, train=train)
    return text, weights, video


def stack_available(available: dict[str, jax.Array], names: Sequence[str]) -> jax.Array:
  """name -> [V] availability flags  ->  [V, M] float matrix in the order of `names`."""
  missing = [n for n in names if n not in available]
  if missing:
    raise KeyError(f"no availability given for experts {missing}")
  return jnp.stack([jnp.asarray(available[n], jnp.float32) for n in names], axis=1)


def similarity(text: Sequence[jax.Array], weights: jax.Array, video: Sequence[jax.Array],
               available: jax.Array) -> jax.Array:
  """S[q, v] = sum_m w'_{qvm} <t_qm, e_vm>, with w' renormalised over experts available for v.

  Args:
    text: per-expert [Q, d_m] unit vectors.
    weights: [Q, M] mixture weights (rows sum to 1).
    video: per-expert [V, d_m] unit vectors.
    available: [V, M] expert availability (bool or 0/1).

  Returns:
    [Q, V] similarities in [-1, 1]. A video with no available expert gets 0.
  """
  avail = available.astype(weights.dtype)
  numerator = sum(jnp.einsum("qd,vd->qv", weights[:, m:m + 1] * t, avail[:, m:m + 1] * e)
                  for m, (t, e) in enumerate(zip(text, video)))
  denominator = weights @ avail.T
  return jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0),
                   0.0)
