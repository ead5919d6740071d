"""Frame-feature extraction over a video collection: resumable shards, data-parallel.

The collection is cut into shards of `shard_videos` consecutive database videos. Hosts split
the shards round-robin (shard k goes to process k mod P) and each host runs the jitted
network over its *local* devices (a `data` mesh of `jax.local_devices()`, frames sharded along
it), so no cross-host collective is needed for inference. A shard is written atomically as
`<dir>/shard_<k>.npz` and never recomputed: a killed run resumes at the first missing shard,
and a finished extraction is reused. An unreadable video is skipped with a warning, and listed
in its shard.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from vtd import artifacts
from vtd import chunking
from vtd import sharding
from vtd.errors import UserError
from vtd.uts import input_pipeline

# uint8 frames [B, S, S, 3] -> {name: [B, D_name]} per-frame features.
EmbedFn = Callable[[jax.Array], dict[str, jax.Array]]


@dataclasses.dataclass
class FrameFeatures:
  """Per-frame features of a collection.

  Attributes:
    features: {name: float32 [F, D_name]}, frames of all readable videos, database order.
    frame_video: [F] int64 index into the collection's `video_ids` of each frame.
    skipped: ids of the videos that could not be read.
  """
  features: dict[str, np.ndarray]
  frame_video: np.ndarray
  skipped: list[str]


def _shard_path(directory: str, k: int) -> str:
  return os.path.join(directory, f"shard_{k:05d}.npz")


def embed_frames(embed: EmbedFn, frames: np.ndarray, batch_frames: int, mesh) -> dict:
  """`embed` over frames [N, S, S, 3] in padded chunks of `batch_frames`, sharded over `mesh`.

  Every call has the full chunk shape (one compilation, divisible by the devices); padding
  rows are dropped from the outputs.
  """
  shard = NamedSharding(mesh, P(sharding.DATA_AXIS))
  outputs = []
  for _, valid, chunk in chunking.iterate_chunks(frames, batch_frames):
    out = embed(jax.device_put(chunk, shard))
    outputs.append({k: np.asarray(v)[:valid] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def extract(collection: input_pipeline.VideoCollection, embed: EmbedFn, directory: str, *,
            shard_videos: int, batch_frames: int) -> FrameFeatures:
  """Runs `embed` on every keyframe of `collection`, shard by shard; returns all features.

  Args:
    collection: the videos.
    embed: jitted per-frame network (see `EmbedFn`); its outputs are stored as float32.
    directory: where shards go (created).
    shard_videos: videos per shard (the unit of resumption and of host parallelism).
    batch_frames: frames per jitted call; must be divisible by the local device count.
  """
  local = jax.local_devices()
  if batch_frames % len(local):
    raise UserError(f"extract.batch_frames={batch_frames} is not divisible by the "
                    f"{len(local)} local devices")
  if shard_videos < 1:
    raise UserError(f"extract.shard_videos must be >= 1, got {shard_videos}")
  mesh = sharding.make_mesh(local)
  os.makedirs(directory, exist_ok=True)
  total = num_shards(len(collection), shard_videos)
  todo = [k for k in range(jax.process_index(), total, jax.process_count())
          if not os.path.exists(_shard_path(directory, k))]
  if todo:
    logging.info("extracting %d of %d shards into %s", len(todo), total, directory)
  for k in todo:
    start, stop = k * shard_videos, min((k + 1) * shard_videos, len(collection))
    frames, owners, skipped = [], [], []
    for i in range(start, stop):
      try:
        f = collection.read_frames(i)
      except UserError as e:
        logging.warning("skipping unreadable video %s: %s", collection.video_ids[i], e)
        skipped.append(collection.video_ids[i])
        continue
      frames.append(f)
      owners.append(np.full(len(f), i, np.int64))
    if frames:
      feats = embed_frames(embed, np.concatenate(frames), batch_frames, mesh)
      feats = {name: np.asarray(v, np.float32) for name, v in feats.items()}
    else:
      feats = {}
    artifacts.save_npz_atomic(_shard_path(directory, k), frame_video=np.concatenate(owners or [
        np.zeros(0, np.int64)]), skipped=np.asarray(skipped, dtype=str),
                     **{f"feat_{n}": v for n, v in feats.items()})
  sharding.sync(f"extract-{directory}")
  return load(directory, total)


def transform(src: str, dst: str, count: int,
              fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> FrameFeatures:
  """Writes `fn(features)` of each of the `count` finished shards in `src` to `dst` (same
  shard numbering, frame owners and skipped lists); shards already in `dst` are kept.
  Hosts split the shards round-robin, as `extract`."""
  os.makedirs(dst, exist_ok=True)
  for k in range(jax.process_index(), count, jax.process_count()):
    if os.path.exists(_shard_path(dst, k)):
      continue
    with np.load(_shard_path(src, k)) as z:
      arrays = {key: z[key] for key in z.files}
    feats = {key[5:]: v for key, v in arrays.items() if key.startswith("feat_")}
    out = fn(feats) if feats else {}
    artifacts.save_npz_atomic(_shard_path(dst, k), frame_video=arrays["frame_video"],
                              skipped=arrays["skipped"],
                              **{f"feat_{n}": np.asarray(v, np.float32) for n, v in out.items()})
  sharding.sync(f"transform-{dst}")
  return load(dst, count)


def num_shards(num_videos: int, shard_videos: int) -> int:
  return -(-num_videos // shard_videos)


def load(directory: str, count: int) -> FrameFeatures:
  """Concatenates the `count` shards of a finished extraction."""
  parts: dict[str, list[np.ndarray]] = {}
  owners, skipped = [], []
  for k in range(count):
    path = _shard_path(directory, k)
    if not os.path.exists(path):
      raise UserError(f"extraction shard missing: {path} (was the extraction interrupted on "
                      "another host?)")
    with np.load(path) as z:
      owners.append(z["frame_video"])
      skipped += [str(s) for s in z["skipped"]]
      for key in z.files:
        if key.startswith("feat_"):
          parts.setdefault(key[5:], []).append(z[key])
  return FrameFeatures(features={n: np.concatenate(v) for n, v in parts.items()},
                       frame_video=np.concatenate(owners), skipped=skipped)


def describe(features: FrameFeatures) -> dict[str, Any]:
  return {"frames": int(features.frame_video.size), "skipped_videos": len(features.skipped),
          "dims": {n: int(v.shape[1]) for n, v in features.features.items()}}
