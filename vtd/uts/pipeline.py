"""The UTS stage graph (Liang et al., ICCVW 2019): teacher -> student -> frame features -> FIVR.

Stages (directories under the workdir; vtd/stages.py decides reuse, re-evaluation and reruns):
  pretrain            (teacher.init='pretrain', no teacher.weights) ResNet-50 pretrained by
                      classification of generated source-domain images (vtd/uts/pretrain.py);
                      the weights live in a cache entry under data.cache_dir shared by every
                      workdir and seed (else in pretrain/weights); the stage records the entry
                      and its digest, which the teacher checks
  pretrain_student    (student.init='pretrain', no student.weights) the same for the VGG16
  teacher             ResNet-50 (converted weights, the pretrained one, or a seeded random
                      init) + PCA-whitening FC fitted on training-frame features (eqs. 1-3);
                      saves the student's training set and targets
  teacher_random      (teacher.compare_random_init) the same from a random init: the "before
                      pretraining" rows
  student             VGG16 + UTS head trained with eq. 8
  features/<model>    per-frame GAP and R-MAC features of every database video, in resumable
                      shards, host- and device-parallel (vtd/uts/extract.py)
  retrieval           GV, R-MAC + GV and the frame-level pipeline (LSH codes, Algorithm 1) for
                      every network, scored by the `fivr` evaluators of config.evals (DSVR /
                      CSVR / ISVR mAP, precision-recall curves, bytes per video, query time)
Every configured weight file, choice, batch size and data path is checked before the first
stage. `results.json` rows are "<model>/<method>" (teacher/GV, ..., student/FRP);
`plots/precision_recall.png` has the test queries' curves.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import ml_collections
from absl import logging

from vtd import config_lib
from vtd import fingerprint
from vtd import plots
from vtd import results as results_lib
from vtd import sharding
from vtd import stages
from vtd.errors import UserError
from vtd.evaluators import common as evaluators_lib
from vtd.uts import input_pipeline
from vtd.uts import models
from vtd.uts import networks
from vtd.uts import pretrain as pretrain_lib
from vtd.uts import retrieval as retrieval_lib
from vtd.uts import trainer
from vtd.uts.data import synthetic_fivr
from vtd.uts.data.fivr import TASKS
from vtd.uts.data import synthetic_source_images

# What each stage reads (a change reruns it and what depends on it).
TEACHER_KEYS = ("data", "extract", "train.max_frames", "teacher.weights", "teacher.init",
                "teacher.init_seed", "teacher.width", "teacher.image_size", "teacher.pool",
                "teacher.pca_dim", "teacher.pca_num_frames", "teacher.pca_eps")
PRETRAIN_KEYS = {"resnet50": ("pretrain", "data.cache_dir", "teacher.width"),
                 "vgg16": ("pretrain", "data.cache_dir", "student.width", "student.head_width",
                           "student.head_kernel")}
STUDENT_KEYS = ("seed", "data", "extract", "student", "loss", "augment", "train", "optim",
                "teacher.pca_dim")
FEATURE_KEYS = {"teacher": ("extract", "teacher.width", "teacher.image_size", "teacher.pool",
                            "teacher.pca_dim"),
                "student": ("extract", "student", "teacher.pca_dim")}
RETRIEVAL_KEYS = ("seed", "lsh", "retrieval", "extract.shard_videos")
# Performance knobs with identical results, and where generated data are cached.
NON_RESULT_KEYS = ("data.cache_dir", "extract.batch_frames", "retrieval.batch_frames")
INITS = ("pretrain", "random")
INDEX_KINDS = r"flat|ivf\d+|hnsw\d+"


def _pretrains(config, network: str) -> bool:
  return not config[network].weights and config[network].init == "pretrain"


def check_config(config: ml_collections.ConfigDict, mesh) -> list[str]:
  """Every config error that can be found before any stage, one line each; returns the weight
  files it read and matched against the configured networks."""
  check = config_lib.check_choice
  check(config.data.source, ("synthetic", "directory"), "data.source")
  if config.data.source == "directory" and not config.data.root:
    raise UserError("config.data.source='directory' needs config.data.root (a folder of FIVR "
                    "videos)")
  for network in ("teacher", "student"):
    check(config[network].init, INITS, f"{network}.init")
    check(config[network].pool, models.POOLS, f"{network}.pool")
  check(config.loss.band_sort, ("descending", "ascending"), "loss.band_sort")
  check(config.loss.band_scope, ("global", "per_device"), "loss.band_scope")
  check(config.retrieval.backend, ("faiss", "jax"), "retrieval.backend")
  check(config.retrieval.rmac_whitening, ("none", "pca"), "retrieval.rmac_whitening")
  if not re.fullmatch(INDEX_KINDS, config.retrieval.index) or (
      config.retrieval.backend == "jax" and config.retrieval.index != "flat"):
    raise UserError(f"config.retrieval.index={config.retrieval.index!r}: expected flat, "
                    "ivf<nlist> or hnsw<M> (faiss backend), or flat (jax backend)")
  if len(tuple(config.loss.lambdas)) != 4:
    raise UserError(f"config.loss.lambdas={tuple(config.loss.lambdas)} must hold the 4 "
                    "weights lambda0..3 of eq. 8")
  levels = tuple(config.extract.rmac_levels)
  if not levels or any(not isinstance(v, int) or v < 1 for v in levels):
    raise UserError(f"config.extract.rmac_levels={levels} must be positive integers, e.g. "
                    "(1, 2, 3)")
  if config.lsh.nbits < 8 or config.lsh.nbits % 8:
    raise UserError(f"config.lsh.nbits={config.lsh.nbits} must be a positive multiple of 8 "
                    "(codes are stored in bytes)")
  if config.extract.shard_videos < 1:
    raise UserError(f"config.extract.shard_videos={config.extract.shard_videos} must be >= 1")
  sharding.check_batch_size(config.train.batch_size, mesh, "config.train.batch_size")
  local = jax.local_device_count()
  if config.extract.batch_frames < 1 or config.extract.batch_frames % local:
    raise UserError(f"config.extract.batch_frames={config.extract.batch_frames} is not "
                    f"divisible by the {local} local devices; use a multiple of {local}")
  loops = [("train", config.train)]
  if _pretrains(config, "teacher") or _pretrains(config, "student"):
    sharding.check_batch_size(config.pretrain.train.batch_size, mesh,
                              "config.pretrain.train.batch_size")
    spec = synthetic_source_images.SourceImagesSpec(**config.pretrain.source.to_dict())
    spec.validate()
    images = spec.num_classes * spec.train_per_class
    if images < config.pretrain.train.batch_size:
      raise UserError(f"config.pretrain.train.batch_size={config.pretrain.train.batch_size} "
                      f"exceeds the {images} generated source images; lower it or raise "
                      "config.pretrain.source.train_per_class")
    loops.append(("pretrain.train", config.pretrain.train))
  for name, loop in loops:
    if loop.num_steps < 1:
      raise UserError(f"config.{name}.num_steps={loop.num_steps} must be >= 1 (UTS trains "
                      "by steps)")
  if config.data.source == "synthetic":
    synthetic_fivr.SyntheticFivrSpec(**config.data.synthetic.to_dict()).validate()
  # Last: reading the weight files takes seconds, the checks above none.
  return networks.check_weight_files(config)


def _check_data(config: ml_collections.ConfigDict,
                collection: input_pipeline.VideoCollection) -> None:
  """The collection has what the evaluators score and can feed the student's batches."""
  for name, spec in config.evals.to_dict().items():
    if spec.get("enabled", True) and spec.get("split") == "val" and not collection.val_query_ids:
      raise UserError(f"config.evals.{name} scores validation queries, but the data have none: "
                      "set config.data.val_annotation, or "
                      f"--config.evals.{name}.enabled=false")
  frames = collection.num_frames
  if frames is not None and config.train.max_frames:
    frames = min(frames, config.train.max_frames)
  if frames is not None and frames < config.train.batch_size:
    raise UserError(f"config.train.batch_size={config.train.batch_size} exceeds the {frames} "
                    "training frames of the collection; lower it")


