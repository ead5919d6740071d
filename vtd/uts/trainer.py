"""The UTS stage bodies (what each stage of vtd/uts/pipeline.py does).

Every function takes the stage's `StageContext` (its directory, its config view, its inputs'
results) plus the objects the pipeline loaded once (the video collection, the mesh), and
returns the JSON result recorded in its `stage.json`. Paths in results are relative to the
workdir (`ctx.rel`); the side files a stage hands on are named by the constants below.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vtd import artifacts
from vtd import optim
from vtd import seeds
from vtd import sharding
from vtd import stages
from vtd import train as train_lib
from vtd.data import augment
from vtd.errors import UserError
from vtd.evaluators import common as evaluators_lib
from vtd.search import lsh as lsh_lib
from vtd.uts import extract as extract_lib
from vtd.uts import input_pipeline
from vtd.uts import losses
from vtd.uts import models
from vtd.uts import networks
from vtd.uts import pretrain as pretrain_lib
from vtd.uts import retrieval as retrieval_lib

MODEL_DIR = "model"  # A network's artifact (teacher, teacher_random, student).
TRAIN_SET = "train_set.npz"  # Teacher -> student: the training frames and their targets f*.
SHARDS = "shards"  # Per-frame features, in resumable shards (vtd/uts/extract.py).
EVAL_CONFIG = "evaluation_config.json"  # Retrieval: the settings exported models evaluate with.
RESULTS_SUFFIX = "_results.json"  # Retrieval: <model>_<method>_results.json, FIVR format.
LSH_SUFFIX = "_lsh.npz"  # Retrieval: <model>_lsh.npz.


def stage_seed(seed: int, stage: str) -> int:
  """The seed of one stage of a run with `config.seed` (vtd/seeds.py)."""
  return seeds.derive_seed(seed, stage)


def _embed_in_chunks(embed, frames: np.ndarray, batch: int) -> dict[str, np.ndarray]:
  """Runs a jitted embed over [N, S, S, 3] frames on the local devices (see extract.py)."""
  mesh = sharding.make_mesh(jax.local_devices())
  return extract_lib.embed_frames(embed, frames, batch, mesh)


# ---- pretrain ------------------------------------------------------------------------------


def run_pretrain(ctx: stages.StageContext, *, mesh, arch: str) -> dict[str, Any]:
  """Pretrains (or finds in the cache) the backbone `arch`; records the entry and its digest."""
  result, directory = pretrain_lib.run(ctx.config, str(ctx.dir), mesh, arch=arch)
  return {**result, "arch": arch, "directory": ctx.rel(directory),
          "weights_digest": pretrain_lib.weights_digest(directory)}


def load_pretrained(ctx: stages.StageContext, stage: str, *, mesh, arch: str
                    ) -> dict[str, Any]:
  """The backbone recorded by input stage `stage`, after checking it is the same weights."""
  recorded = ctx.inputs[stage]
  directory = str(ctx.workdir / recorded["directory"])
  if not os.path.isdir(directory):  # A cache entry removed since: rebuild it (deterministic).
    pretrain_lib.run(ctx.config, str(ctx.input_dir(stage)), mesh, arch=arch)
  digest = pretrain_lib.weights_digest(directory)
  if digest != recorded["weights_digest"]:
    raise UserError(f"the pretrained {arch} in {directory} is not the one stage {stage} "
                    f"recorded (digest {digest} != {recorded['weights_digest']}); remove "
                    f"{ctx.input_dir(stage)} to rerun it and the stages that use it")
  return pretrain_lib.load_backbone(directory)


# ---- teacher ---------------------------------------------------------------------------------


def run_teacher(ctx: stages.StageContext, *, collection: input_pipeline.VideoCollection,
                pretrained: dict[str, Any] | None, save_train_set: bool = True
                ) -> dict[str, Any]:
  """Fits the PCA FC; saves the teacher artifact and the student's training set + targets.

  With `train.max_frames` = 0 (every keyframe trains the student) one backbone pass over the
  collection, in the resumable shards of `extract`, gives the PCA's input, the targets and
  the teacher's retrieval features (`<stage>/shards`: raw 'gap' f and 'rmac'); otherwise
  the sampled training frames are embedded on their own.
  """
  config = ctx.config
  variables = networks.init_teacher(config, pretrained)
  batch = config.extract.batch_frames
  raw_embed = networks.teacher_embed_fn(config, variables, whiten=False)
  frames = None
  if config.train.max_frames:
    logging.info("%s: embedding %d sampled training frames", ctx.name, config.train.max_frames)
    frames, skipped = input_pipeline.sample_training_frames(collection, config.train.max_frames,
                                                            seed=config.teacher.init_seed)
    raw = _embed_in_chunks(raw_embed, frames, batch)["gap"]
  else:
    logging.info("%s: one backbone pass over the %d videos (features for the PCA, the "
                 "student's targets and retrieval)", ctx.name, len(collection))
    feats = extract_lib.extract(collection, raw_embed, str(ctx.dir / SHARDS),
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
  if pretrained is not None:
    source = "pretrained on the generated source-domain images (vtd/uts/pretrain.py)"
  elif config.teacher.get("weights"):
    source = config.teacher.weights
  else:
    source = f"random init (seed {config.teacher.init_seed})"
  result = {"train_frames": int(len(raw)), "pca_fit_frames": int(len(fit_rows)),
            "shards": not config.train.max_frames,  # Raw features in <stage>/shards.
            "feature_dim": int(raw.shape[1]), "pca_dim": int(w.shape[1]),
            "skipped_videos": len(skipped), "weights": source,
            "target_mean_abs": float(np.abs(targets.mean(0)).mean()),
            "target_std": float(targets.std(0).mean()),
            "artifact": ctx.rel(ctx.dir / MODEL_DIR)}
  if jax.process_index() == 0:
    artifacts.save_artifact(ctx.dir / MODEL_DIR, variables, config,
                            {"method": "uts", "model_name": ctx.name, "weights": source})
    if save_train_set:
      if frames is None:  # Database order, as the shards (unreadable videos were skipped).
        frames = np.concatenate([collection.read_frames(int(i))
                                 for i in np.unique(feats.frame_video)])
      artifacts.save_npz_atomic(ctx.dir / TRAIN_SET, frames=frames, targets=targets)
  sharding.sync(f"uts-{ctx.name}-saved")
  return result


# ---- student ---------------------------------------------------------------------------------


def student_program(config: ml_collections.ConfigDict, frames: np.ndarray, targets: np.ndarray,
                    mesh, seed: int, pretrained: dict[str, Any] | None = None
                    ) -> train_lib.Program:
  """Eq. 8 on batches of (frame, teacher feature); augmentation on device from the step key."""
  student = networks.build_student(config)
  loss_fn = losses.make_loss_fn(student, config.loss, augment.AugmentConfig.from_config(
      config.augment), num_groups=mesh.devices.size)

  batch = config.train.batch_size
  return train_lib.Program(
      name="student", init_variables=lambda rng: networks.init_student(config, rng, pretrained),
      loss_fn=loss_fn,
      optimizer=optim.create_optimizer(config.optim, steps_per_epoch=-(-len(frames) // batch)),
      train_iter=input_pipeline.training_iterator(frames, targets, batch, seed=seed),
      num_steps=config.train.num_steps)


def run_student(ctx: stages.StageContext, *, mesh, pretrained: dict[str, Any] | None
                ) -> dict[str, Any]:
  """Trains the student on the teacher stage's training set (eq. 8); saves its artifact."""
  with np.load(ctx.input_dir("teacher") / TRAIN_SET) as z:
    frames, targets = z["frames"], z["targets"]
  seed = stage_seed(ctx.config.seed, ctx.name)
  t0 = time.time()
  fit = train_lib.fit(student_program(ctx.config, frames, targets, mesh, seed, pretrained),
                      ctx.config.train, str(ctx.dir), mesh, seed)
  if jax.process_index() == 0:
    artifacts.save_artifact(ctx.dir / MODEL_DIR, fit.variables, ctx.config,
                            {"method": "uts", "model_name": ctx.name, "step": fit.step})
  sharding.sync("uts-student-saved")
  return {"step": fit.step, "train_seconds": time.time() - t0, "train_frames": int(len(frames)),
          "artifact": ctx.rel(ctx.dir / MODEL_DIR)}


