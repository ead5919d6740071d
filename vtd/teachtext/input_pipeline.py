"""TeachText input pipeline: grain over (video, caption) pairs of an in-memory split.

Training follows the official epoch definition: one pass over the *videos* in a fresh random
order each epoch, each video contributing one caption drawn uniformly from its existing ones.
Batches are formed from the global sequence and every process gathers only its own rows
(`sharding.process_slice`), so the global batch -- and therefore the result -- does not depend
on how many processes or devices run the job. Epoch boundaries are not respected by batches
(batching after `repeat`), so no example is dropped for shape reasons.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from vtd import sharding
from vtd.teachtext.data.retrieval import RetrievalSplit


def video_features(split: RetrievalSplit, video_idx: np.ndarray,
                   names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Expert features (name -> [B, ...]) and availability (name -> [B] float) of some videos,
  for the experts `names` (default: all of the split)."""
  names = split.expert_names if names is None else names
  return {"experts": {n: split.experts[n][video_idx] for n in names},
          "available": {n: split.expert_available[n][video_idx].astype(np.float32)
                        for n in names}}


def _pick_caption(split: RetrievalSplit):
  counts = split.caption_mask.sum(axis=1)

  def pick(video: int, rng: np.random.Generator) -> np.ndarray:
    valid = np.flatnonzero(split.caption_mask[video])
    return np.array([video, valid[rng.integers(counts[video])]], np.int64)
  return pick


def train_iterator(split: RetrievalSplit, *, global_batch_size: int, seed: int,
                   text_embeddings: Sequence[str]) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator of this process's rows of each global batch.

  Each element is {'video_idx': [b], 'caption_idx': [b], 'experts': {name: [b, ...]},
  'available': {name: [b]}, 'text': {embedding: [b, L, D]}} with b = global_batch_size / process_count.
  """
  missing = [e for e in text_embeddings if e not in split.text]
  if missing:
    raise ValueError(f"text embeddings {missing} not in the dataset (has {sorted(split.text)})")
  rows = sharding.process_slice(global_batch_size)

  def gather(pairs: np.ndarray) -> dict:
    pairs = pairs[rows]
    vid, cap = pairs[:, 0], pairs[:, 1]
    return {"video_idx": vid, "caption_idx": cap, **video_features(split, vid),
            "text": {e: split.text[e][vid, cap] for e in text_embeddings}}

  ds = (grain.MapDataset.range(split.num_videos).seed(seed).shuffle().repeat()
        .random_map(_pick_caption(split))
        .batch(global_batch_size, drop_remainder=True)
        .map(gather))
  return iter(ds.to_iter_dataset())


def caption_rows(split: RetrievalSplit) -> tuple[np.ndarray, np.ndarray]:
  """All (video, caption) slots in evaluation order: row = video * K + caption. [N_v * K] each."""
  n, k = split.caption_mask.shape
  return np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
