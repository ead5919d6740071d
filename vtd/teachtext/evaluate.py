"""Embedding a split with a trained model and computing the official retrieval metrics."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np

from vtd import chunking
from vtd.data.retrieval import RetrievalSplit
from vtd.evaluators.retrieval import RetrievalAccumulator
from vtd.teachtext import input_pipeline
from vtd.teachtext.models import RetrievalModel, similarity, stack_available


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(model: RetrievalModel, variables, tokens):
  return model.apply(variables, tokens, train=False, method=RetrievalModel.encode_text)


@functools.partial(jax.jit, static_argnums=0)
def _encode_video(model: RetrievalModel, variables, experts, available):
  return model.apply(variables, experts, available, train=False,
                     method=RetrievalModel.encode_video)


_similarity = jax.jit(similarity)


def embed_split(model: RetrievalModel, variables: Any, split: RetrievalSplit,
                text_embedding: str, *, chunk_size: int = 1024) -> dict[str, Any]:
  """Joint-space embeddings of every caption slot and video of a split (inference mode).

  Returns:
    {'text': per-expert [N_v*K, d_m], 'weights': [N_v*K, M], 'video': per-expert [N_v, d_m],
     'available': [N_v, M]}, caption rows video-major (row = video * K + caption).
  """
  if text_embedding not in split.text:
    raise ValueError(f"text embedding {text_embedding!r} not in the data ({sorted(split.text)})")
  vid, cap = input_pipeline.caption_rows(split)
  tokens = split.text[text_embedding][vid, cap]
  text, weights = chunking.chunked_apply(
      lambda t: _encode_text(model, variables, t), tokens, chunk_size)
  feats = input_pipeline.video_features(split, np.arange(split.num_videos))
  video = chunking.chunked_apply(
      lambda f: _encode_video(model, variables, f["experts"], f["available"]), feats,
      chunk_size)
  available = np.asarray(stack_available(feats["available"], model.expert_names))
  return {"text": text, "weights": weights, "video": video, "available": available}


def retrieval_metrics_from_embeddings(embs: Sequence[dict[str, Any]], caption_mask: np.ndarray,
                                      *, query_chunk: int = 2048) -> dict[str, dict[str, float]]:
  """t2v / v2t metrics streamed over query chunks; the [N_q, N_v] matrix is never held whole.

  Args:
    embs: `embed_split` outputs of one model, or of several models whose similarity matrices
      are averaged (the teachers' ensemble Phi = mean, a diagnostic).
    caption_mask: [N_v, K].

  Two passes over the same chunks: the first collects each caption's similarity to its own
  video (from the very values the ranking compares, so exact-equality ties are consistent),
  the second ranks.
  """
  n_v, k = caption_mask.shape
  queries = [{"text": e["text"], "weights": e["weights"]} for e in embs]

  def chunk_sims(qs):
    sims = [_similarity(q["text"], q["weights"], e["video"], e["available"])
            for q, e in zip(qs, embs)]
    return sum(sims) / len(sims)

  n_q = n_v * k
  query_chunk = max(1, min(query_chunk, n_q))
  gt = np.zeros(n_q, np.float32)
  rows = np.arange(n_q)
  for start, valid, q in chunking.iterate_chunks(queries, query_chunk):
    sims = np.asarray(chunk_sims(q))[:valid]
    gt[start:start + valid] = sims[np.arange(valid), rows[start:start + valid] // k]
  acc = RetrievalAccumulator(gt.reshape(n_v, k), caption_mask)
  for start, valid, q in chunking.iterate_chunks(queries, query_chunk):
    acc.update(start, np.asarray(chunk_sims(q))[:valid])
  return acc.result()


def evaluate(model: RetrievalModel, variables: Any, split: RetrievalSplit, text_embedding: str,
             *, chunk_size: int = 1024, query_chunk: int = 2048) -> dict[str, dict[str, float]]:
  """{'t2v': {...}, 'v2t': {...}} official metrics of `model` on `split`."""
  emb = embed_split(model, variables, split, text_embedding, chunk_size=chunk_size)
  return retrieval_metrics_from_embeddings([emb], split.caption_mask, query_chunk=query_chunk)


def flatten_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
  """{'t2v': {'R1': ..}} -> {'t2v/R1': ..} for metric writers and checkpoint selection."""
  return {f"{d}/{k}": v for d, m in metrics.items() for k, v in m.items()}