# ---- features ------------------------------------------------------------------------------


def embed_fn(config: ml_collections.ConfigDict, model_name: str, variables: dict[str, Any]):
  """The per-frame retrieval features of network `model_name` (teacher* | student)."""
  if model_name.startswith("teacher"):
    return networks.teacher_embed_fn(config, variables)
  return networks.student_embed_fn(config, variables)


def run_features(ctx: stages.StageContext, *, model: str,
                 collection: input_pipeline.VideoCollection) -> dict[str, Any]:
  """Per-frame GAP and R-MAC features of every database video by network `model`.

  A teacher whose stage kept its backbone pass (`shards`) is only whitened here (eq. 3, in
  NumPy); otherwise the network runs over the collection in resumable shards.
  """
  config = ctx.config
  variables, _, _ = artifacts.load_artifact(ctx.input_dir(model) / MODEL_DIR)
  out = str(ctx.dir / SHARDS)
  if model.startswith("teacher") and ctx.inputs[model].get("shards"):
    w, b = variables["pca"]["kernel"], variables["pca"]["bias"]
    feats = extract_lib.transform(
        str(ctx.input_dir(model) / SHARDS), out,
        extract_lib.num_shards(len(collection), config.extract.shard_videos),
        lambda f: {**f, "gap": (f["gap"].astype(np.float64) @ w + b).astype(np.float32)})
  else:
    logging.info("%s: extracting %s features of the %d videos", ctx.name, model,
                 len(collection))
    feats = extract_lib.extract(collection, embed_fn(config, model, variables), out,
                                shard_videos=config.extract.shard_videos,
                                batch_frames=config.extract.batch_frames)
  return extract_lib.describe(feats)


