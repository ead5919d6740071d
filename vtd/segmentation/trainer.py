"""Segmentation stage bodies: what each stage of `pipeline.py` does.

Every body gets a `StageContext` (its directory, a config view with only its declared keys,
its inputs' results) and the run's held-out data. Stages hand on their outputs through side
files named by the constants below (paths `ctx.dir / NAME`):

  teacher/frames.npz                 FRAMES: the frame table (`frames.FrameTable`)
  teacher/train_data.json            TRAIN_DATA: what was read (videos, skipped, incomplete)
  <model stage>/<split>_masks.npy    held_out_file(split): the soft masks [N, s, s] a model
                                     gave a held-out split (teacher, students' raw outputs,
                                     Multi-Net), drawn by the overlays
  gen<g>/selection/pairs.npz         PAIRS: frames [P] and target masks [P, A, A] of gen g
  gen<g>/<student>/train_outputs.npy TRAIN_OUTPUTS: raw outputs [F, s, s] float16 on every
                                     training frame (Multi-Net, EvalSeg-Net, next selection)
  gen<g>/<student>/model             MODEL_DIR: the exported student (also gen<g>/multinet
                                     and gen<g>/evalseg, with their students' variables)
  gen<g>/evalseg/scores.npz          SCORES: frames EvalSeg-Net scored and its scores [S * n]

Shapes: F training frames at the augmentation size A (random S x S crops), s = S the working
size, P kept pairs, S students (in candidates' student-major order).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from vtd import artifacts
from vtd import seeds
from vtd import stages
from vtd import train as train_lib
from vtd.errors import UserError
from vtd.evaluators import common as evaluators_lib
from vtd.evaluators import segmentation as seg_metrics
from vtd.segmentation import evaluate as seg_eval
from vtd.segmentation import frames as frames_lib
from vtd.segmentation import input_pipeline
from vtd.segmentation import models
from vtd.segmentation import overlays
from vtd.segmentation import selection
from vtd.segmentation import students as students_lib
from vtd.segmentation import teacher as teacher_lib

FRAMES = "frames.npz"
TRAIN_DATA = "train_data.json"
PAIRS = "pairs.npz"
TRAIN_OUTPUTS = "train_outputs.npy"
SCORES = "scores.npz"
MODEL_DIR = "model"
SEED_SCOPES = ("student", "stage")  # config.student_training.seed_scope
TEACHER = "teacher"  # The teacher stage's name (its frame table is every stage's input).


def held_out_file(split: str) -> str:
  """Name of a model stage's masks on held-out split `split`."""
  return f"{split}_masks.npy"


@dataclasses.dataclass
class SegData:
  """The data a run's stages share.

  Attributes:
    eval_sets: {split: held-out set} scored by the evaluators (loaded before any stage).
    load_train: reads the training videos (only the teacher stage does, once).
    full_config: the run's whole config, stored in exported artifacts (stages read only
      their own view of it).
  """
  eval_sets: dict[str, input_pipeline.TestSet]
  load_train: Callable[[], input_pipeline.TrainVideos]
  full_config: ml_collections.ConfigDict


def _write(write: Callable[[], Any]) -> None:
  """Side files are written by process 0 only (every process computes the same arrays)."""
  if jax.process_index() == 0:
    write()


def _run_evaluators(ctx: stages.StageContext, data: SegData, model) -> dict[str, Any]:
  """The stage result's evaluation part ("evals", "eval_info") of `model`: the evaluators in
  the stage's view of `config.evals` (those of its model's interface) whose split the data
  have."""
  evaluators = evaluators_lib.from_config(ctx.config.get("evals", {}))
  return evaluators_lib.to_json(evaluators_lib.run_all(
      {n: e for n, e in evaluators.items() if e.split in data.eval_sets}, model,
      data.eval_sets))


def _recorded(ctx: stages.StageContext, stage: str) -> seg_eval.Recorded:
  """The held-out masks model stage `stage` recorded, as a predictor."""
  return seg_eval.Recorded({split: artifacts.load_npy(ctx.workdir / path)
                            for split, path in ctx.inputs[stage]["held_out_masks"].items()})


def _student_variables(ctx: stages.StageContext, student_stages: Sequence[str]
                       ) -> dict[str, Any]:
  """{student name: its exported variables} of a generation's student stages."""
  return {ctx.inputs[n]["student"]: artifacts.load_artifact(ctx.input_dir(n) / MODEL_DIR)[0]
          for n in student_stages}