def data_fingerprint(data_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the videos are, for stage provenance: the generator's identity (spec + version) for
  the embedded collection, file fingerprints for real data."""
  if data_cfg.source == "synthetic":
    spec = synthetic_fivr.SyntheticFivrSpec(**data_cfg.synthetic.to_dict())
    return {"generator": "synthetic_fivr", "key": spec.cache_key()}
  return {"files": fingerprint.paths_fingerprint(
      [data_cfg.root, data_cfg.annotation, data_cfg.val_annotation, data_cfg.video_ids])}


def _eval_keys(config) -> tuple[str, ...]:
  """Every evaluator of config.evals: UTS selects no checkpoint on them, so a change only
  re-evaluates (the retrieval stage)."""
  return tuple(f"evals.{name}" for name in config.evals)


def build_graph(config: ml_collections.ConfigDict, collection: input_pipeline.VideoCollection,
                mesh) -> list[stages.Stage]:
  """The stages of this config, in execution order."""
  graph: list[stages.Stage] = []
  extra = {"pretrain_version": pretrain_lib.VERSION}
  teacher_inputs: tuple[str, ...] = ()
  if _pretrains(config, "teacher"):
    graph.append(stages.Stage(
        name="pretrain", title="teacher's ResNet-50 pretrained on generated source images",
        config_keys=PRETRAIN_KEYS["resnet50"], uses_data=False, extra=extra,
        run=functools.partial(trainer.run_pretrain, mesh=mesh, arch="resnet50")))
    teacher_inputs = ("pretrain",)
  student_inputs: tuple[str, ...] = ("teacher",)
  if _pretrains(config, "student"):
    graph.append(stages.Stage(
        name="pretrain_student", title="student's VGG16 pretrained on generated source images",
        config_keys=PRETRAIN_KEYS["vgg16"], uses_data=False, extra=extra,
        run=functools.partial(trainer.run_pretrain, mesh=mesh, arch="vgg16")))
    student_inputs += ("pretrain_student",)

  def run_teacher(ctx):
    pretrained = (trainer.load_pretrained(ctx, "pretrain", mesh=mesh, arch="resnet50")
                  if teacher_inputs else None)
    return trainer.run_teacher(ctx, collection=collection, pretrained=pretrained)

  # The pretraining keys let a stage rebuild a cache entry removed since (they change its
  # input's fingerprint anyway, so they add no reruns).
  teacher_keys = TEACHER_KEYS + (PRETRAIN_KEYS["resnet50"] if teacher_inputs else ())
  graph.append(stages.Stage(name="teacher", title="ResNet-50 + PCA-whitening FC, the targets",
                            config_keys=teacher_keys, inputs=teacher_inputs, run=run_teacher))
  networks_ = ["teacher"]
  if config.teacher.compare_random_init and teacher_inputs:
    graph.append(stages.Stage(
        name="teacher_random", title="the same teacher from a random init",
        config_keys=TEACHER_KEYS,
        run=functools.partial(trainer.run_teacher, collection=collection, pretrained=None,
                              save_train_set=False)))
    networks_.append("teacher_random")

  def run_student(ctx):
    pretrained = (trainer.load_pretrained(ctx, "pretrain_student", mesh=mesh, arch="vgg16")
                  if "pretrain_student" in ctx.inputs else None)
    return trainer.run_student(ctx, mesh=mesh, pretrained=pretrained)

  graph.append(stages.Stage(name="student", title="VGG16 + UTS head, eq. 8",
                            config_keys=STUDENT_KEYS + (PRETRAIN_KEYS["vgg16"] if len(
                                student_inputs) > 1 else ()),
                            inputs=student_inputs, uses_data=False,
                            run=run_student))
  networks_.append("student")
  for model in networks_:
    graph.append(stages.Stage(
        name=f"features/{model}", title=f"frame features of the {model}",
        config_keys=FEATURE_KEYS["student" if model == "student" else "teacher"],
        inputs=(model,),
        run=functools.partial(trainer.run_features, model=model, collection=collection)))
  graph.append(stages.Stage(
      name="retrieval", title="GV, RMAC+GV, FRP; FIVR mAP",
      config_keys=RETRIEVAL_KEYS, eval_keys=_eval_keys(config),
      inputs=tuple(f"features/{m}" for m in networks_),
      run=functools.partial(trainer.run_retrieval, models_=tuple(networks_),
                            collection=collection)))
  return graph


def _report_rows(results: dict[str, Any]) -> dict[str, Any]:
  """Stage results with the retrieval rows ("<model>/<method>") as models of their own."""
  retrieval = dict(results["retrieval"])
  rows = retrieval.pop("rows")
  # Networks in graph order, methods as in the paper's Table 1 (stage.json sorts its keys).
  networks_ = [n[len("features/"):] for n in results if n.startswith("features/")]
  ordered = {f"{m}/{k}": rows[f"{m}/{k}"] for m in networks_ for k in retrieval_lib.METHODS
             if f"{m}/{k}" in rows}
  return {**results, "retrieval": retrieval, **ordered}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """Runs the whole UTS pipeline in `workdir`; returns the stage results and the
  "<model>/<method>" rows (as written to results.json)."""
  mesh = sharding.make_mesh()
  checked = check_config(config, mesh)  # Before any work: a bad file fails now.
  if checked:
    logging.info("UTS weight files match the configured networks: %s", ", ".join(checked))
  collection = input_pipeline.load_collection(config)
  logging.info("UTS data: %s", collection.description)
  _check_data(config, collection)
  results = stages.run_pipeline(config, workdir, build_graph(config, collection, mesh),
                                data_fingerprint=data_fingerprint(config.data),
                                non_result_keys=NON_RESULT_KEYS)
  rows = _report_rows(results)
  evaluators = evaluators_lib.from_config(config.evals)
  if jax.process_index() == 0:
    report = results_lib.report(workdir, config, rows, evaluators, title="UTS FIVR")
    if "test" in evaluators:
      write_pr_plot(report, workdir / "plots" / "precision_recall.png",
                    title=f"UTS, FIVR test queries: interpolated precision-recall ({workdir})")
  sharding.sync("uts-done")
  return rows


def write_pr_plot(report: dict[str, Any], out, *, title: str, evaluator: str = "test") -> None:
  """plots.precision_recall of every "<model>/<method>" row of one evaluator."""
  per_row = results_lib.curves(report, "precision_recall", evaluator)
  found = set(next(iter(per_row.values()))) if per_row else set()
  tasks = [t for t in TASKS if t in found]  # results.json sorts keys; plot in FIVR's order
  plots.precision_recall({task: {row: (c[task]["recall"], c[task]["precision"])
                                 for row, c in per_row.items()} for task in tasks},
                         out, title=title)
