"""Caption denoising with the teachers (TeachText journal version, "removing noisy descriptions").

The official code only *consumes* a per-caption 0/1 mask (`caption_masks`, training captions
drawn with p proportional to the mask); the rule that produced the released masks is NOT FOUND
(reference teachtext.md §2.5; the recalled rule: teachers score each training caption against
its video, captions whose ground-truth rank is too large are noisy). vtd's rule, documented
and configurable (`config.denoise`):

1. Score: every training caption is a query against all training videos under the teachers'
   aggregate similarity (the mean of their [Q, N_v] matrices, the same Phi = mean that
   TeachText distils). Its score is the rank of its own video (0 = retrieved first; ties get
   the averaged position, as the retrieval metrics).
2. Drop: the `fraction` of training captions with the largest rank (`fraction` > 0), or every
   caption whose rank is >= `max_rank` (`max_rank` > 0). A video's best-ranked caption is
   always kept, so no training video disappears.
Test and validation captions are never touched. Where the data know which captions are wrong
(the embedded data's injected noise), the precision and recall of the removal are reported.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vtd.teachtext.data.retrieval import RetrievalSplit
from vtd.errors import UserError
from vtd.teachtext import evaluate as tt_evaluate


def caption_ranks(embs: Sequence[dict[str, Any]], caption_mask: np.ndarray, *,
                  query_chunk: int = 2048) -> np.ndarray:
  """Rank of each caption's own video under the mean of several models' similarities.

  Args:
    embs: `tt_evaluate.embed_split` outputs of the teachers on the *training* split.
    caption_mask: [N_v, K].

  Returns:
    [N_v, K] float ranks (0-based, tie-averaged as the retrieval metrics); inf for empty
    caption slots.
  """
  return tt_evaluate.accumulate_from_embeddings(
      embs, caption_mask, query_chunk=query_chunk).caption_ranks()


def select_captions(ranks: np.ndarray, caption_mask: np.ndarray, *, fraction: float = 0.0,
                    max_rank: float = 0.0) -> np.ndarray:
  """The kept-caption mask [N_v, K] (module docstring, step 2)."""
  if (fraction > 0) == (max_rank > 0):
    raise UserError("config.denoise: set exactly one of fraction (> 0) and max_rank (> 0), "
                    f"got fraction={fraction}, max_rank={max_rank}")
  if not 0 <= fraction < 1:
    raise UserError(f"config.denoise.fraction must be in [0, 1), got {fraction}")
  keep = caption_mask.copy()
  # A video's best caption is protected: it can never be dropped.
  best = np.zeros_like(caption_mask)
  best[np.arange(len(ranks)), np.argmin(ranks, axis=1)] = True
  candidates = caption_mask & ~best
  if fraction > 0:
    num_drop = min(int(round(fraction * caption_mask.sum())), int(candidates.sum()))
    flat = np.where(candidates, ranks, -np.inf).ravel()
    order = np.argsort(-flat, kind="stable")[:num_drop]
    keep.ravel()[order] = False
  else:
    keep &= ~(candidates & (ranks >= max_rank))
  return keep


def removal_quality(kept: np.ndarray, caption_mask: np.ndarray,
                    noise: np.ndarray | None) -> dict[str, float]:
  """Counts, and precision / recall of the removed captions against known noise."""
  removed = caption_mask & ~kept
  out = {"captions": int(caption_mask.sum()), "removed": int(removed.sum())}
  if noise is not None:
    noisy = noise & caption_mask
    out["noisy"] = int(noisy.sum())
    out["precision"] = float((removed & noisy).sum() / max(removed.sum(), 1))
    out["recall"] = float((removed & noisy).sum() / noisy.sum()) if noisy.any() else None
    out["noise_rate_before"] = float(noisy.sum() / caption_mask.sum())
    out["noise_rate_after"] = float((noisy & kept).sum() / kept.sum())
  return out


def denoise(loaded_teachers: Sequence[tuple[Any, Any]], split: RetrievalSplit, denoise_cfg,
            *, chunk_size: int = 1024, query_chunk: int = 2048
            ) -> tuple[np.ndarray, dict[str, float]]:
  """Scores the training captions with the teachers and drops the noisiest.

  Returns:
    The kept-caption mask [N_v, K] and `removal_quality`.
  """
  if not loaded_teachers:
    raise UserError("config.denoise needs teachers (config.teachers)")
  embs = [tt_evaluate.embed_split(t.model, v, split, t.text_embedding, chunk_size=chunk_size)
          for t, v in loaded_teachers]
  ranks = caption_ranks(embs, split.caption_mask, query_chunk=query_chunk)
  kept = select_captions(ranks, split.caption_mask, fraction=denoise_cfg.fraction,
                         max_rank=denoise_cfg.max_rank)
  return kept, removal_quality(kept, split.caption_mask, split.caption_noise)
