"""In-memory text-video retrieval splits (the shape every TeachText reader produces).

A split holds, per video, the features of each video "expert" with an availability flag
(missing experts are zero-filled, the CE `drop_nans` convention), and, per caption and per text
embedding, word-level features. Captions are stored video-major, padded to K slots
(`caption_mask` says which exist), which is also the row order of the evaluation similarity
matrix (row = video * K + caption).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from vtd import artifacts
from vtd.errors import UserError


@dataclasses.dataclass
class RetrievalSplit:
  """One split.

  Attributes:
    video_ids: [N_v] identifiers.
    experts: name -> [N_v, D] (fixed-size expert) or [N_v, T, D] (token-sequence expert,
      zero-padded, pooled by NetVLAD in the model).
    expert_available: name -> [N_v] bool; False where the expert is missing for a video.
    text: embedding name -> [N_v, K, L, D_name] word features, zero-padded in K and L.
    caption_mask: [N_v, K] bool, True where caption slot k of video v exists.
    caption_noise: [N_v, K] bool, True where a caption is known to be wrong (injected label
      noise of the embedded data), else None. Only used to *report* denoising precision.
  """
  video_ids: list[str]
  experts: dict[str, np.ndarray]
  expert_available: dict[str, np.ndarray]
  text: dict[str, np.ndarray]
  caption_mask: np.ndarray
  caption_noise: np.ndarray | None = None

  def __post_init__(self):
    self.validate()

  @property
  def num_videos(self) -> int:
    return len(self.video_ids)

  @property
  def captions_per_video(self) -> int:
    return self.caption_mask.shape[1]

  @property
  def expert_names(self) -> list[str]:
    # Alphabetical, as the official code (compute_dims sorts modalities); the MoE weight index
    # m follows this order everywhere.
    return sorted(self.experts)

  def expert_dims(self) -> dict[str, tuple[int, ...]]:
    """name -> per-video feature shape, e.g. (64,) or (T, 24)."""
    return {k: tuple(v.shape[1:]) for k, v in sorted(self.experts.items())}

  def text_dim(self, embedding: str) -> int:
    return self.text[embedding].shape[-1]

  def validate(self) -> None:
    n = self.num_videos
    if self.caption_mask.ndim != 2 or self.caption_mask.shape[0] != n:
      raise UserError(f"caption_mask must be [N_v={n}, K], got {self.caption_mask.shape}")
    if not self.caption_mask.any(axis=1).all():
      bad = [self.video_ids[i] for i in np.flatnonzero(~self.caption_mask.any(axis=1))[:3]]
      raise UserError(f"videos without any caption: {bad}")
    for name, feats in self.experts.items():
      if feats.shape[0] != n:
        raise UserError(f"expert {name!r} has {feats.shape[0]} rows for {n} videos")
      avail = self.expert_available.get(name)
      if avail is None or avail.shape != (n,):
        raise UserError(f"expert {name!r} needs an availability vector of shape ({n},)")
    if self.caption_noise is not None and self.caption_noise.shape != self.caption_mask.shape:
      raise UserError(f"caption_noise must be [N_v, K] = {self.caption_mask.shape}, got "
                      f"{self.caption_noise.shape}")
    for name, feats in self.text.items():
      if feats.ndim != 4 or feats.shape[:2] != self.caption_mask.shape:
        raise UserError(f"text embedding {name!r} must be [N_v, K, L, D] with [N_v, K] = "
                         f"{self.caption_mask.shape}, got {feats.shape}")


@dataclasses.dataclass
class RetrievalDataset:
  """train / val / test splits sharing experts and text embeddings."""
  train: RetrievalSplit
  val: RetrievalSplit
  test: RetrievalSplit
  description: str = ""

  def split(self, name: str) -> RetrievalSplit:
    if name not in ("train", "val", "test"):
      raise UserError(f"unknown split {name!r}; expected train, val or test")
    return getattr(self, name)

  @property
  def text_embeddings(self) -> list[str]:
    return sorted(self.train.text)


_SPLITS = ("train", "val", "test")


def save_npz(ds: RetrievalDataset, path: str) -> None:
  """Writes vtd's single-file retrieval format (also the embedded dataset's cache).

  Keys: `<split>/video_ids`, `<split>/caption_mask`, `<split>/expert/<name>`,
  `<split>/available/<name>`, `<split>/text/<embedding>`, optionally `<split>/caption_noise`;
  written atomically.
  """
  arrays = {}
  for split in _SPLITS:
    s = ds.split(split)
    arrays[f"{split}/video_ids"] = np.asarray(s.video_ids)
    arrays[f"{split}/caption_mask"] = s.caption_mask
    if s.caption_noise is not None:
      arrays[f"{split}/caption_noise"] = s.caption_noise
    for k, v in s.experts.items():
      arrays[f"{split}/expert/{k}"] = v
      arrays[f"{split}/available/{k}"] = s.expert_available[k]
    for k, v in s.text.items():
      arrays[f"{split}/text/{k}"] = v
  artifacts.save_npz_atomic(path, **arrays)


def load_npz(path: str) -> RetrievalDataset:
  """Reads a file written by `save_npz`; a missing file or key is a one-line error."""
  if not os.path.isfile(path):
    raise UserError(f"retrieval data file not found: {path}")
  with np.load(path) as arrays:
    keys = set(arrays.files)
    splits = {}
    for split in _SPLITS:
      for required in ("video_ids", "caption_mask"):
        if f"{split}/{required}" not in keys:
          raise UserError(f"{path}: missing array '{split}/{required}'")
      pick = lambda kind, split=split: {k.split("/", 2)[2]: arrays[k] for k in sorted(keys)
                                        if k.startswith(f"{split}/{kind}/")}
      splits[split] = RetrievalSplit(
          video_ids=[str(v) for v in arrays[f"{split}/video_ids"]], experts=pick("expert"),
          expert_available=pick("available"), text=pick("text"),
          caption_mask=arrays[f"{split}/caption_mask"],
          caption_noise=(arrays[f"{split}/caption_noise"] if f"{split}/caption_noise" in keys
                         else None))
  return RetrievalDataset(**splits, description=f"npz {path}")
