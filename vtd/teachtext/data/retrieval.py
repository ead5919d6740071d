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
from vtd.data import file_errors
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
    seen = set()
    for vid in self.video_ids:
      if vid in seen:
        raise UserError(f"video id {vid!r} occurs twice (it would be two retrieval targets)")
      seen.add(vid)
    if not self.caption_mask.any(axis=1).all():
      bad = [self.video_ids[i] for i in np.flatnonzero(~self.caption_mask.any(axis=1))[:3]]
      raise UserError(f"videos without any caption: {bad}")
    for name, feats in self.experts.items():
      if feats.ndim not in (2, 3) or feats.shape[0] != n:
        raise UserError(f"expert {name!r} must be [N_v={n}, D] or [N_v={n}, T, D], got "
                        f"{feats.shape}")
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
  """train / val / test splits sharing experts and text embeddings (`validate`)."""
  train: RetrievalSplit
  val: RetrievalSplit
  test: RetrievalSplit
  description: str = ""

  def __post_init__(self):
    self.validate()

  def split(self, name: str) -> RetrievalSplit:
    if name not in ("train", "val", "test"):
      raise UserError(f"unknown split {name!r}; expected train, val or test")
    return getattr(self, name)

  @property
  def text_embeddings(self) -> list[str]:
    return sorted(self.train.text)

  def validate(self, where: str | None = None) -> None:
    """Checks that every split has the same experts and text embeddings, of the same shapes.

    Models are built from the training split's shapes and then evaluated on val / test, so a
    split that disagrees fails only after training (a ScopeParamShapeError, or silently
    different NetVLAD features: padding tokens are not masked, so even the token counts T and
    L must agree). Caption slots K may differ (val / test keep fewer captions per video).

    Args:
      where: the data source named in errors (default: `description`).

    Raises:
      UserError: "<where>: key <split>/<kind>/<name> has shape ... but <train key> has ...".
    """
    where = where or self.description or "retrieval data"
    ref = self.train
    for split in ("val", "test"):
      other = self.split(split)
      for kind, ref_arrays, arrays, fixed in (("expert", ref.experts, other.experts, 1),
                                              ("text", ref.text, other.text, 2)):
        if sorted(arrays) != sorted(ref_arrays):
          raise UserError(f"{where}: split {split!r} has {kind} arrays {sorted(arrays)} but "
                          f"split 'train' has {sorted(ref_arrays)}; every split needs the "
                          f"same ones")
        for name in sorted(ref_arrays):
          # Experts: all but N_v must agree ([D] or [T, D]); text: all but N_v and K ([L, D]).
          if arrays[name].shape[fixed:] != ref_arrays[name].shape[fixed:]:
            raise UserError(
                f"{where}: key {split}/{kind}/{name} has shape {list(arrays[name].shape)} but "
                f"train/{kind}/{name} has {list(ref_arrays[name].shape)}; every split must "
                f"share the dimensions after {'N_v' if fixed == 1 else 'N_v, K'} (extract all "
                f"splits with the same feature extractor and token limits)")
    for split in ("train", "val", "test"):
      for kind, arrays in (("expert", self.split(split).experts),
                           ("text", self.split(split).text)):
        for name, values in sorted(arrays.items()):
          if not _all_finite(values):
            raise UserError(f"{where}: key {split}/{kind}/{name} holds NaN or infinite values; "
                            f"store missing features as zeros with available=False")


