"""Training and running the student nets, Multi-Net and EvalSeg-Net on the frame table.

Every network is trained by the shared loop (`vtd.train.fit`) from a `Program`; this module
only supplies the data iterators (grain, with the reference's resize-then-random-crop
augmentation), the losses and the batched inference.
"""

from __future__ import annotations

import functools
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vtd import chunking
from vtd import optim
from vtd import sharding
from vtd import train as train_lib
from vtd.segmentation import losses
from vtd.segmentation import models

def build_student(name: str, cfg: ml_collections.ConfigDict):
  """A student from `config.students.<name>` (width knobs) by registry name.

  Lists become tuples: an artifact's config comes back from JSON with lists where the config
  had tuples (U-Net widths), and a module with a list attribute cannot be hashed, i.e. cannot
  be a static argument of the jitted inference.
  """
  kwargs = cfg.get(name, ml_collections.ConfigDict()).to_dict()
  return models.build_student(name, **{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in kwargs.items()})


def _crop_iterator(images: np.ndarray, targets: np.ndarray, *, crop: int, batch_size: int,
                   seed: int, extra: np.ndarray | None = None):
  """Infinite grain iterator of random `crop` x `crop` crops of (image, target[, extra]).

  Rows of each global batch are gathered by this process only (`sharding.process_slice`).
  """
  n, a = images.shape[0], images.shape[1]
  if crop > a:
    raise ValueError(f"crop {crop} larger than the stored frames ({a})")
  rows = sharding.process_slice(batch_size)

  def pick(index, rng: np.random.Generator):
    y, x = rng.integers(0, a - crop + 1, size=2)
    return np.array([index, y, x], np.int64)

  def gather(batch):
    batch = batch[rows]
    out = {"image": np.stack([images[i, y:y + crop, x:x + crop] for i, y, x in batch]),
           "target": np.stack([targets[i, y:y + crop, x:x + crop] for i, y, x in batch])}
    if extra is not None:
      out["extra"] = extra[batch[:, 0]]
    return out

  ds = (grain.MapDataset.range(n).seed(seed).shuffle().repeat().random_map(pick)
        .batch(batch_size, drop_remainder=True).map(gather))
  return iter(ds.to_iter_dataset())


def _resize_like(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  return jax.image.resize(x, x.shape[:1] + tuple(hw) + x.shape[3:], "bilinear")


def student_steps(scfg: ml_collections.ConfigDict, student: str) -> int:
  """Training steps of `student`: its entry in `steps_per_student`, or `num_steps` if 0."""
  return int(scfg.steps_per_student.get(student, 0) or scfg.num_steps)


def student_program(name: str, model, images: np.ndarray, targets: np.ndarray,
                    config: ml_collections.ConfigDict, seed: int) -> train_lib.Program:
  """Regression of soft-mask targets [P, A, A] in [0, 1] from frames [P, A, A, 3] uint8."""
  scfg = config.student_training
  crop = config.data.image_size
  scale = scfg.target_scale

  def init_variables(rng):
    return model.init(rng, jnp.zeros((2, crop, crop, 3)), train=False)

  def loss_fn(params, batch_stats, batch, frozen, rng):
    del frozen, rng
    images_f = batch["image"].astype(jnp.float32) / 255.0
    pred, updates = model.apply({"params": params, "batch_stats": batch_stats}, images_f,
                                train=True, mutable=["batch_stats"])
    target = _resize_like(batch["target"][..., None], pred.shape[1:3]) * scale
    loss = losses.mask_loss(pred, target, scfg.loss)
    return loss, ({}, updates.get("batch_stats", batch_stats))

  return train_lib.Program(
      name=name, init_variables=init_variables, loss_fn=loss_fn,
      optimizer=optim.create_optimizer(config.optim, steps_per_epoch=1),
      train_iter=_crop_iterator(images, targets, crop=crop, batch_size=scfg.batch_size,
                                seed=seed),
      num_steps=student_steps(scfg, name.split("/")[-1]))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _predict_chunk(model, variables, images, size: int, scale: float):
  pred = model.apply(variables, images.astype(jnp.float32) / 255.0, train=False)
  return _resize_like(pred, (size, size))[..., 0] / scale


def predict(model, variables: Any, images: np.ndarray, *, size: int, scale: float,
            chunk_size: int = 64) -> np.ndarray:
  """Raw outputs [N, size, size] float32 of a student on frames [N, S, S, 3] uint8.

  Outputs are resized bilinearly to the common size (LowRes-Net predicts at 1/4) and divided
  by the target scale, so 1.0 is the top of the teacher's target range; they are not clipped
  (`selection.normalise` maps them to [0, 1] masks).
  """
  return chunking.chunked_apply(lambda x: _predict_chunk(model, variables, x, size, scale),
                                images, chunk_size)


def evalseg_program(model, images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                    config: ml_collections.ConfigDict, seed: int) -> train_lib.Program:
  """EvalSeg-Net regression of `labels` [P] (cos to Multi-Net) from (frame, candidate mask).

  Frames [P, s, s, 3] and masks [P, s, s] are at EvalSeg-Net's input size s (no crop).
  """
  ecfg = config.evalseg
  crop = images.shape[1]

  def init_variables(rng):
    return model.init(rng, jnp.zeros((2, crop, crop, 3)), jnp.zeros((2, crop, crop)),
                      train=False)

  def loss_fn(params, batch_stats, batch, frozen, rng):
    del frozen, rng
    images_f = batch["image"].astype(jnp.float32) / 255.0
    pred, updates = model.apply({"params": params, "batch_stats": batch_stats}, images_f,
                                batch["target"], train=True, mutable=["batch_stats"])
    loss = losses.evalseg_loss(pred, batch["extra"] * ecfg.label_scale)
    return loss, ({}, updates.get("batch_stats", batch_stats))

  return train_lib.Program(
      name="evalseg", init_variables=init_variables, loss_fn=loss_fn,
      optimizer=optim.create_optimizer(ecfg.optim, steps_per_epoch=1),
      train_iter=_crop_iterator(images, masks, crop=crop, batch_size=ecfg.batch_size,
                                seed=seed, extra=labels.astype(np.float32)),
      num_steps=ecfg.num_steps)


@functools.partial(jax.jit, static_argnums=0)
def _score_chunk(model, variables, images, masks):
  return model.apply(variables, images.astype(jnp.float32) / 255.0, masks, train=False)


def evalseg_scores(model, variables: Any, images: np.ndarray, masks: np.ndarray, *,
                   label_scale: float, chunk_size: int = 64) -> np.ndarray:
  """EvalSeg-Net scores [N] of candidate masks [N, S, S] on frames [N, S, S, 3], in cos units."""
  out = chunking.chunked_apply(lambda x: _score_chunk(model, variables, x["i"], x["m"]),
                               {"i": images, "m": masks.astype(np.float32)}, chunk_size)
  return out / label_scale
