"""The segmentation stage graph: VideoPCA -> students -> (EvalSeg-Net -> students) ... (ICCV'17,
IJCV'19).

Stages (directories under the workdir; see vtd/stages.py for reuse and provenance), for
generations g = 1 .. `config.generations`:
  teacher          VideoPCA on every training video -> the frame table (frames, soft masks,
                   selection scores); scored on the held-out videos
  gen1/selection   the top `selection.keep_fraction` teacher masks (generation 1's pairs)
  gen<g>/<student> each of `students.names`, trained from scratch on gen<g>/selection's pairs
                   (seed derived from `seed` and the stage name); exported and scored
  gen<g>/multinet  Multi-Net: the students' masks combined pixel-wise; exported and scored
  gen<g>/evalseg   (g < generations) EvalSeg-Net regressing cos(student mask, Multi-Net mask)
                   on a random part of the training frames, scoring the others; exported
                   (with its students) and scored as a mask scorer on the held-out images
  gen<g+1>/selection  the student masks EvalSeg-Net scores best (generation g+1's pairs)
  overlays         PNGs of held-out images (or training frames) with every model's masks
Each stage declares the config keys it reads (below), so a changed key reruns exactly the
stages that depend on it; evaluation keys (`config.evals`, the real test set) re-evaluate
only, and only the stages whose models the changed evaluator scores. `results.json` holds
every mask predictor's P / J / CorLoc per split (`config.evals`, type segmentation) and every
EvalSeg-Net's mask-scoring quality (type mask_scoring: its score vs the true J of the
students' held-out masks, and the J of the masks it would keep).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
from absl import logging

from vtd import config_lib
from vtd import results as results_lib
from vtd import sharding
from vtd import stages
from vtd.data import video_io
from vtd.errors import UserError
from vtd.evaluators import common as evaluators_lib
from vtd.segmentation import input_pipeline
from vtd.segmentation import losses
from vtd.segmentation import models
from vtd.segmentation import selection
from vtd.segmentation import students as students_lib
from vtd.segmentation import trainer

# Performance knobs with identical results, and where generated data are cached.
NON_RESULT_KEYS = ("data.cache_dir",)
# Read only to evaluate (a change re-evaluates, never retrains): which real test set is
# scored, and the evaluators of the stage's kind of model (`_eval_keys`).
TEST_SET_KEYS = ("data.test_set", "data.test_root", "data.test_classes", "data.test_split")
# The evaluator interfaces (`vtd.evaluators.common`) of the segmentation models: mask
# predictors (teacher, students, Multi-Net; P / J / CorLoc) and mask scorers (EvalSeg-Net).
MASKS, SCORER = "masks", "score_candidates"
# Every trained network's loop (its non-result keys, logging and checkpoint cadence, are
# left out of fingerprints by vtd.stages).
LOOP_KEYS = ("seed", "train", "data.image_size")
SYNTHETIC_DATA_KEYS = ("data.synthetic",)
REAL_DATA_KEYS = ("data.video_size", "data.video_max_frames", "data.video_stride",
                  "data.on_unreadable")


def student_names(config: ml_collections.ConfigDict) -> list[str]:
  """`config.students.names` as a list; unknown or repeated names are a UserError."""
  names = config_lib.parse_list(config.students.names)
  unknown = [n for n in names if n not in models.STUDENTS]
  if unknown or not names or len(set(names)) != len(names):
    raise UserError(f"config.students.names={config.students.names!r}: give distinct names of "
                    f"{', '.join(sorted(models.STUDENTS))}, comma-separated")
  return names


def _fraction(value: float, key: str) -> None:
  if not 0 < value <= 1:
    raise UserError(f"config.{key}={value} must be in (0, 1]")


def check_config(config: ml_collections.ConfigDict, mesh) -> None:
  """Every config error that can be found before the first stage, in one line each."""
  if config.generations < 1:
    raise UserError(f"config.generations={config.generations} must be >= 1")
  student_names(config)
  sharding.check_batch_size(config.student_training.batch_size, mesh,
                            "config.student_training.batch_size")
  if config.generations > 1:
    sharding.check_batch_size(config.evalseg.batch_size, mesh, "config.evalseg.batch_size")
  config_lib.check_choice(config.student_training.loss, losses.MASK_LOSSES,
                          "student_training.loss")
  config_lib.check_choice(config.student_training.seed_scope, trainer.SEED_SCOPES,
                          "student_training.seed_scope")
  config_lib.check_choice(config.selection.scope, selection.SCOPES, "selection.scope")
  config_lib.check_choice(config.evalseg.selection, selection.SELECTIONS, "evalseg.selection")
  config_lib.check_choice(config.evalseg.scope, selection.SCOPES, "evalseg.scope")
  config_lib.check_choice(config.evalseg.target_rule, selection.TARGET_RULES,
                          "evalseg.target_rule")
  if not 0 <= config.evalseg.target_threshold < 1:
    raise UserError(f"config.evalseg.target_threshold={config.evalseg.target_threshold} must "
                    "be in [0, 1): kept masks are in [0, 1]")
  config_lib.check_choice(config.multinet.combine, selection.COMBINES, "multinet.combine")
  config_lib.check_choice(config.evalseg.label_combine, selection.COMBINES,
                          "evalseg.label_combine")
  config_lib.check_choice(config.multinet.normalisation, selection.NORMALISATIONS,
                          "multinet.normalisation")
  config_lib.check_choice(config.data.on_unreadable, ("skip", "raise"), "data.on_unreadable")
  config_lib.check_choice(config.data.test_set, input_pipeline.TEST_SETS, "data.test_set")
  _fraction(config.selection.keep_fraction, "selection.keep_fraction")
  _fraction(config.evalseg.keep_fraction, "evalseg.keep_fraction")
  if not 0 < config.evalseg.train_fraction < 1:
    raise UserError(f"config.evalseg.train_fraction={config.evalseg.train_fraction} must be "
                    "in (0, 1): EvalSeg-Net trains on that part of the frames, scores the rest")
  for name in student_names(config):
    if students_lib.student_steps(config.student_training, name) <= 0:
      raise UserError(f"student {name} would train for 0 steps; set "
                      "config.student_training.num_steps (or steps_per_student) > 0")
  if config.generations > 1 and config.evalseg.num_steps <= 0:
    raise UserError("config.evalseg.num_steps must be > 0")
  for name in evaluators_lib.from_config(config.evals):
    split = config.evals[name].get("split")
    if split not in input_pipeline.HELD_OUT_SPLITS:
      raise UserError(f"config.evals.{name}.split={split!r} must be one of "
                      f"{', '.join(input_pipeline.HELD_OUT_SPLITS)}")
  if config.data.videos and not video_io.scan_videos(config.data.videos):
    raise UserError(f"no video files or frame folders under config.data.videos="
                    f"{config.data.videos}; point it at a folder of videos")


def _has(config: ml_collections.ConfigDict, dotted: str) -> bool:
  node: Any = config
  for part in dotted.split("."):
    if part not in node:
      return False
    node = node[part]
  return True


def _eval_keys(config, interface: str) -> tuple[str, ...]:
  """A model stage's evaluation keys: the evaluators of its interface and the test set."""
  return evaluators_lib.config_keys(config.evals, interface) + TEST_SET_KEYS