def _evaluate(ctx: stages.StageContext, data: SegData, model) -> dict[str, Any]:
  """Runs the configured evaluators on `model`; saves its held-out masks for the overlays.

  Returns the stage result's evaluation part ("evals", "eval_info") and "held_out_masks"
  ({split: path relative to the workdir}).
  """
  recording = seg_eval.Recording(model)
  outcome = _run_evaluators(ctx, data, recording)
  paths = {}
  for split, masks in recording.by_split.items():
    path = ctx.dir / held_out_file(split)
    _write(lambda path=path, masks=masks: artifacts.save_npy_atomic(path, masks))
    paths[split] = ctx.rel(path)
  return {**outcome, "held_out_masks": paths}


def _table(ctx: stages.StageContext) -> frames_lib.FrameTable:
  return frames_lib.FrameTable.load(ctx.input_dir(TEACHER) / FRAMES)


def _quality(masks: np.ndarray, gt: np.ndarray | None) -> dict[str, float]:
  """Mean J (percent) of training masks against ground truth (reporting only, never used)."""
  if gt is None or len(masks) == 0:
    return {}
  binary = seg_metrics.binarize(masks, 0.5, normalize=True)
  return {"J": 100 * seg_metrics.jaccard(binary, gt), "count": float(len(masks))}


# ----------------------------------------------------------------------------- teacher

def run_teacher(ctx: stages.StageContext, data: SegData, mesh) -> dict[str, Any]:
  """VideoPCA over every training video (the frame table) and on the held-out videos.

  A re-evaluation (only evaluation keys changed) keeps the frame table it wrote.
  """
  cfg = ctx.config
  table_path = ctx.dir / FRAMES
  if not table_path.exists():
    start = time.time()
    train = data.load_train()
    logging.info("%s: VideoPCA on %d training videos (%d frames)...", ctx.name,
                 len(train.videos), sum(len(v) for v in train.videos))
    table = teacher_lib.frame_table(train, cfg, mesh)
    _write(lambda: artifacts.write_json_atomic(ctx.dir / TRAIN_DATA, train.summary()))
    _write(lambda: table.save(table_path))
    logging.info("%s: frame table of %d frames in %.0f s", ctx.name, len(table),
                 time.time() - start)
    summary = train.summary()
  else:
    summary = artifacts.read_json(ctx.dir / TRAIN_DATA)
  if data.eval_sets:
    logging.info("%s: VideoPCA on the held-out videos (%s)...", ctx.name,
                 ", ".join(data.eval_sets))
  return {**_evaluate(ctx, data, seg_eval.VideoPCAMasks(cfg, mesh)), "train_data": summary,
          "frames": ctx.rel(table_path)}


# ----------------------------------------------------------------------------- selection

def _save_pairs(ctx: stages.StageContext, frames: np.ndarray, targets: np.ndarray) -> str:
  path = ctx.dir / PAIRS
  _write(lambda: artifacts.save_npz_atomic(path, frames=frames, targets=targets))
  return ctx.rel(path)


def run_first_selection(ctx: stages.StageContext) -> dict[str, Any]:
  """Generation 1's training pairs: the frames whose teacher masks score best (§3.1)."""
  cfg = ctx.config
  table = _table(ctx)
  keep = selection.keep_best(table.scores, cfg.selection.keep_fraction, cfg.selection.scope,
                             table.video_index, minimum=cfg.student_training.batch_size)
  gt = table.gt_masks
  quality = {"all": _quality(table.teacher, gt),
             "kept": _quality(table.teacher[keep], None if gt is None else gt[keep])}
  logging.info("%s: kept the teacher masks of %d of %d frames", ctx.name, keep.size, len(table))
  return {"pairs": _save_pairs(ctx, keep, table.teacher[keep]), "num_pairs": int(keep.size),
          "selection": quality}


def student_train_masks(ctx: stages.StageContext, student_stages: Sequence[str],
                        multinet_stage: str) -> np.ndarray:
  """[S, F, s, s] every student's [0, 1] masks on the training frames, normalised as its
  generation's Multi-Net stage recorded (rule, per-student scales)."""
  multi = ctx.inputs[multinet_stage]
  scales = multi["scales"] or [None] * len(student_stages)
  return np.stack([selection.normalise(
      artifacts.load_npy(ctx.input_dir(name) / TRAIN_OUTPUTS).astype(np.float32),
      multi["normalisation"], scale) for name, scale in zip(student_stages, scales)])


