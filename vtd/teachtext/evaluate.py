"""Embedding a split with a trained model and computing the official retrieval metrics."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from vtd import chunking
from vtd.teachtext.data.retrieval import RetrievalSplit
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


def embed_text(model: RetrievalModel, variables: Any, split: RetrievalSplit,
               text_embedding: str, *, rows: np.ndarray | None = None,
               chunk_size: int = 1024) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
  """Joint-space embeddings of caption slots (inference mode).

  Args:
    rows: flat caption-slot indices (row = video * K + caption); default all N_v * K.

  Returns:
    (per-expert [R, d_m], mixture weights [R, M]).
  """
  if text_embedding not in split.text:
    raise ValueError(f"text embedding {text_embedding!r} not in the data ({sorted(split.text)})")
  words = split.text[text_embedding]
  tokens = words.reshape((-1,) + words.shape[2:])  # A view: chunks are copied one at a time.
  if rows is not None:
    tokens = tokens[rows]
  return chunking.chunked_apply(lambda t: _encode_text(model, variables, t), tokens, chunk_size)


def _video_inputs(model: RetrievalModel, split: RetrievalSplit) -> dict[str, Any]:
  # Only the model's own experts are read, as at test time.
  return input_pipeline.video_features(split, np.arange(split.num_videos), model.expert_names)


def _encode_videos(model: RetrievalModel, variables: Any, feats: dict[str, Any],
                   chunk_size: int) -> tuple[np.ndarray, ...]:
  return chunking.chunked_apply(
      lambda f: _encode_video(model, variables, f["experts"], f["available"]), feats,
      chunk_size)


def embed_split(model: RetrievalModel, variables: Any, split: RetrievalSplit,
                text_embedding: str, *, chunk_size: int = 1024) -> dict[str, Any]:
  """Joint-space embeddings of every caption slot and video of a split (inference mode).

  Returns:
    {'text': per-expert [N_v*K, d_m], 'weights': [N_v*K, M], 'video': per-expert [N_v, d_m],
     'available': [N_v, M]}, caption rows video-major (row = video * K + caption).
  """
  text, weights = embed_text(model, variables, split, text_embedding, chunk_size=chunk_size)
  feats = _video_inputs(model, split)
  video = _encode_videos(model, variables, feats, chunk_size)
  available = np.asarray(stack_available(feats["available"], model.expert_names))
  return {"text": text, "weights": weights, "video": video, "available": available}


def accumulate_from_embeddings(embs: Sequence[dict[str, Any]], caption_mask: np.ndarray, *,
                               query_chunk: int = 2048,
                               transform: Callable[[jax.Array], jax.Array] | None = None
                               ) -> RetrievalAccumulator:
  """Streams the (mean) similarity matrix of some embeddings into a RetrievalAccumulator.

  The [N_q, N_v] matrix is never held whole. Two passes over the same chunks: the first
  collects each caption's score for its own video (from the very values the ranking compares,
  so exact-equality ties are consistent), the second ranks.

  Args:
    embs: `embed_split` outputs of one model, or of several models whose similarity matrices
      are averaged (Phi = mean: the teachers' ensemble, denoising).
    caption_mask: [N_v, K].
    transform: applied to every [q, N_v] chunk before ranking (e.g. QB-Norm's DIS rescoring).
  """
  n_v, k = caption_mask.shape
  queries = [{"text": e["text"], "weights": e["weights"]} for e in embs]
  n_q = n_v * k
  query_chunk = max(1, min(query_chunk, n_q))

  def scored_chunks():
    for start, valid, qs in chunking.iterate_chunks(queries, query_chunk):
      sims = sum(_similarity(q["text"], q["weights"], e["video"], e["available"])
                 for q, e in zip(qs, embs)) / len(embs)
      if transform is not None:
        sims = transform(sims)
      yield start, valid, np.asarray(sims)[:valid]

  gt = np.zeros(n_q, np.float32)
  for start, valid, sims in scored_chunks():
    gt[start:start + valid] = sims[np.arange(valid), (start + np.arange(valid)) // k]
  acc = RetrievalAccumulator(gt.reshape(n_v, k), caption_mask, query_chunk=query_chunk)
  for start, _, sims in scored_chunks():
    acc.update(start, sims)
  return acc


class Scorer:
  """A trained TeachText model as the evaluators see it (`vtd.evaluators.retrieval`, `qbnorm`).

  Embeddings are computed once per split and kept, so several evaluators of one split (plain
  and QB-Norm) embed it once. Several models (`members`) are scored by the mean of their
  similarity matrices: the teachers' ensemble.
  """

  def __init__(self, members: Sequence[tuple[RetrievalModel, Any, str]], *,
               chunk_size: int = 1024):
    self._members = list(members)
    self._chunk_size = chunk_size
    self._cache: dict[int, list[dict[str, Any]]] = {}

  @classmethod
  def single(cls, model: RetrievalModel, variables: Any, text_embedding: str, *,
             chunk_size: int = 1024) -> "Scorer":
    return cls([(model, variables, text_embedding)], chunk_size=chunk_size)

  def embed(self, split: RetrievalSplit) -> list[dict[str, Any]]:
    """Per member, `embed_split` of `split` (cached)."""
    key = id(split)
    if key not in self._cache:
      self._cache[key] = [embed_split(m, v, split, t, chunk_size=self._chunk_size)
                          for m, v, t in self._members]
    return self._cache[key]

  def accumulate(self, split: RetrievalSplit, *, query_chunk: int = 2048,
                 transform: Callable[[jax.Array], jax.Array] | None = None
                 ) -> RetrievalAccumulator:
    return accumulate_from_embeddings(self.embed(split), split.caption_mask,
                                      query_chunk=query_chunk, transform=transform)

  def bank_similarities(self, bank: RetrievalSplit, gallery: RetrievalSplit
                        ) -> tuple[Callable[[int, int], jax.Array], int]:
    """(fn(start, stop) -> S_bank rows [stop - start, N_v], M) over the bank's existing
    captions; only their text is embedded (the bank's videos are not needed)."""
    if len(self._members) != 1:
      raise ValueError("QB-Norm scores one model, not an ensemble")
    (model, variables, text_embedding), = self._members
    (emb,) = self.embed(gallery)
    bank_text, bank_weights = embed_text(model, variables, bank, text_embedding,
                                         rows=np.flatnonzero(bank.caption_mask.reshape(-1)),
                                         chunk_size=self._chunk_size)

    def bank_sims(start, stop):
      return _similarity(tuple(t[start:stop] for t in bank_text), bank_weights[start:stop],
                         emb["video"], emb["available"])

    return bank_sims, bank_weights.shape[0]


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
  feats = _video_inputs(model, split)
  _encode_videos(model, variables, feats, chunk_size)  # Warm-up: compile outside the timing.
  start = time.perf_counter()
  jax.block_until_ready(_encode_videos(model, variables, feats, chunk_size))
  seconds = time.perf_counter() - start
  return {"experts": list(model.expert_names),
          "video_input_dims": int(sum(np.prod(s) for _, s in model.expert_shapes)),
          "video_params": video_params,
          "video_encode_ms_per_1k": 1e6 * seconds / split.num_videos}


def load_for_evaluation(variables: Any, config, metadata: dict[str, Any],
                        data_path: str | None = None) -> tuple[Scorer, Any]:
  """(Scorer, dataset) of an exported TeachText model, for `python -m vtd.evaluate`."""
  from vtd.teachtext import teachers as teachers_lib  # pylint: disable=g-import-not-at-top
  from vtd.teachtext import trainer  # pylint: disable=g-import-not-at-top
  data_cfg = config.data
  if data_path:
    data_cfg.path = data_path if data_cfg.source == "npz" else data_cfg.path
    data_cfg.root = data_path if data_cfg.source == "ce" else data_cfg.root
  data = trainer.load_data(data_cfg, [metadata["text_embedding"]])
  model = teachers_lib.build_model(config.model,
                                   [(n, tuple(s)) for n, s in metadata["expert_shapes"]])
  return Scorer.single(model, variables, metadata["text_embedding"],
                       chunk_size=config.eval.chunk_size), data