def _teacher_keys(config) -> tuple[str, ...]:
  data_keys = REAL_DATA_KEYS if config.data.videos else SYNTHETIC_DATA_KEYS
  return ("data.videos", "data.cache_dir", "data.image_size", "data.augment_scale",
          "teacher") + data_keys


def _student_keys(config, name: str) -> tuple[str, ...]:
  per_student = f"student_training.steps_per_student.{name}"
  keys = LOOP_KEYS + ("optim", "student_training.batch_size", "student_training.target_scale",
                      "student_training.loss")
  if config.student_training.seed_scope != "stage":  # "stage" is how seeds were derived
    keys += ("student_training.seed_scope",)  # before the knob: earlier workdirs stay valid.
  keys += (per_student,) if _has(config, per_student) else ()
  if not config.student_training.steps_per_student.get(name, 0):
    keys += ("student_training.num_steps",)
  return keys + ((f"students.{name}",) if _has(config, f"students.{name}") else ())


def _multinet_keys(config) -> tuple[str, ...]:
  keys = ("multinet.normalisation", "multinet.combine")
  return keys + (("multinet.scale_quantile",)
                 if config.multinet.normalisation == "student_scale" else ())


def _next_selection_keys(config) -> tuple[str, ...]:
  keys = ("evalseg.selection", "student_training.batch_size", "evalseg.target_rule")
  if config.evalseg.target_rule != "soft":
    keys += ("evalseg.target_threshold",)
  if config.evalseg.selection == "threshold":
    return keys + ("evalseg.threshold",)
  return keys + ("evalseg.keep_fraction", "evalseg.scope")