def run_next_selection(ctx: stages.StageContext, *, student_stages: Sequence[str],
                       multinet_stage: str, evalseg_stage: str) -> dict[str, Any]:
  """Generation g+1's training pairs: the student masks of generation g that EvalSeg-Net
  scores best (§3.2); each kept mask becomes a label of its frame."""
  cfg = ctx.config
  ecfg = cfg.evalseg
  table = _table(ctx)
  stack = student_train_masks(ctx, student_stages, multinet_stage)
  scored = artifacts.load_npz(ctx.input_dir(evalseg_stage) / SCORES)
  cand = selection.candidates(stack, scored["frames"])
  rule = ecfg.selection
  chosen = selection.choose(
      scored["scores"], rule, ecfg.threshold if rule == "threshold" else 0.0,
      ecfg.keep_fraction if rule == "top_fraction" else 1.0, cfg.student_training.batch_size,
      scope=ecfg.scope if rule == "top_fraction" else "global",
      groups=table.video_index[cand.frame_of])
  frame_ids = cand.frame_of[chosen]
  a = table.images.shape[1]
  gt = None
  if table.gt_masks is not None:
    size = stack.shape[-1]
    gt = frames_lib.resize_masks(table.gt_masks.astype(np.float32), (size, size)) > 0.5
  names = [n.split("/")[-1] for n in student_stages]
  per_student = selection.kept_per_student(cand, chosen, names)
  logging.info("%s: EvalSeg-Net kept %d of %d student masks (%s)", ctx.name, chosen.size,
               scored["scores"].size, ", ".join(f"{n} {k}" for n, k in per_student.items()))
  target_rule = ecfg.target_rule  # Its threshold is a declared key only when the rule reads it.
  targets = selection.next_targets(cand.masks[chosen], target_rule,
                                   ecfg.target_threshold if target_rule != "soft" else 0.0)
  return {"pairs": _save_pairs(ctx, frame_ids, frames_lib.resize_masks(targets, (a, a))),
          "num_pairs": int(chosen.size), "kept_per_student": per_student,
          "selection": {"all": _quality(cand.masks, None if gt is None else gt[cand.frame_of]),
                        "kept": _quality(cand.masks[chosen],
                                         None if gt is None else gt[frame_ids])}}


# ----------------------------------------------------------------------------- students

def student_seed_name(stage: str, student: str, scope: str) -> str:
  """What a student's seed (initialisation and batch order) is derived from: its architecture
  (scope "student": every generation starts from the same initial weights, so generations
  differ only in their labels) or its stage (scope "stage", e.g. "gen2/basic_unet")."""
  if scope == "student":
    return student
  if scope == "stage":
    return stage
  raise UserError(f"config.student_training.seed_scope must be one of "
                  f"{', '.join(SEED_SCOPES)}; got {scope!r}")


def run_student(ctx: stages.StageContext, data: SegData, mesh, *, student: str,
                selection_stage: str) -> dict[str, Any]:
  """Trains one student from scratch on its generation's pairs; exports and scores it."""
  cfg = ctx.config
  table = _table(ctx)
  pairs = artifacts.load_npz(ctx.input_dir(selection_stage) / PAIRS)
  model = students_lib.build_student(student, cfg.students)
  seed = seeds.derive_seed(cfg.seed, student_seed_name(
      ctx.name, student, cfg.student_training.get("seed_scope", "stage")))
  program = students_lib.student_program(ctx.name, model, table.images[pairs["frames"]],
                                         pairs["targets"], cfg, seed)
  fit = train_lib.fit(program, cfg.train, ctx.dir, mesh, seed)
  size = cfg.data.image_size
  predictor = seg_eval.StudentMasks(model, fit.variables, size=size,
                                    target_scale=cfg.student_training.target_scale)
  outputs = predictor.predict(frames_lib.resize_images(table.images, size))
  constant = selection.constant_fraction(outputs)
  if constant > 0.5:
    logging.warning("%s: the output is constant on %.0f %% of the training frames (a dead ReLU "
                    "head?): its masks are empty, and the Multi-Net product and EvalSeg-Net's "
                    "labels of this generation with them; try another --config.seed", ctx.name,
                    100 * constant)
  _write(lambda: artifacts.save_npy_atomic(ctx.dir / TRAIN_OUTPUTS, outputs.astype(np.float16)))
  meta = {"method": "segmentation", "kind": seg_eval.STUDENT, "model_name": ctx.name,
          "student": student, "step": fit.step}
  _write(lambda: artifacts.save_artifact(ctx.dir / MODEL_DIR, fit.variables, data.full_config,
                                         meta))
  # Scored as the public inference script does: resize, per-image min-max, threshold.
  return {**_evaluate(ctx, data, predictor), "student": student, "step": fit.step,
          "num_steps": program.num_steps, "num_train_pairs": int(pairs["frames"].size),
          "constant_output_fraction": constant,
          "artifact": ctx.rel(ctx.dir / MODEL_DIR)}


