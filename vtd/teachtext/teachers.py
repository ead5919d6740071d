"""Frozen teachers for TeachText: loaded by path, used live or through cached embeddings.

Each teacher is a trained retrieval model with its own text embedding. For a training batch of
B (video, caption) pairs, teacher t gives S_t [B, B] = its full similarity (mixture weights,
availability renormalisation and all, in inference mode). Two equivalent ways to get it:

* `live`: run the teacher's encoders on the batch every step (needs its text features).
* `cached`: embed every training caption and video once with each teacher, then each step
  gathers the batch rows and evaluates only the similarity. The same numbers, without the
  teachers' forward passes (the official code also precomputes teacher embeddings, but drops
  the mixture weights; we keep them, so cached == live).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vtd import artifacts
from vtd.teachtext.data.retrieval import RetrievalSplit
from vtd.teachtext import evaluate as tt_evaluate
from vtd.teachtext.models import RetrievalModel, similarity, stack_available

MODES = ("cached", "live")


@dataclasses.dataclass(frozen=True)
class Teacher:
  name: str
  text_embedding: str
  model: RetrievalModel
  artifact_dir: str  # Where its weights live; teachers are referenced, never copied.


def build_model(model_cfg, expert_shapes: Sequence[tuple[str, tuple[int, ...]]]
                ) -> RetrievalModel:
  """A RetrievalModel from `config.model` and the experts it should use (sorted by name)."""
  return RetrievalModel(
      expert_shapes=tuple((n, tuple(s)) for n, s in sorted(expert_shapes)), arch=model_cfg.arch,
      shared_dim=model_cfg.shared_dim, text_clusters=model_cfg.text_clusters,
      text_ghost_clusters=model_cfg.text_ghost_clusters,
      expert_clusters=model_cfg.expert_clusters,
      freeze_moe_weights=model_cfg.freeze_moe_weights, use_mish=model_cfg.use_mish,
      pair_layers=model_cfg.pair_layers)


def load_teacher(artifact_dir: str) -> tuple[Teacher, dict[str, Any]]:
  """Reads a teacher artifact -> (Teacher, variables)."""
  variables, config, meta = artifacts.load_artifact(artifact_dir)
  model = build_model(config.model, [(n, tuple(s)) for n, s in meta["expert_shapes"]])
  teacher = Teacher(name=meta["model_name"], text_embedding=meta["text_embedding"],
                    model=model, artifact_dir=os.path.abspath(artifact_dir))
  return teacher, variables


def cache_embeddings(teacher: Teacher, variables: Any, split: RetrievalSplit, *,
                     chunk_size: int = 1024) -> dict[str, Any]:
  """Teacher embeddings of every training caption slot and video, for `cached` mode.

  Returns {'text': per-expert [N_v, K, d], 'weights': [N_v, K, M], 'video': per-expert
  [N_v, d]}; availability comes from the batch at train time.
  """
  emb = tt_evaluate.embed_split(teacher.model, variables, split, teacher.text_embedding,
                                chunk_size=chunk_size)
  n_v, k = split.caption_mask.shape
  unflatten = lambda x: x.reshape((n_v, k) + x.shape[1:])
  return {"text": tuple(unflatten(t) for t in emb["text"]),
          "weights": unflatten(emb["weights"]), "video": tuple(emb["video"])}


Embeddings = tuple[tuple[jax.Array, ...], jax.Array, tuple[jax.Array, ...], jax.Array]


def teacher_embeddings(teachers: Sequence[Teacher], frozen: Sequence[Any], batch: Any,
                       mode: str) -> list[Embeddings]:
  """Per teacher, its joint-space view of a batch (no gradient).

  Args:
    teachers: static descriptions (models, text embeddings).
    frozen: per teacher, its variables (`live`) or its cached embeddings (`cached`).
    batch: the training batch (global arrays under jit).
    mode: 'live' or 'cached'.

  Returns:
    Per teacher (text per expert [B, d_m], mixture weights [B, M], video per expert [B, d_m],
    availability [B, M]): the arguments of `similarity`.
  """
  if mode not in MODES:
    raise ValueError(f"config.distill.teacher_mode must be one of {MODES}, got {mode!r}")
  out = []
  for teacher, tf in zip(teachers, frozen):
    available = stack_available(batch["available"], teacher.model.expert_names)
    if mode == "live":
      text, weights, video = teacher.model.apply(
          tf, batch["text"][teacher.text_embedding], batch["experts"], batch["available"],
          train=False)
    else:
      vid, cap = batch["video_idx"], batch["caption_idx"]
      text = tuple(t[vid, cap] for t in tf["text"])
      weights = tf["weights"][vid, cap]
      video = tuple(v[vid] for v in tf["video"])
    out.append(jax.lax.stop_gradient((text, weights, video, available)))
  return out


def teacher_similarities(teachers: Sequence[Teacher], frozen: Sequence[Any], batch: Any,
                         mode: str) -> jax.Array:
  """[N, B, B] similarity matrices of the frozen teachers on a batch (no gradient)."""
  return jnp.stack([similarity(*e) for e in teacher_embeddings(teachers, frozen, batch, mode)])


def as_numpy(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)