EVALSEG_KEYS = LOOP_KEYS + ("evalseg.model", "evalseg.image_size", "evalseg.label_scale",
                            "evalseg.label_combine",
                            "evalseg.train_fraction", "evalseg.num_steps",
                            "evalseg.batch_size", "evalseg.optim")


def build_graph(config: ml_collections.ConfigDict, data: trainer.SegData, mesh
                ) -> list[stages.Stage]:
  """The stages of this config, in execution order."""
  names = student_names(config)
  teacher = trainer.TEACHER
  mask_eval_keys = _eval_keys(config, MASKS)
  graph = [stages.Stage(
      name=teacher, title="VideoPCA teacher over the training videos",
      config_keys=_teacher_keys(config), eval_keys=mask_eval_keys, uses_data=True,
      run=functools.partial(trainer.run_teacher, data=data, mesh=mesh))]
  graph.append(stages.Stage(
      name="gen1/selection", title="generation 1: the best teacher masks",
      config_keys=("selection", "student_training.batch_size"), inputs=(teacher,),
      uses_data=False, run=trainer.run_first_selection))
  generations: list[list[str]] = []
  multinets: list[str] = []
  for gen in range(1, config.generations + 1):
    pairs = f"gen{gen}/selection"
    student_stages = [f"gen{gen}/{n}" for n in names]
    for name, stage in zip(names, student_stages):
      graph.append(stages.Stage(
          name=stage, title=f"student {name}, generation {gen}",
          config_keys=_student_keys(config, name), eval_keys=mask_eval_keys,
          inputs=(teacher, pairs), uses_data=False,
          run=functools.partial(trainer.run_student, data=data, mesh=mesh, student=name,
                                selection_stage=pairs)))
    multinet = f"gen{gen}/multinet"
    graph.append(stages.Stage(
        name=multinet, title=f"Multi-Net of generation {gen}",
        config_keys=_multinet_keys(config), eval_keys=mask_eval_keys,
        inputs=tuple(student_stages), uses_data=False,
        run=functools.partial(trainer.run_multinet, data=data,
                              student_stages=student_stages)))
    generations.append(student_stages)
    multinets.append(multinet)
    if gen == config.generations:
      break
    evalseg = f"gen{gen}/evalseg"
    graph.append(stages.Stage(
        name=evalseg, title=f"EvalSeg-Net of generation {gen}", config_keys=EVALSEG_KEYS,
        eval_keys=_eval_keys(config, SCORER), inputs=(teacher, *student_stages, multinet),
        uses_data=False,
        run=functools.partial(trainer.run_evalseg, data=data, mesh=mesh,
                              student_stages=student_stages, multinet_stage=multinet)))
    graph.append(stages.Stage(
        name=f"gen{gen + 1}/selection",
        title=f"generation {gen + 1}: the student masks EvalSeg-Net scores best",
        config_keys=_next_selection_keys(config),
        inputs=(teacher, *student_stages, multinet, evalseg), uses_data=False,
        run=functools.partial(trainer.run_next_selection, student_stages=student_stages,
                              multinet_stage=multinet, evalseg_stage=evalseg)))
  model_stages = [teacher] + [s for gen in generations for s in gen] + multinets
  graph.append(stages.Stage(
      name="overlays", title="PNG overlays of every model's masks",
      config_keys=("overlays", "data.image_size"), eval_keys=mask_eval_keys,
      inputs=tuple(model_stages), uses_data=False,
      run=functools.partial(trainer.run_overlays, data=data, generations=generations,
                            multinets=multinets)))
  return graph


