"""Embedding a split with a trained model and computing the official retrieval metrics."""

from __future__ import annotations

import functools
import time
from typing import Any, Sequence

import jax
import numpy as np

from vtd import chunking
from vtd.data.retrieval import RetrievalSplit
from vtd.evaluators import qbnorm
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


VIDEO_MODULES = ("poolers_", "video_units_", "reduce_units_", "pair_module", "reasoning_units_")


def video_cost(model: RetrievalModel, variables: Any, split: RetrievalSplit, *,
               chunk_size: int = 1024) -> dict[str, Any]:
  """Test-time cost of the video side: what video-modality distillation saves.

  Returns:
    experts (names), video_input_dims (feature numbers read per video, all experts),
    video_params (parameters of the video encoder), video_encode_ms_per_1k (wall time to
    encode 1,000 videos, warm, on this machine; a noisy absolute number, compare within a run).
  """
  params = variables["params"]
  count = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))
  video_params = count({k: v for k, v in params.items() if k.startswith(VIDEO_MODULES)})
  feats = input_pipeline.video_features(split, np.arange(split.num_videos))
  # Only the model's own experts are read at test time.
  feats = {k: {n: v[n] for n in model.expert_names} for k, v in feats.items()}
  encode = lambda f: _encode_video(model, variables, f["experts"], f["available"])
  chunking.chunked_apply(encode, feats, chunk_size)  # Warm-up: compile outside the timing.
  start = time.perf_counter()
  jax.block_until_ready(chunking.chunked_apply(encode, feats, chunk_size))
  seconds = time.perf_counter() - start
  return {"experts": list(model.expert_names),
          "video_input_dims": int(sum(np.prod(s) for _, s in model.expert_shapes)),
          "video_params": video_params,
          "video_encode_ms_per_1k": 1e6 * seconds / split.num_videos}


def evaluate_qbnorm(model: RetrievalModel, variables: Any, *, bank: RetrievalSplit,
                    test: RetrievalSplit, text_embedding: str, beta: float = 20.0, k: int = 1,
                    bank_chunk: int = 512, chunk_size: int = 1024, query_chunk: int = 2048
                    ) -> dict[str, dict[str, float]]:
  """t2v metrics after QB-Norm with Dynamic Inverted Softmax (`vtd.evaluators.qbnorm`).

  The querybank is every existing caption of `bank` (official default: the training split),
  scored against the *test* videos; its statistics are streamed `bank_chunk` rows at a time,
  and the test queries `query_chunk` rows at a time, so memory stays O(chunk x N_v). DIS
  rows live on different scales, so only t2v (per-query ranking) is meaningful.
  """
  emb = embed_split(model, variables, test, text_embedding, chunk_size=chunk_size)
  bank_emb = embed_split(model, variables, bank, text_embedding, chunk_size=chunk_size)
  bank_rows = np.flatnonzero(bank.caption_mask.reshape(-1))

  def bank_sims(start, stop):
    rows = bank_rows[start:stop]
    return _similarity(tuple(t[rows] for t in bank_emb["text"]), bank_emb["weights"][rows],
                       emb["video"], emb["available"])

  stats = qbnorm.querybank_stats(bank_sims, beta=beta, k=k, bank_chunk=bank_chunk,
                                 num_bank=bank_rows.size)
  n_v, n_k = test.caption_mask.shape
  queries = {"text": emb["text"], "weights": emb["weights"]}
  chunk = max(1, min(query_chunk, n_v * n_k))

  def scored_chunks():
    for start, valid, q in chunking.iterate_chunks(queries, chunk):
      sims = _similarity(q["text"], q["weights"], emb["video"], emb["available"])
      yield start, valid, np.asarray(qbnorm.dis_scores(sims, stats))[:valid]

  # Two passes, as `retrieval_metrics_from_embeddings`: ground truth first, then ranks.
  gt = np.zeros(n_v * n_k, np.float32)
  for start, valid, scores in scored_chunks():
    gt[start:start + valid] = scores[np.arange(valid), (start + np.arange(valid)) // n_k]
  acc = RetrievalAccumulator(gt.reshape(n_v, n_k), test.caption_mask)
  for start, _, scores in scored_chunks():
    acc.update(start, scores)
  return {"t2v": acc.result()["t2v"]}
