"""Source-domain pretraining of the teacher's ResNet-50: the ImageNet stand-in of the embedded run.

UTS's teacher is a *pretrained* ResNet-50, frozen (reference §A.1). Without downloads, vtd
pretrains it here by supervised classification of the labelled source-domain images of
`vtd.uts.data.synthetic_source_images` (ResNet-50 -> global average pool -> linear classifier,
cross-entropy), through the shared `vtd.train.fit` (checkpoints, resume, keep-best on the
held-out validation images' top-1 accuracy). Only the backbone is kept (`fc` is dropped, as
`weights.load_resnet50_npz` drops torchvision's).

The weights are a pure function of `config.pretrain` and the backbone's shape keys, so they
are cached across workdirs: with a `data.cache_dir` the entry lives in
`<cache_dir>/uts_pretrain/<arch>-<key>/`, where `key` hashes those fields and `VERSION`; every
seed of a sweep (and every later run) reuses it, and an interrupted one resumes from its
checkpoints. Without a cache dir the entry is `<workdir>/pretrain/weights/`. Either way the
workdir's `pretrain` (or `pretrain_student`) stage records the entry and the digest of its
weights (`weights_digest`), and the teacher / student stages check that digest when they load
them, so a changed entry cannot silently feed stages trained on another.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from vtd import artifacts
from vtd import optim
from vtd import sharding
from vtd import stages
from vtd import train as train_lib
from vtd.data import augment
from vtd.uts.data import synthetic_source_images as source_lib
from vtd.errors import UserError
from vtd.uts import input_pipeline
from vtd.uts import models
from vtd.uts import weights

VERSION = 1  # Bump when the pretraining recipe changes: it is part of the cache key.
ENTRY_DONE = "entry.json"  # Written last into an entry: {"result": ...}.
BACKBONE_DIR = "model"  # The entry's backbone artifact (classifier head dropped).
LOCAL_ENTRY = "weights"  # Without a cache dir: the entry inside the workdir stage.


ARCHS = ("resnet50", "vgg16")


class Classifier(nn.Module):
  """backbone -> GAP -> linear: [B, H, W, 3] -> [B, num_classes] logits."""
  backbone: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    fmap = self.backbone(images, train=train)
    return nn.Dense(self.num_classes, name="fc")(models.gap(fmap))


def _backbone(config: ml_collections.ConfigDict, arch: str) -> nn.Module:
  """The teacher's ResNet-50, or the student's VGG16 (blocks 1-4 + a UTS-shaped head standing
  in for block 5, which is dropped after pretraining, as the paper replaces ImageNet VGG16's
  block 5)."""
  if arch == "resnet50":
    return models.ResNet50(width=config.teacher.width)
  if arch == "vgg16":
    scfg = config.student
    return models.VGG16Student(width=scfg.width, head_width=scfg.head_width,
                               out_dim=scfg.head_width, head_kernel=scfg.head_kernel)
  raise UserError(f"pretraining architecture must be one of {ARCHS}, got {arch!r}")


def source_spec(config: ml_collections.ConfigDict) -> source_lib.SourceImagesSpec:
  return source_lib.SourceImagesSpec(**config.pretrain.source.to_dict())


def cache_key(config: ml_collections.ConfigDict, arch: str) -> str:
  """Hash of everything the pretrained weights of `arch` depend on."""
  shape = ({"width": config.teacher.width} if arch == "resnet50" else
           {k: config.student[k] for k in ("width", "head_width", "head_kernel")})
  payload = {"pretrain": config.pretrain.to_dict(), "arch": arch, "shape": shape,
             "source": source_spec(config).cache_key(), "version": VERSION}
  text = json.dumps(payload, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry_dir(config: ml_collections.ConfigDict, stage_dir: str, arch: str) -> str:
  """`<cache_dir>/uts_pretrain/<arch>-<key>` (shared by workdirs), else `<stage_dir>/weights`
  (the workdir's pretraining stage)."""
  if config.data.cache_dir:
    return os.path.join(os.path.expanduser(config.data.cache_dir), "uts_pretrain",
                        f"{arch}-{cache_key(config, arch)}")
  return os.path.join(str(stage_dir), LOCAL_ENTRY)


def _input(images: jax.Array, size: int) -> jax.Array:
  """uint8 or [0, 1] float [B, S, S, 3] -> ImageNet-normalised [B, size, size, 3]."""
  x = weights.imagenet_normalize(images)
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
  return x


def _program(config: ml_collections.ConfigDict, data: source_lib.SourceImages, mesh, arch: str
             ) -> train_lib.Program:
  pcfg = config.pretrain
  model = Classifier(backbone=_backbone(config, arch), num_classes=data.spec.num_classes)
  size = pcfg.image_size
  aug_cfg = augment.AugmentConfig.from_config(pcfg.augment)
  sharding.check_batch_size(pcfg.train.batch_size, mesh, "pretrain.train.batch_size")

  def loss_fn(params, batch_stats, batch, frozen, rng):
    del frozen
    x = augment.augment(rng, batch["image"].astype(jnp.float32) / 255.0, aug_cfg)
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                  _input(x, size), train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, ({"top1": accuracy}, updates["batch_stats"])

  predict = jax.jit(lambda v, x: jnp.argmax(model.apply(v, _input(x, size), train=False), -1))

  def evaluate(variables):
    hits = 0
    for start in range(0, len(data.val_images), 128):
      x = data.val_images[start:start + 128]
      hits += int(np.sum(np.asarray(predict(variables, x)) == data.val_labels[start:start + 128]))
    return {"top1": hits / len(data.val_images)}

  def init(rng):
    return dict(model.init(rng, jnp.zeros((1, size, size, 3)), train=False))

  return train_lib.Program(
      name=f"pretrain_{arch}", init_variables=init, loss_fn=loss_fn,
      optimizer=optim.create_optimizer(
          pcfg.optim, steps_per_epoch=-(-len(data.train_images) // pcfg.train.batch_size)),
      train_iter=input_pipeline.shuffled_batches(
          {"image": data.train_images, "label": data.train_labels}, pcfg.train.batch_size,
          pcfg.seed, rows_name="source images", batch_key="pretrain.train.batch_size"),
      num_steps=pcfg.train.num_steps, evaluate=evaluate)


@contextlib.contextmanager
def _exclusive(directory: str):
  """One process at a time builds a shared cache entry (others wait, then reuse it).

  Only in single-process runs: the processes of one multi-host job train it together.
  """
  if jax.process_count() > 1:
    yield
    return
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  with open(directory + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _finished(directory: str) -> dict[str, Any] | None:
  """The recorded result of a complete entry (also one written by an older vtd), else None."""
  for name in (ENTRY_DONE, stages.DONE_FILE):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      try:
        with open(path) as f:
          record = json.load(f)
      except (OSError, ValueError):
        continue  # A damaged marker: the entry is rebuilt (fit resumes from its checkpoints).
      return record.get("result", record)
  return None


def weights_digest(directory: str) -> str:
  """Content hash of the pretrained backbone of an entry (what its dependants record)."""
  with open(os.path.join(directory, BACKBONE_DIR, artifacts.VARIABLES), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:20]


def run(config: ml_collections.ConfigDict, stage_dir: str, mesh, arch: str = "resnet50"
        ) -> tuple[dict[str, Any], str]:
  """Pretrains `arch` (or reuses the finished entry); returns (its result, the entry directory).

  The entry is `entry_dir(config, stage_dir, arch)`: shared through the cache, or the
  workdir stage's own `weights/`. Reads `config.pretrain`, the backbone's shape keys and
  `config.data.cache_dir`.
  """
  directory = entry_dir(config, stage_dir, arch)
  with _exclusive(directory):
    result = _finished(directory)
    if result is not None:
      logging.info("pretrained %s: reusing %s", arch, directory)
      return result, directory
    logging.info("pretraining the %s on the generated source-domain images (into %s)", arch,
                 directory)
    t0 = time.time()
    data = source_lib.load_or_generate(source_spec(config), config.data.cache_dir or None)
    generated = time.time() - t0
    fit = train_lib.fit(_program(config, data, mesh, arch), config.pretrain.train, directory,
                        mesh, config.pretrain.seed)
    backbone = {col: tree["backbone"] for col, tree in fit.variables.items()}
    if jax.process_index() == 0:
      artifacts.save_artifact(os.path.join(directory, BACKBONE_DIR), backbone, config,
                              {"method": "uts", "model_name": f"pretrained_{arch}",
                               "step": fit.step, "val_top1": fit.metrics.get("top1")})
    sharding.sync(f"pretrain-{arch}-saved")
    result = {"step": fit.step, "val_top1": fit.metrics.get("top1"),
              "classes": data.spec.num_classes, "train_images": int(len(data.train_images)),
              "val_images": int(len(data.val_images)), "generate_seconds": generated,
              "seconds": time.time() - t0, "weights_digest": weights_digest(directory)}
    if jax.process_index() == 0:
      artifacts.write_json_atomic(os.path.join(directory, ENTRY_DONE), {"result": result})
    sharding.sync(f"pretrain-{arch}-done")
  return result, directory


def load_backbone(directory: str) -> dict[str, Any]:
  """{'params', 'batch_stats'} of the pretrained backbone (`models.ResNet50` or
  `models.VGG16Student`)."""
  variables, _, _ = artifacts.load_artifact(os.path.join(directory, BACKBONE_DIR))
  return variables