def load_data(config: ml_collections.ConfigDict) -> trainer.SegData:
  """The held-out sets the enabled evaluators score (loaded now, so a missing test set fails
  before any stage) and a reader of the training videos (used by the teacher stage only)."""
  splits = [e.split for e in evaluators_lib.from_config(config.evals).values()]
  logging.info("segmentation: held-out sets %s of data.test_set=%s (the embedded videos are "
               "generated on first use, then cached)...", "/".join(splits) or "none",
               config.data.test_set)
  eval_sets = input_pipeline.load_eval_sets(config, splits)
  missing = sorted(set(splits) - set(eval_sets))
  if missing:
    logging.info("no held-out %s split in the data (data.test_set=%s); its evaluator is "
                 "skipped", "/".join(missing), config.data.test_set)
  return trainer.SegData(eval_sets=eval_sets,
                         load_train=lambda: input_pipeline.load_train_videos(config),
                         full_config=config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """Runs the whole segmentation pipeline in `workdir`; returns {stage: result} and writes
  results.json (via `vtd.results.report`)."""
  mesh = sharding.make_mesh()
  check_config(config, mesh)
  data = load_data(config)
  results = stages.run_pipeline(config, workdir, build_graph(config, data, mesh),
                                data_fingerprint=input_pipeline.data_fingerprint(config),
                                non_result_keys=NON_RESULT_KEYS)
  # Evaluators with results (mask scoring has none with one generation: no EvalSeg-Net).
  evaluators = {n: e for n, e in evaluators_lib.from_config(config.evals).items()
                if e.split in data.eval_sets and any(
                    isinstance(r, dict) and r.get("evals", {}).get(n) for r in results.values())}
  if jax.process_index() == 0:
    payload = results_lib.report(workdir, config, results, evaluators, title="Segmentation")
    if evaluators_lib.VALIDATION in evaluators:  # report() shows the reported splits only.
      print(results_lib.format_table(payload, evaluators_lib.VALIDATION,
                                     title=f"Segmentation: val ({workdir})"))
      print()
    print(format_selection(results))
    print(f"overlays: {', '.join(results['overlays']['overlays'])} (under {workdir})")
  sharding.sync("segmentation-done")
  return results


def format_selection(results: dict[str, Any]) -> str:
  """The selection stages' quality (J of all candidates and of the kept ones, vs the ground
  truth the synthetic data have; never used by the method) as a markdown table."""
  lines = ["| selection | J of all candidates | J of kept | kept | kept per student |",
           "|---|---|---|---|---|"]
  for name, r in results.items():
    quality = r.get("selection") if isinstance(r, dict) else None
    if quality and quality.get("all") and quality.get("kept"):
      per = ", ".join(f"{k} {v}" for k, v in r.get("kept_per_student", {}).items())
      lines.append(f"| {name} | {quality['all']['J']:.1f} | {quality['kept']['J']:.1f} | "
                   f"{int(quality['kept']['count'])} / {int(quality['all']['count'])} | "
                   f"{per or '-'} |")
  return "\n".join(lines) if len(lines) > 2 else "(no ground truth for the selection quality)"
