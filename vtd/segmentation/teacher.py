"""Generation-1 teacher: VideoPCA over every training video, batched and sharded over `data`."""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np

from vtd import sharding
from vtd.segmentation import frames as frames_lib
from vtd.segmentation import input_pipeline
from vtd.segmentation import selection
from vtd.segmentation import videopca


def videopca_config(cfg: ml_collections.ConfigDict) -> videopca.VideoPCAConfig:
  """`config.teacher.videopca` -> VideoPCAConfig (size 0 = run at the input resolution)."""
  fields = cfg.to_dict()
  size = fields.pop("size")
  return videopca.VideoPCAConfig(size=(size, size) if size else None, **fields)


def soft_masks(videos: list[np.ndarray], vcfg: videopca.VideoPCAConfig, mesh,
               batch_videos: int) -> list[np.ndarray]:
  """VideoPCA soft masks [T_i, h, w] of videos [T_i, H, W, 3] uint8 (same H, W).

  Videos longer than `max_frames` are split into near-equal chunks (one PCA each); chunks are
  zero-padded to a common length with a frame mask and processed `batch_videos` at a time,
  the batch split over the mesh's `data` axis (padding videos are all-masked and dropped).
  """
  chunks = [(i, a, b) for i, v in enumerate(videos)
            for a, b in videopca.split_video(v.shape[0], vcfg.max_frames)]
  t_max = max(b - a for _, a, b in chunks)
  n_dev = mesh.devices.size
  per_call = max(n_dev, math.ceil(batch_videos / n_dev) * n_dev)
  h, w = videos[0].shape[1:3]
  out = [None] * len(videos)
  pieces: dict[int, list[tuple[int, np.ndarray]]] = {}
  for start in range(0, len(chunks), per_call):
    group = chunks[start:start + per_call]
    batch = np.zeros((per_call, t_max, h, w, 3), np.uint8)
    mask = np.zeros((per_call, t_max), bool)
    for j, (i, a, b) in enumerate(group):
      batch[j, :b - a] = videos[i][a:b]
      mask[j, :b - a] = True
    with jax.set_mesh(mesh):
      res = videopca.videopca_batch(sharding.shard_batch(batch, mesh),
                                    sharding.shard_batch(mask, mesh), cfg=vcfg)
    res = sharding.gather_to_host(res)
    for j, (i, a, b) in enumerate(group):
      pieces.setdefault(i, []).append((a, res[j, :b - a]))
  for i, parts in pieces.items():
    out[i] = np.concatenate([p for _, p in sorted(parts, key=lambda x: x[0])])
  return out


def frame_table(train: input_pipeline.TrainVideos, config: ml_collections.ConfigDict, mesh
                ) -> frames_lib.FrameTable:
  """VideoPCA on every training video -> the frame table at the augmentation size.

  Reads `config.teacher` and `config.data.image_size` / `augment_scale`.
  """
  vcfg = videopca_config(config.teacher.videopca)
  aug = int(round(config.data.image_size * config.data.augment_scale))
  masks = soft_masks(train.videos, vcfg, mesh, config.teacher.batch_videos)
  scores = np.concatenate([selection.nonzero_mean_scores(m) for m in masks])
  gt = None
  if train.gt_masks is not None:
    gt = np.concatenate([frames_lib.resize_masks(m.astype(np.float32), (aug, aug)) > 0.5
                         for m in train.gt_masks])
  return frames_lib.FrameTable(
      images=np.concatenate([frames_lib.resize_images(v, aug) for v in train.videos]),
      teacher=np.concatenate([frames_lib.resize_masks(m, (aug, aug)) for m in masks]),
      scores=scores,
      video_index=np.concatenate([np.full(len(m), i) for i, m in enumerate(masks)]),
      frame_index=np.concatenate([np.arange(len(m)) for m in masks]),
      gt_masks=gt)


def held_out_masks(test: input_pipeline.TestSet, vcfg: videopca.VideoPCAConfig, mesh,
                   batch_videos: int, size: int) -> np.ndarray | None:
  """[N, size, size] teacher masks of a held-out set's images, from VideoPCA on their source
  videos; None for sets of single images (no videos to run VideoPCA on)."""
  if test.videos is None:
    return None
  video_masks = soft_masks(test.videos, vcfg, mesh, batch_videos)
  picked = np.stack([video_masks[v][f] for v, f in zip(test.video_index, test.frame_index)])
  return frames_lib.resize_masks(picked, (size, size))
