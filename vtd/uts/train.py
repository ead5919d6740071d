"""UTS (Liang et al., ICCVW 2019): teacher -> student -> frame features -> codes -> FIVR mAP.

Before any stage, every configured weight file is validated (vtd/uts/networks.py).
Stages (directories under the workdir; finished ones are reused, interrupted ones resume):
  pretrain            (embedded default) ResNet-50 (and, with student.init='pretrain', the
                      VGG16) pretrained by classification of generated source-domain images
                      (vtd/uts/pretrain.py); cached under data.cache_dir, shared by all
                      workdirs and seeds
  teacher             ResNet-50 (converted weights, the pretrained one, or a seeded random
                      init) + PCA-whitening FC fitted on training-frame features (eqs. 1-3);
                      the student's targets
  teacher_random      (teacher.compare_random_init) the same from a random init: the
                      "before pretraining" rows
  student             VGG16 + UTS head trained with eq. 8 (global consistency with the teacher,
                      intra-batch inconsistency, augmented and clean views)
  features/<model>    per-frame GAP and R-MAC features of every database video, in resumable
                      shards, host- and device-parallel (vtd/uts/extract.py)
  retrieval           GV, R-MAC + GV and the frame-level pipeline (512-bit LSH codes,
                      Algorithm 1) for teacher and student, FIVR DSVR / CSVR / ISVR mAP
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vtd import artifacts
from vtd import optim
from vtd import sharding
from vtd import stages
from vtd import train as train_lib
from vtd.data import augment
from vtd.errors import UserError
from vtd.losses import uts as uts_loss
from vtd.uts import extract as extract_lib
from vtd.uts import input_pipeline
from vtd.uts import models
from vtd.uts import networks
from vtd.uts import pretrain as pretrain_lib
from vtd.uts import retrieval as retrieval_lib
from vtd.uts import weights


def _embed_in_chunks(embed, frames: np.ndarray, batch: int) -> dict[str, np.ndarray]:
  """Runs a jitted embed over [N, S, S, 3] frames on the local devices (see extract.py)."""
  mesh = sharding.make_mesh(jax.local_devices())
  return extract_lib.embed_frames(embed, frames, batch, mesh)


def run_teacher(config: ml_collections.ConfigDict, collection, stage_dir: str,
                pretrained: dict[str, Any] | None, save_train_set: bool = True
                ) -> dict[str, Any]:
  """Fits the PCA FC; saves the teacher artifact and the student's training set + targets.

  With `train.max_frames` = 0 (every keyframe trains the student) one backbone pass over the
  collection, in the resumable shards of `extract`, gives the PCA's input, the targets and
  the teacher's retrieval features (`<stage_dir>/shards`: raw 'gap' f and 'rmac'); otherwise
  the sampled training frames are embedded on their own.
  """
  variables = networks.init_teacher(config, pretrained)
  batch = config.extract.batch_frames
  raw_embed = networks.teacher_embed_fn(config, variables, whiten=False)
  frames = None
  if config.train.max_frames:
    frames, skipped = input_pipeline.sample_training_frames(collection, config.train.max_frames,
                                                            seed=0)
    raw = _embed_in_chunks(raw_embed, frames, batch)["gap"]
  else:
    feats = extract_lib.extract(collection, raw_embed, os.path.join(stage_dir, "shards"),
                                shard_videos=config.extract.shard_videos, batch_frames=batch)
    raw, skipped = feats.features["gap"], feats.skipped
  rng = np.random.default_rng(config.teacher.init_seed)
  n_fit = config.teacher.pca_num_frames or len(raw)
  fit_rows = rng.permutation(len(raw))[:n_fit]
  w, b = models.fit_pca_whitening(raw[fit_rows], config.teacher.pca_dim,
                                  config.teacher.pca_eps)
  variables = models.with_pca_whitening(variables, w, b)
  # f* = f W + b (eq. 3) on the features already computed: one backbone pass, not two.
  targets = (raw.astype(np.float64) @ w + b).astype(np.float32)
  if config.teacher.weights:
    source = config.teacher.weights
  elif pretrained is not None:
    source = "pretrained on the generated source-domain images (vtd/uts/pretrain.py)"
  else:
    source = f"random init (seed {config.teacher.init_seed})"
  if jax.process_index() == 0:
    artifacts.save_artifact(os.path.join(stage_dir, "model"), variables, config,
                            {"method": "uts", "model_name": "teacher", "weights": source})
    if save_train_set:
      if frames is None:  # Database order, as the shards (unreadable videos were skipped).
        frames = np.concatenate([collection.read_frames(int(i))
                                 for i in np.unique(feats.frame_video)])
      artifacts.save_npz_atomic(os.path.join(stage_dir, "train_set.npz"), frames=frames,
                                targets=targets)
  sharding.sync("uts-teacher-saved")
  return {"train_frames": int(len(raw)), "pca_fit_frames": int(len(fit_rows)),
          "shards": not config.train.max_frames,  # Raw features in <stage_dir>/shards.
          "feature_dim": int(raw.shape[1]), "pca_dim": int(w.shape[1]),
          "skipped_videos": len(skipped), "weights": source,
          "target_mean_abs": float(np.abs(targets.mean(0)).mean()),
          "target_std": float(targets.std(0).mean())}


def student_program(config: ml_collections.ConfigDict, frames: np.ndarray, targets: np.ndarray,
                    mesh, pretrained: dict[str, Any] | None = None) -> train_lib.Program:
  """Eq. 8 on batches of (frame, teacher feature); augmentation on device from the step key."""
  student = networks.build_student(config)
  aug_cfg = augment.AugmentConfig.from_config(config.augment)
  lcfg = config.loss
  if lcfg.band_sort not in ("descending", "ascending"):
    raise UserError(f"config.loss.band_sort must be descending|ascending, got "
                    f"{lcfg.band_sort!r}")
  sharding.check_batch_size(config.train.batch_size, mesh, "train.batch_size")

  def loss_fn(params, batch_stats, batch, frozen, rng):
    del frozen
    clean = batch["image"].astype(jnp.float32) / 255.0
    augmented = augment.augment(rng, clean, aug_cfg)
    n = clean.shape[0]
    # One pass over both views: BatchNorm normalises them with shared batch statistics.
    both = weights.imagenet_normalize(jnp.concatenate([augmented, clean]))
    feats, updates = student.apply({"params": params, "batch_stats": batch_stats}, both,
                                   train=True, mutable=["batch_stats"])
    loss, terms = uts_loss.uts_loss(
        feats[:n], feats[n:], batch["teacher"], tuple(lcfg.lambdas), lcfg.alpha, lcfg.beta,
        lcfg.band_sort == "descending", band_scope=lcfg.band_scope,
        num_groups=mesh.devices.size)
    return loss, (terms, updates["batch_stats"])

  return train_lib.Program(
      name="student", init_variables=lambda rng: networks.init_student(config, rng, pretrained),
      loss_fn=loss_fn, optimizer=optim.create_optimizer(config.optim, steps_per_epoch=1),
      train_iter=input_pipeline.training_iterator(frames, targets, config.train.batch_size,
                                                  seed=config.seed),
      num_steps=config.train.num_steps)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  for name in ("teacher", "student"):
    if config[name].init not in ("pretrain", "random"):
      raise UserError(f"config.{name}.init must be pretrain|random, got {config[name].init!r}")
  checked = networks.check_weight_files(config)  # Before any work: a bad file fails now.
  mesh = sharding.make_mesh()
  collection = input_pipeline.load_collection(config)
  logging.info("UTS data: %s", collection.description)
  # results.json: "<model>/<method>" -> {"test": {DSVR, CSVR, ISVR}, "val": {...}, ...};
  # stage bookkeeping under "stages".
  results: dict[str, Any] = {"data": collection.description, "stages": {},
                             "weight_files_checked": checked}

  pretrained = None
  if not config.teacher.weights and config.teacher.init == "pretrain":
    results["stages"]["pretrain"], pretrain_dir = pretrain_lib.run(config, workdir, mesh)
    pretrained = pretrain_lib.load_backbone(pretrain_dir)
  student_pretrained = None
  if not config.student.weights and config.student.init == "pretrain":
    results["stages"]["pretrain_student"], pretrain_dir = pretrain_lib.run(
        config, workdir, mesh, arch="vgg16")
    student_pretrained = pretrain_lib.load_backbone(pretrain_dir)

  teacher_dir = os.path.join(workdir, "teacher")
  results["stages"]["teacher"] = stages.run_stage(
      teacher_dir, lambda d: run_teacher(config, collection, d, pretrained))
  teacher_vars, _, _ = artifacts.load_artifact(os.path.join(teacher_dir, "model"))
  embeds = {"teacher": networks.teacher_embed_fn(config, teacher_vars)}
  if config.teacher.compare_random_init and pretrained is not None:
    random_dir = os.path.join(workdir, "teacher_random")
    results["stages"]["teacher_random"] = stages.run_stage(
        random_dir, lambda d: run_teacher(config, collection, d, None, save_train_set=False))
    random_vars, _, _ = artifacts.load_artifact(os.path.join(random_dir, "model"))
    embeds["teacher_random"] = networks.teacher_embed_fn(config, random_vars)

  def run_student(d):
    with np.load(os.path.join(teacher_dir, "train_set.npz")) as z:
      frames, targets = z["frames"], z["targets"]
    t0 = time.time()
    fit = train_lib.fit(student_program(config, frames, targets, mesh, student_pretrained),
                        config.train, d, mesh, config.seed)
    if jax.process_index() == 0:
      artifacts.save_artifact(os.path.join(d, "model"), fit.variables, config,
                              {"method": "uts", "model_name": "student", "step": fit.step})
    return {"step": fit.step, "train_seconds": time.time() - t0}

  student_dir = os.path.join(workdir, "student")
  results["stages"]["student"] = stages.run_stage(student_dir, run_student)
  student_vars, _, _ = artifacts.load_artifact(os.path.join(student_dir, "model"))

  embeds["student"] = networks.student_embed_fn(config, student_vars)
  teacher_pca = {"teacher": (teacher_vars["pca"]["kernel"], teacher_vars["pca"]["bias"])}
  if "teacher_random" in embeds:
    teacher_pca["teacher_random"] = (random_vars["pca"]["kernel"], random_vars["pca"]["bias"])
  count = extract_lib.num_shards(len(collection), config.extract.shard_videos)
  features = {}
  for name in embeds:
    feat_dir = os.path.join(workdir, "features", name)

    def run_extract(d, name=name):
      raw_dir = os.path.join(workdir, name, "shards")
      if name.startswith("teacher") and results["stages"][name].get("shards"):
        # The teacher stage's pass already holds f and R-MAC: only whiten f (eq. 3).
        pca = teacher_pca[name]
        feats = extract_lib.transform(
            raw_dir, os.path.join(d, "shards"), count,
            lambda f: {**f, "gap": (f["gap"].astype(np.float64) @ pca[0] + pca[1]
                                    ).astype(np.float32)})
      else:
        feats = extract_lib.extract(collection, embeds[name], os.path.join(d, "shards"),
                                    shard_videos=config.extract.shard_videos,
                                    batch_frames=config.extract.batch_frames)
      return extract_lib.describe(feats)

    results["stages"][f"features/{name}"] = stages.run_stage(feat_dir, run_extract)
    features[name] = extract_lib.load(os.path.join(feat_dir, "shards"),
                                      extract_lib.num_shards(len(collection),
                                                             config.extract.shard_videos))

  retrieval_dir = os.path.join(workdir, "retrieval")
  results.update(stages.run_stage(
      retrieval_dir, lambda d: retrieval_lib.evaluate_models(config, collection, features, d)))

  if jax.process_index() == 0:
    artifacts.write_json_atomic(os.path.join(workdir, "results.json"), results)
    print(retrieval_lib.format_results(results, workdir))
  sharding.sync("uts-done")
  return results