def load_features(ctx: stages.StageContext, stage: str, num_videos: int
                  ) -> extract_lib.FrameFeatures:
  return extract_lib.load(str(ctx.input_dir(stage) / SHARDS),
                          extract_lib.num_shards(num_videos, ctx.config.extract.shard_videos))


# ---- retrieval ---------------------------------------------------------------------------------


def evaluate_network(config: ml_collections.ConfigDict, collection, features, evaluators,
                     seed: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any], Any]:
  """({method: evaluation JSON}, {method: MethodScores}, LSH) of one network's features."""
  scores, lsh = retrieval_lib.retrieve(config, collection, features, seed)
  rows = {method: evaluators_lib.to_json(evaluators_lib.run_all(evaluators, s, collection))
          for method, s in scores.items()}
  return rows, scores, lsh


def run_retrieval(ctx: stages.StageContext, *, models_: tuple[str, ...],
                  collection: input_pipeline.VideoCollection) -> dict[str, Any]:
  """GV, RMAC+GV and FRP for every network, scored by the configured FIVR evaluators.

  Writes `<model>_lsh.npz`, the FIVR result files `<model>_<method>_results.json` (test
  queries) and `evaluation_config.json` (what an exported model evaluates with). The result's
  `rows` are {"<model>/<method>": {"evals", "eval_curves", "eval_info"}}.
  """
  config = ctx.config
  evaluators = evaluators_lib.from_config(config.evals)
  seed = stage_seed(config.seed, ctx.name)
  rows: dict[str, Any] = {}
  for model in models_:
    logging.info("%s: GV, RMAC+GV and FRP (LSH %d bits) for %s", ctx.name, config.lsh.nbits,
                 model)
    features = load_features(ctx, f"features/{model}", len(collection))
    per_method, scores, lsh = evaluate_network(config, collection, features, evaluators, seed)
    if jax.process_index() == 0:
      lsh_lib.save_lsh(str(ctx.dir / f"{model}{LSH_SUFFIX}"), lsh)
      for method, s in scores.items():
        artifacts.write_json_atomic(
            ctx.dir / f"{model}_{method}{RESULTS_SUFFIX}",
            {q: s.similarities[q] for q in collection.query_ids})
    for method, row in per_method.items():
      rows[f"{model}/{method}"] = row
  if jax.process_index() == 0:
    artifacts.write_json_atomic(ctx.dir / EVAL_CONFIG, ctx.config.to_dict())
  return {"rows": rows, "data": collection.description,
          "queries": {"test": len(collection.query_ids), "val": len(collection.val_query_ids)}}