def run_multinet(ctx: stages.StageContext, data: SegData, *,
                 student_stages: Sequence[str]) -> dict[str, Any]:
  """Multi-Net of one generation: the students' outputs as [0, 1] masks, combined (§4).

  Records the normalisation (rule and per-student scales) that EvalSeg-Net and the next
  selection apply to the students' training-frame outputs; exports the combination.
  """
  mcfg = ctx.config.multinet
  scales = None
  if mcfg.normalisation == "student_scale":
    scales = [selection.student_scale(
        artifacts.load_npy(ctx.input_dir(n) / TRAIN_OUTPUTS).astype(np.float32),
        mcfg.scale_quantile) for n in student_stages]
  members = [_recorded(ctx, n) for n in student_stages]
  model = seg_eval.MultiNetMasks(members, normalisation=mcfg.normalisation,
                                 combine=mcfg.combine, scales=scales)
  names = [ctx.inputs[n]["student"] for n in student_stages]
  combined = seg_eval.pack_variables(_student_variables(ctx, student_stages))
  meta = {"method": "segmentation", "kind": seg_eval.MULTINET, "model_name": ctx.name,
          "students": names, "normalisation": mcfg.normalisation, "combine": mcfg.combine,
          "scales": scales}
  _write(lambda: artifacts.save_artifact(ctx.dir / MODEL_DIR, combined, data.full_config, meta))
  return {**_evaluate(ctx, data, model), "students": names, "scales": scales,
          "normalisation": mcfg.normalisation, "combine": mcfg.combine,
          "artifact": ctx.rel(ctx.dir / MODEL_DIR)}


# ----------------------------------------------------------------------------- EvalSeg-Net

def run_evalseg(ctx: stages.StageContext, data: SegData, mesh, *,
                student_stages: Sequence[str], multinet_stage: str) -> dict[str, Any]:
  """EvalSeg-Net of one generation: regresses cos(student mask, the students' masks
  combined as `evalseg.label_combine`; the paper: the Multi-Net product) on a random subset of
  the training frames, then scores every student's masks on the others (§3.2). The masks are
  normalised as the generation's Multi-Net stage recorded.

  Exported with its generation's students (what it scores) and scored as a mask scorer
  (`vtd.evaluators.mask_scoring`) on the students' recorded held-out masks.
  """
  cfg = ctx.config
  ecfg = cfg.evalseg
  table = _table(ctx)
  size = cfg.data.image_size
  stack = student_train_masks(ctx, student_stages, multinet_stage)
  multi = selection.multinet(list(stack), ecfg.label_combine)
  train_frames, score_frames = selection.split_frames(
      len(table), ecfg.train_fraction, ecfg.batch_size,
      seed=seeds.derive_seed(cfg.seed, f"{ctx.name}/frames"))
  train_cand = selection.candidates(stack, train_frames)
  score_cand = selection.candidates(stack, score_frames)
  model = models.EvalSegNet(**ecfg.model.to_dict())
  ev_size = ecfg.image_size or size
  ev_frames = frames_lib.resize_images(frames_lib.resize_images(table.images, size), ev_size)
  ev_masks = lambda c: frames_lib.resize_masks(c.masks, (ev_size, ev_size))
  seed = seeds.derive_seed(cfg.seed, ctx.name)
  program = students_lib.evalseg_program(
      model, ev_frames[train_cand.frame_of], ev_masks(train_cand),
      selection.cosine_labels(train_cand, multi), cfg, seed)
  fit = train_lib.fit(program, cfg.train, ctx.dir, mesh, seed)
  multi_result = ctx.inputs[multinet_stage]
  scorer = seg_eval.EvalSegScorer(
      model, fit.variables, [_recorded(ctx, n) for n in student_stages], size=size,
      input_size=ev_size, label_scale=ecfg.label_scale,
      normalisation=multi_result["normalisation"], combine=ecfg.label_combine,
      scales=multi_result["scales"])
  logging.info("%s: scoring %d student masks...", ctx.name, len(score_cand.masks))
  scores = scorer.score(ev_frames, score_cand)
  _write(lambda: artifacts.save_npz_atomic(ctx.dir / SCORES, frames=score_frames,
                                           scores=scores))
  true_cos = selection.cosine_labels(score_cand, multi)
  names = [ctx.inputs[n]["student"] for n in student_stages]
  variables = seg_eval.pack_variables({**_student_variables(ctx, student_stages),
                                       seg_eval.EVALSEG_NET: fit.variables})
  meta = {"method": "segmentation", "kind": seg_eval.EVALSEG, "model_name": ctx.name,
          "students": names, "normalisation": multi_result["normalisation"],
          "combine": ecfg.label_combine, "scales": multi_result["scales"],
          "step": fit.step}
  _write(lambda: artifacts.save_artifact(ctx.dir / MODEL_DIR, variables, data.full_config,
                                         meta))
  return {**_run_evaluators(ctx, data, scorer),
          "score_vs_true_cos_corr": float(np.corrcoef(scores, true_cos)[0, 1]),
          "num_scored": int(scores.size), "num_train_masks": int(len(train_cand.masks)),
          "step": fit.step, "scores": ctx.rel(ctx.dir / SCORES), "students": names,
          "artifact": ctx.rel(ctx.dir / MODEL_DIR)}


