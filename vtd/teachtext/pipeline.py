"""The TeachText stage graph: N teachers -> (denoise) -> baseline and distilled students.

Stages (directories under the workdir; see vtd/stages.py for reuse and provenance):
  teacher_<embedding>  one CE/MoEE model per `teachers.text_embeddings` (L_r only), with the
                       video experts `teachers.experts`; skipped when `teachers.artifact_dirs`
                       names already trained teachers
  teacher_ensemble     diagnostic, not deployable: Phi = mean of the teachers' test-split
                       similarity matrices (the student's target, with every teacher's text)
  denoise              (if `denoise.fraction` or `denoise.max_rank`) the teachers score the
                       training captions; the noisiest are dropped for the students
  student_baseline     the student's own text embedding and `student.experts`, L_r only
  <student.name>       the same student (same seed, data order and initialisation) with
                       L_r + lambda * L_d + the within-modality terms of `config.within`
Teachers with more video experts than the student give video-modality distillation.
`results.json` in the workdir collects every stage's test metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections

from vtd import artifacts
from vtd import config_lib
from vtd import fingerprint
from vtd import plots
from vtd import results as results_lib
from vtd import sharding
from vtd import stages
from vtd.errors import UserError
from vtd.evaluators import common as evaluators_lib
from vtd.evaluators import retrieval as retrieval_eval
from vtd.teachtext import denoise as denoise_lib
from vtd.teachtext import evaluate as tt_evaluate
from vtd.teachtext import losses
from vtd.teachtext import trainer

# Config groups every trained model's result depends on (evals.val selects its checkpoint).
MODEL_KEYS = ("seed", "data", "model", "loss", "train", "optim", "eval", "evals.val")
# Performance knobs with identical results, and where the generated data is cached.
NON_RESULT_KEYS = ("data.cache_dir", "eval.chunk_size", "evals.*.query_chunk",
                   "evals.*.bank_chunk")
RESERVED_NAMES = ("student_baseline", "teacher_ensemble", "denoise")
KEPT_CAPTIONS = "kept_captions.npy"  # Output of the denoise stage.


def _denoise_enabled(config) -> bool:
  return config.denoise.fraction > 0 or config.denoise.max_rank > 0


def check_config(config: ml_collections.ConfigDict, mesh) -> None:
  """Every config error that can be found before training, in one line each."""
  name = config.student.name
  if name in RESERVED_NAMES or name.startswith("teacher_"):
    raise UserError(f"config.student.name={name!r} clashes with another stage; pick another "
                    "name")
  sharding.check_batch_size(config.train.batch_size, mesh, "config.train.batch_size")
  trainer.num_steps(config.train, 1)
  losses.check_distill_config(config.distill)
  if not config_lib.parse_list(config.teachers.text_embeddings) and \
      not config_lib.parse_list(config.teachers.artifact_dirs):
    if config.distill.weight > 0 or _denoise_enabled(config):
      raise UserError("distillation and denoising need teachers: set "
                      "config.teachers.text_embeddings or config.teachers.artifact_dirs")


def _check_data(config: ml_collections.ConfigDict, data) -> None:
  """The data has every text embedding and expert the config names (before any training)."""
  split = data.train
  wanted = config_lib.parse_list(config.teachers.text_embeddings) + [
      config.student.text_embedding]
  missing = [e for e in wanted if e not in split.text]
  if missing:
    raise UserError(f"text embedding(s) {missing} are not in the data (it has "
                    f"{sorted(split.text)}); fix config.teachers.text_embeddings / "
                    "config.student.text_embedding")
  for experts in (config.teachers.experts or config.model.experts,
                  config.student.experts or config.model.experts):
    trainer.model_experts(experts, split)


def _eval_keys(config) -> tuple[str, ...]:
  """Read only to evaluate a trained model (a change re-evaluates, never retrains)."""
  return tuple(f"evals.{n}" for n in evaluators_lib.reporting(config.evals))


def build_graph(config: ml_collections.ConfigDict, data, mesh) -> list[stages.Stage]:
  """The stages of this config, in execution order."""
  graph: list[stages.Stage] = []
  eval_keys = _eval_keys(config)
  teacher_experts = config.teachers.experts or config.model.experts
  external = [os.path.expanduser(d) for d in config_lib.parse_list(config.teachers.artifact_dirs)]
  teacher_stages: tuple[str, ...] = ()
  if not external:
    for emb in config_lib.parse_list(config.teachers.text_embeddings):
      name = f"teacher_{emb}"
      graph.append(stages.Stage(
          name=name, title=f"teacher, text embedding {emb}",
          config_keys=MODEL_KEYS + ("teachers.experts",), eval_keys=eval_keys,
          run=functools.partial(trainer.train_model, data=data, mesh=mesh, text_embedding=emb,
                                experts=teacher_experts,
                                seed=trainer.stage_seed(config.seed, name))))
      teacher_stages += (name,)
  # Teacher artifacts: this run's stages, or the external dirs (fingerprinted as inputs).
  teacher_dirs = external or [None] * len(teacher_stages)
  teacher_extra = {"external_teachers": fingerprint.paths_fingerprint(external)}

  def loaded_teachers(ctx: stages.StageContext):
    dirs = external or [ctx.input_dir(n) / "model" for n in teacher_stages]
    return trainer.load_teachers(dirs, data)

  if len(teacher_dirs) > 1:

    def run_ensemble(ctx):
      scorer = tt_evaluate.Scorer([(t.model, v, t.text_embedding)
                                   for t, v in loaded_teachers(ctx)],
                                  chunk_size=ctx.config.eval.chunk_size)
      evaluators = {n: e for n, e in evaluators_lib.from_config(
          ctx.config.evals, evaluators_lib.reporting(ctx.config.evals)).items()
                    if isinstance(e, retrieval_eval.Evaluator)}
      return evaluators_lib.to_json(evaluators_lib.run_all(evaluators, scorer, data))

    graph.append(stages.Stage(name="teacher_ensemble", title="diagnostic: mean of teachers",
                              config_keys=("data", "eval"), eval_keys=eval_keys,
                              inputs=teacher_stages, extra=teacher_extra, run=run_ensemble))

  student_inputs: tuple[str, ...] = ()
  if _denoise_enabled(config):

    def run_denoise(ctx):
      kept, quality = denoise_lib.denoise(loaded_teachers(ctx), data.train, ctx.config.denoise,
                                          chunk_size=ctx.config.eval.chunk_size)
      if jax.process_index() == 0:
        artifacts.save_npy_atomic(ctx.dir / KEPT_CAPTIONS, kept)
      return {"removal": quality, "fraction": ctx.config.denoise.fraction,
              "max_rank": ctx.config.denoise.max_rank}

    graph.append(stages.Stage(name="denoise", title="teachers rank the training captions",
                              config_keys=("data", "denoise", "eval"),
                              inputs=teacher_stages, extra=teacher_extra, run=run_denoise))
    student_inputs = ("denoise",)

  def run_student(ctx, *, distill_weight, within):
    train_split = data.train
    if "denoise" in ctx.inputs:
      train_split = dataclasses.replace(
          data.train, caption_mask=artifacts.load_npy(ctx.input_dir("denoise") / KEPT_CAPTIONS))
    return trainer.train_model(
        ctx, data, mesh, text_embedding=ctx.config.student.text_embedding,
        experts=ctx.config.student.experts or ctx.config.model.experts,
        seed=trainer.stage_seed(ctx.config.seed, "student"), distill_weight=distill_weight,
        within=within, loaded_teachers=loaded_teachers(ctx) if distill_weight > 0 else (),
        train_split=train_split)

  student_keys = MODEL_KEYS + ("student.text_embedding", "student.experts")
  if config.student.train_baseline:
    graph.append(stages.Stage(
        name="student_baseline", title="student without distillation",
        config_keys=student_keys, eval_keys=eval_keys, inputs=student_inputs,
        run=functools.partial(run_student, distill_weight=0.0, within=False)))
  distilled = config.distill.weight > 0
  graph.append(stages.Stage(
      name=config.student.name, title="distilled student" if distilled else "student",
      config_keys=student_keys + ("distill", "within"), eval_keys=eval_keys,
      inputs=student_inputs + (teacher_stages if distilled else ()),
      extra=teacher_extra if distilled else None,
      run=functools.partial(run_student, distill_weight=config.distill.weight, within=True)))
  return graph


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """Runs the whole TeachText pipeline in `workdir`; returns (and writes) results.json."""
  mesh = sharding.make_mesh()
  check_config(config, mesh)
  text = config_lib.parse_list(config.teachers.text_embeddings) + [config.student.text_embedding]
  data = trainer.load_data(config.data, text)
  _check_data(config, data)
  external = [os.path.expanduser(d) for d in config_lib.parse_list(config.teachers.artifact_dirs)]
  trainer.load_teachers(external, data)  # External teachers are checked before any training.
  results = stages.run_pipeline(config, workdir, build_graph(config, data, mesh),
                                data_fingerprint=trainer.data_fingerprint(config.data),
                                non_result_keys=NON_RESULT_KEYS)
  evaluators = evaluators_lib.from_config(config.evals)
  if jax.process_index() == 0:
    report = results_lib.report(workdir, config, results, evaluators, title="TeachText")
    plots.recall_at_k(results_lib.curves(report, "recall_at_k", "test"),
                      workdir / "plots" / "recall_at_k.png",
                      title=f"TeachText, test split: R@K ({workdir})")
  sharding.sync("teachtext-done")
  return results
