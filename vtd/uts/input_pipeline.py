"""UTS data: a video collection (keyframes + FIVR annotation) and the student's training stream.

Two sources behind one interface (`VideoCollection`):
  * `synthetic` — the embedded FIVR-like collection (`vtd/uts/data/synthetic_fivr.py`), held in
    memory;
  * `directory` — real videos under `config.data.root`: one video file (`<id>.mp4`, `.avi`,
    ...) or frame folder (`<id>/`) per FIVR id, anywhere below the root, plus the FIVR
    `annotation.json`. Frames are decoded lazily (per extraction shard), every
    `frame_stride`-th frame, at most `max_frames` per video, resized to the working size. An
    unreadable video is skipped with a warning naming it and counted (`skipped`); it then
    simply never appears in any result list, which FIVR counts as a miss.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator

import grain
import ml_collections
import numpy as np
from absl import logging

from vtd import sharding
from vtd.uts.data import fivr as fivr_data
from vtd.uts.data import synthetic_fivr
from vtd.data import video_io
from vtd.errors import UserError
from vtd.segmentation import frames as frames_lib


@dataclasses.dataclass
class VideoCollection:
  """Database videos, queries and labels.

  Attributes:
    video_ids: [V] database ids, the database order (every result refers to these).
    query_ids: the queries (each must be a database video: FIVR queries are in the database).
    annotation: {query_id: {label: [ids]}} in the FIVR `annotation.json` format.
    read_frames: index -> uint8 [T, S, S, 3] keyframes at the working size; raises UserError
      for an unreadable video.
    image_size: the working size S.
    description: one line for logs and results.json.
    dataset_ids: the evaluation database (FIVR's youtube_ids.txt): positives outside it are
      dropped from the ground truth, ids in it without a video count as misses.
    val_query_ids, val_annotation: validation queries and their labels (same format), disjoint
      from the test queries; defaults are chosen on them. Empty when there are none.
    num_frames: the number of keyframes (None where it is only known after decoding).
  """
  video_ids: list[str]
  query_ids: list[str]
  annotation: dict[str, dict[str, list[str]]]
  read_frames: Callable[[int], np.ndarray]
  image_size: int
  description: str
  dataset_ids: list[str]
  val_query_ids: list[str] = dataclasses.field(default_factory=list)
  val_annotation: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
  num_frames: int | None = None  # Keyframes in all, where known without decoding.

  def __len__(self) -> int:
    return len(self.video_ids)

  def split_queries(self, split: str) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """(query ids, annotation) of `split` ('test' | 'val'), for the FIVR evaluator."""
    if split == "test":
      return self.query_ids, self.annotation
    if split == "val":
      if not self.val_query_ids:
        raise UserError("the collection has no validation queries: set config.data."
                        "val_annotation, or drop the 'val' evaluator from config.evals")
      return self.val_query_ids, self.val_annotation
    raise UserError(f"FIVR evaluation split must be test or val, got {split!r}")


def _synthetic(config: ml_collections.ConfigDict) -> VideoCollection:
  spec = synthetic_fivr.SyntheticFivrSpec(**config.data.synthetic.to_dict())
  cache_dir = os.path.expanduser(config.data.cache_dir) if config.data.cache_dir else None
  if not (cache_dir and os.path.exists(synthetic_fivr.cache_path(spec, cache_dir))):
    logging.info("generating the embedded FIVR-like collection%s",
                 f" (cached in {cache_dir})" if cache_dir else "")
  ds = synthetic_fivr.load_or_generate(spec, cache_dir)
  size = config.data.image_size

  def read(i: int) -> np.ndarray:
    frames = ds.frames[ds.offsets[i]:ds.offsets[i + 1]]
    if frames.shape[1:3] != (size, size):
      frames = frames_lib.resize_images(frames, size)
    return frames

  return VideoCollection(video_ids=list(ds.video_ids), query_ids=list(ds.query_ids),
                         annotation=ds.annotation, read_frames=read, image_size=size,
                         description=f"synthetic FIVR-like ({len(ds)} videos, "
                                     f"{ds.frames.shape[0]} keyframes)",
                         dataset_ids=list(ds.video_ids), val_query_ids=list(ds.val_query_ids),
                         val_annotation=ds.val_annotation, num_frames=int(ds.frames.shape[0]))


def _directory(config: ml_collections.ConfigDict) -> VideoCollection:
  root = os.path.expanduser(config.data.root)
  ann_path = os.path.expanduser(config.data.annotation or os.path.join(root, "annotation.json"))
  annotation = fivr_data.load_annotation(ann_path)
  paths = {}
  for path in video_io.scan_videos(root):
    vid = os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0]
    if vid in paths:
      raise UserError(f"two videos for id {vid!r} under {root}: {paths[vid]} and {path}")
    paths[vid] = path
  if not paths:
    raise UserError(f"no videos (files or frame folders) under {root}")
  if config.data.video_ids:
    wanted = fivr_data.load_dataset_ids(os.path.expanduser(config.data.video_ids))
    missing = len([v for v in wanted if v not in paths])
    if missing:
      logging.warning("%d of %d ids of %s have no video under %s (FIVR counts them as misses)",
                      missing, len(wanted), config.data.video_ids, root)
    video_ids = [v for v in wanted if v in paths]
    dataset_ids = wanted  # The FIVR repository's protocol: undownloaded positives are misses.
  else:
    video_ids = sorted(paths)
    dataset_ids = video_ids  # ViSiL's protocol: the database is what was downloaded.
  queries = [q for q in annotation if q in paths]
  if not queries:
    raise UserError(f"none of the {len(annotation)} queries of {ann_path} has a video under "
                    f"{root}")
  val_annotation, val_queries = {}, []
  if config.data.val_annotation:
    val_annotation = fivr_data.load_annotation(os.path.expanduser(config.data.val_annotation))
    overlap = sorted(set(val_annotation) & set(annotation))
    if overlap:
      raise UserError(f"validation query {overlap[0]!r} of {config.data.val_annotation} is "
                      f"also a test query of {ann_path}: use disjoint query sets")
    val_queries = [q for q in val_annotation if q in paths]
  size = config.data.image_size

  def read(i: int) -> np.ndarray:
    return video_io.open_any(paths[video_ids[i]], size=(size, size),
                             max_frames=config.data.max_frames or None,
                             stride=config.data.frame_stride)

  return VideoCollection(video_ids=video_ids, query_ids=queries, annotation=annotation,
                         read_frames=read, image_size=size,
                         description=f"{root} ({len(video_ids)} videos, {len(queries)} queries)",
                         dataset_ids=dataset_ids, val_query_ids=val_queries,
                         val_annotation=val_annotation)


def load_collection(config: ml_collections.ConfigDict) -> VideoCollection:
  """The collection named by `config.data.source` (synthetic | directory)."""
  if config.data.source == "synthetic":
    return _synthetic(config)
  if config.data.source == "directory":
    if not config.data.root:
      raise UserError("config.data.source='directory' needs config.data.root")
    return _directory(config)
  raise UserError(f"config.data.source must be synthetic|directory, got {config.data.source!r}")


def sample_training_frames(collection: VideoCollection, max_frames: int, seed: int
                           ) -> tuple[np.ndarray, list[tuple[str, str]]]:
  """Unsupervised training frames: uint8 [N, S, S, 3] from every readable database video.

  With `max_frames` > 0 and more keyframes than that, an evenly spread random subset of videos
  is read until `max_frames` frames are collected (all frames of each video read).
  """
  order = np.random.default_rng(seed).permutation(len(collection))
  chunks, skipped, total = [], [], 0
  for i in order:
    try:
      frames = collection.read_frames(int(i))
    except UserError as e:
      logging.warning("skipping unreadable video %s: %s", collection.video_ids[i], e)
      skipped.append((collection.video_ids[i], str(e)))
      continue
    chunks.append(frames)
    total += len(frames)
    if max_frames and total >= max_frames:
      break
  if not chunks:
    raise UserError("no readable training frames")
  frames = np.concatenate(chunks)
  return (frames[:max_frames] if max_frames else frames), skipped


def shuffled_batches(arrays: dict[str, np.ndarray], batch_size: int, seed: int, *,
                     rows_name: str, batch_key: str) -> Iterator[dict[str, np.ndarray]]:
  """Infinite, checkpointable grain stream of {key: rows of arrays[key]}: shuffled, repeated,
  batches of `batch_size` rows (a shuffle per epoch, seeded by `seed`).

  Each process yields its rows of every global batch (`sharding.process_slice`). `rows_name`
  and `batch_key` name the rows and the config key in the error for too few rows.
  """
  n = len(next(iter(arrays.values())))
  if n < batch_size:
    raise UserError(f"{n} {rows_name} < {batch_key} {batch_size}")
  rows = sharding.process_slice(batch_size)

  def gather(indices):
    indices = indices[rows]
    return {key: value[indices] for key, value in arrays.items()}

  ds = (grain.MapDataset.range(n).seed(seed).shuffle().repeat()
        .batch(batch_size, drop_remainder=True).map(gather))
  return iter(ds.to_iter_dataset())


def training_iterator(frames: np.ndarray, targets: np.ndarray, batch_size: int, seed: int
                      ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite, checkpointable grain stream of {'image': uint8 [b, S, S, 3], 'teacher': [b, D]};
  augmentation happens on device inside the step (vtd/data/augment.py)."""
  return shuffled_batches({"image": frames, "teacher": targets}, batch_size, seed,
                          rows_name="training frames", batch_key="train.batch_size")