# ----------------------------------------------------------------------------- overlays

def _threshold(evals_cfg, split: str) -> float:
  """The bin_threshold of the (first) evaluator of `split` (0.5 without one)."""
  for spec in (evals_cfg.to_dict() if hasattr(evals_cfg, "to_dict") else evals_cfg).values():
    if spec.get("split") == split:
      return float(spec.get("bin_threshold", 0.5))
  return 0.5


def run_overlays(ctx: stages.StageContext, data: SegData, *, generations: list[list[str]],
                 multinets: list[str]) -> dict[str, Any]:
  """overlays/<split>_gen<g>.png per held-out split (teacher and every generation up to g);
  without held-out sets, overlays/train_gen<g>.png of training frames (one per video)."""
  count, size = ctx.config.overlays.num_images, ctx.config.data.image_size
  written = []
  shown = [TEACHER]
  for gen, (student_stages, multi) in enumerate(zip(generations, multinets), start=1):
    shown += [*student_stages, multi]
    for split, test in data.eval_sets.items():
      columns = {name: artifacts.load_npy(ctx.workdir / ctx.inputs[name]["held_out_masks"][split])
                 for name in shown if split in ctx.inputs[name]["held_out_masks"]}
      rows = (overlays.pick_rows(test.video_index, count) if test.video_index is not None
              else np.arange(min(count, len(test))))
      path = ctx.dir / f"{split}_gen{gen}.png"
      _write(lambda path=path, columns=columns, rows=rows, test=test: overlays.write(
          path, frames_lib.resize_images([test.images[i] for i in rows], size),
          {k: v[rows] for k, v in columns.items()},
          gt_masks=None if test.masks is None else [test.masks[i] for i in rows],
          threshold=_threshold(ctx.config.get("evals", {}), split),
          image_ids=None if test.video_index is None else [
              f"{split} video {test.video_index[i]}" for i in rows]))
      written.append(ctx.rel(path))
    if not data.eval_sets:
      written.append(_train_overlay(ctx, gen, student_stages, multi, count, size))
  return {"overlays": written}


def _train_overlay(ctx, gen: int, student_stages: Sequence[str], multi: str, count: int,
                   size: int) -> str:
  """Training frames (no ground truth): teacher, the students' raw outputs, Multi-Net."""
  table = _table(ctx)
  rows = overlays.pick_spread_rows(table.video_index, count)
  masks = student_train_masks(ctx, student_stages, multi)[:, rows]
  columns = {TEACHER: frames_lib.resize_masks(table.teacher[rows], (size, size)),
             **{n: artifacts.load_npy(ctx.input_dir(n) / TRAIN_OUTPUTS)[rows].astype(np.float32)
                for n in student_stages},
             multi: selection.multinet(list(masks), ctx.inputs[multi]["combine"])}
  path = ctx.dir / f"train_gen{gen}.png"
  _write(lambda: overlays.write(
      path, frames_lib.resize_images(table.images[rows], size), columns,
      image_ids=[f"video {v}, frame {f}" for v, f in zip(table.video_index[rows],
                                                         table.frame_index[rows])],
      threshold=_threshold(ctx.config.get("evals", {}), "test")))
  return ctx.rel(path)