def _all_finite(values: np.ndarray, chunk_bytes: int = 1 << 26) -> bool:
  """np.isfinite(values).all(), 64 MB of rows at a time (no boolean copy of a multi-GB array:
  a [N_v, 20, 37, 1600] float16 text array is 2.4 MB per video)."""
  if not np.issubdtype(values.dtype, np.inexact) or not values.size:
    return True
  rows = max(1, chunk_bytes // max(1, values[:1].nbytes))
  return all(np.isfinite(values[i:i + rows]).all() for i in range(0, len(values), rows))


_SPLITS = ("train", "val", "test")
_REMEDY = ("re-create it (python -m vtd.teachtext.data.ce_features ... --out FILE, or "
           "vtd.teachtext.data.retrieval.save_npz)")


def to_arrays(ds: RetrievalDataset) -> dict[str, np.ndarray]:
  """The arrays of vtd's single-file retrieval format.

  Keys: `<split>/video_ids`, `<split>/caption_mask`, `<split>/expert/<name>`,
  `<split>/available/<name>`, `<split>/text/<embedding>`, optionally `<split>/caption_noise`.
  """
  arrays = {}
  for split in _SPLITS:
    s = ds.split(split)
    arrays[f"{split}/video_ids"] = np.asarray(s.video_ids, dtype=str)
    arrays[f"{split}/caption_mask"] = s.caption_mask
    if s.caption_noise is not None:
      arrays[f"{split}/caption_noise"] = s.caption_noise
    for k, v in s.experts.items():
      arrays[f"{split}/expert/{k}"] = v
      arrays[f"{split}/available/{k}"] = s.expert_available[k]
    for k, v in s.text.items():
      arrays[f"{split}/text/{k}"] = v
  return arrays


def from_arrays(arrays: dict[str, np.ndarray], where: str,
                description: str = "") -> RetrievalDataset:
  """Inverse of `to_arrays`; errors name `where` (the file) and the split.

  Raises:
    UserError: a missing or mistyped array, or splits that disagree (`RetrievalDataset.validate`).
  """
  splits = {}
  for split in _SPLITS:
    for required in ("video_ids", "caption_mask"):
      if f"{split}/{required}" not in arrays:
        raise UserError(f"{where}: missing array '{split}/{required}'; {_REMEDY}")
    for key in sorted(arrays):
      if not key.startswith(f"{split}/"):
        continue
      value = arrays[key]
      kind = key.split("/")[1]
      named = key.count("/") == 2 and key.split("/")[2]
      if not (kind in ("video_ids", "caption_mask", "caption_noise") and key.count("/") == 1
              or kind in ("expert", "available", "text") and named):
        raise UserError(f"{where}: unknown array '{key}' (expected <split>/video_ids, "
                        f"caption_mask, caption_noise, expert/<name>, available/<name> or "
                        f"text/<name>); {_REMEDY}")
      if kind == "available" and f"{split}/expert/{named}" not in arrays:
        raise UserError(f"{where}: array '{key}' has no expert '{split}/expert/{named}'; "
                        f"{_REMEDY}")
      if kind in ("caption_mask", "caption_noise", "available") and value.dtype != bool:
        raise UserError(f"{where}: array '{key}' must be bool, got {value.dtype}; {_REMEDY}")
      if kind in ("expert", "text") and not np.issubdtype(value.dtype, np.floating):
        raise UserError(f"{where}: array '{key}' must be floating point, got {value.dtype}; "
                        f"{_REMEDY}")
      if kind == "video_ids" and (value.ndim != 1 or value.dtype.kind not in "US"):
        raise UserError(f"{where}: array '{key}' must be a [N_v] array of strings, got "
                        f"{value.dtype} {value.shape}; {_REMEDY}")
    pick = lambda kind, split=split: {k.split("/", 2)[2]: arrays[k] for k in sorted(arrays)
                                      if k.startswith(f"{split}/{kind}/")}
    try:
      splits[split] = RetrievalSplit(
          video_ids=[str(v) for v in arrays[f"{split}/video_ids"]], experts=pick("expert"),
          expert_available=pick("available"), text=pick("text"),
          caption_mask=arrays[f"{split}/caption_mask"],
          caption_noise=arrays.get(f"{split}/caption_noise"))
    except UserError as e:
      raise UserError(f"{where}: split {split!r}: {e}") from None
  # Validated on construction: errors name `description`, the file by default.
  return RetrievalDataset(**splits, description=description or where)


def save_npz(ds: RetrievalDataset, path: str) -> None:
  """Writes vtd's single-file retrieval format (`to_arrays`), atomically."""
  artifacts.save_npz_atomic(path, **to_arrays(ds))


def load_npz(path: str) -> RetrievalDataset:
  """Reads a file written by `save_npz`, validated before anything trains on it.

  Raises:
    UserError (one line naming the file): missing, not an .npz, corrupt or truncated, a
    missing or mistyped array, or splits whose dimensions disagree.
  """
  if not os.path.isfile(path):
    raise UserError(f"retrieval data file not found: {path}; fix config.data.path (a vtd "
                    "retrieval .npz, e.g. from python -m vtd.teachtext.data.ce_features)")
  arrays = file_errors.read_npz(path, "retrieval data file", _REMEDY)
  return from_arrays(arrays, path)
