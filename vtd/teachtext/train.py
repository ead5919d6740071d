"""TeachText pipeline: N teachers -> frozen -> baseline student and distilled student -> test.

Stages (each a directory under the workdir, reused when finished, resumed when interrupted):
  teacher_<embedding>   one CE/MoEE model per configured text embedding (L_r only), with the
                        video experts `teachers.experts`
  denoise               (if `denoise.fraction` or `denoise.max_rank`) the teachers score the
                        training captions; the noisiest are dropped for the students
  student_baseline      the student's own text embedding and `student.experts`, L_r only
  <student.name>        the same student with L_r + lambda * L_d (TeachText or RKD, towards
                        the teachers) + the within-modality terms of `config.within`
Teachers with more video experts than the student give video-modality distillation. Every
stage selects its best checkpoint on validation t2v geometric mean of R@1/5/10 (as the
official code), writes a model artifact to `<stage>/model`, and is evaluated on the test split
(and with QB-Norm if `qbnorm.enabled`); `results.json` in the workdir collects all test metrics.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vtd import artifacts
from vtd import optim
from vtd import results as results_lib
from vtd import sharding
from vtd import stages
from vtd import train as train_lib
from vtd.data import ce_features
from vtd.data import retrieval as retrieval_data
from vtd.data import synthetic_retrieval
from vtd.errors import UserError
from vtd.losses import distillation, ranking, relational, within_modality
from vtd.teachtext import denoise as denoise_lib
from vtd.teachtext import evaluate as tt_evaluate
from vtd.teachtext import input_pipeline
from vtd.teachtext import teachers as teachers_lib
from vtd.teachtext.models import RetrievalModel, similarity, stack_available


DISTILL_METHODS = ("teachtext", "rkd")


def load_data(config: ml_collections.ConfigDict) -> retrieval_data.RetrievalDataset:
  """The dataset named by `config.data.source`."""
  data_cfg = config.data
  if data_cfg.source == "synthetic":
    spec = synthetic_retrieval.SyntheticRetrievalSpec(**data_cfg.synthetic.to_dict())
    return synthetic_retrieval.load_or_generate(spec, data_cfg.cache_dir)
  if data_cfg.source == "npz":
    if not data_cfg.path:
      raise UserError("config.data.path is empty; set it to a vtd retrieval .npz file")
    return retrieval_data.load_npz(os.path.expanduser(data_cfg.path))
  if data_cfg.source == "ce":
    if not data_cfg.root or not data_cfg.dataset:
      raise UserError("config.data.source=ce needs config.data.root (the feature root) and "
                      "config.data.dataset (e.g. msrvtt_full)")
    experts = [e.strip() for e in data_cfg.experts.split(",") if e.strip()] or None
    # Only the text embeddings some model reads are loaded (they dominate memory).
    text = sorted(set(_teacher_embeddings(config)) | {config.student.text_embedding})
    return ce_features.load_ce_dataset(
        os.path.expanduser(data_cfg.root), data_cfg.dataset, experts=experts,
        text_embeddings=text, split_dir=data_cfg.split_dir or None,
        dtype=np.dtype(data_cfg.dtype))
  raise UserError(f"config.data.source must be synthetic, npz or ce, got {data_cfg.source!r}")


def stage_seed(seed: int, group: str) -> int:
  """Independent, reproducible seed per stage group ('student' stages share one)."""
  return (seed * 1_000_003 + zlib.crc32(group.encode())) % (2**31 - 1)


def num_steps(train_cfg: ml_collections.ConfigDict, num_videos: int) -> tuple[int, int]:
  """(total steps, steps per epoch); an epoch is one pass over the training videos."""
  steps_per_epoch = math.ceil(num_videos / train_cfg.batch_size)
  if train_cfg.num_steps > 0:
    return train_cfg.num_steps, steps_per_epoch
  if train_cfg.num_epochs <= 0:
    raise UserError("set config.train.num_epochs or config.train.num_steps to a positive value")
  return int(round(train_cfg.num_epochs * steps_per_epoch)), steps_per_epoch


def model_experts(experts: str, split: retrieval_data.RetrievalSplit
                  ) -> list[tuple[str, tuple[int, ...]]]:
  """(name, shape) of the video experts a model uses: comma-separated `experts`, '' = all."""
  dims = split.expert_dims()
  wanted = [e.strip() for e in experts.split(",") if e.strip()] or list(dims)
  unknown = [e for e in wanted if e not in dims]
  if unknown:
    raise UserError(f"experts {unknown} are not in the data ({sorted(dims)})")
  return sorted((e, dims[e]) for e in wanted)


def _flat(parts: Sequence[jax.Array]) -> jax.Array:
  """Per-expert unit vectors [B, d_m] -> one [B, sum d_m] unit vector per row (for RKD)."""
  return jnp.concatenate(parts, axis=-1) / jnp.sqrt(len(parts))


def make_loss_fn(model: RetrievalModel, text_embedding: str, config: ml_collections.ConfigDict,
                 distill_weight: float, teachers: tuple[teachers_lib.Teacher, ...],
                 within: bool = False):
  """L_r(S_s) + lambda * L_d + within-modality terms, on the global batch.

  L_d is TeachText's (`config.distill.method=teachtext`: criterion(S_s, Phi(S_1..S_N))) or
  RKD's (`rkd`: distance- and angle-wise relations of the student's embeddings towards each
  teacher's, averaged over teachers).
  """
  loss_cfg, distill_cfg, within_cfg = config.loss, config.distill, config.within
  if distill_cfg.method not in DISTILL_METHODS:
    raise UserError(f"config.distill.method must be one of {DISTILL_METHODS}, got "
                    f"{distill_cfg.method!r}")
  if distill_cfg.rkd_on not in ("text", "video", "both"):
    raise UserError(f"config.distill.rkd_on must be text|video|both, got {distill_cfg.rkd_on!r}")

  def loss_fn(params, batch_stats, batch, frozen, rng):
    del rng  # The models are deterministic (no dropout), as the official configs.
    (text, weights, video), updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["text"][text_embedding],
        batch["experts"], batch["available"], train=True, mutable=["batch_stats"])
    available = stack_available(batch["available"], model.expert_names)
    sims = similarity(text, weights, video, available)
    rank_loss = ranking.max_margin_ranking_loss(sims, loss_cfg.margin,
                                                fix_norm=loss_cfg.fix_norm)
    measurements = {"ranking_loss": rank_loss}
    loss = rank_loss
    if distill_weight > 0:
      embs = teachers_lib.teacher_embeddings(teachers, frozen, batch, distill_cfg.teacher_mode)
      if distill_cfg.method == "teachtext":
        target = distillation.aggregate_teachers(jnp.stack([similarity(*e) for e in embs]),
                                                 distill_cfg.aggregation)
        distill_loss = distillation.similarity_distillation_loss(
            sims, target, distill_cfg.criterion, temperature=distill_cfg.temperature)
      else:
        sides = {"text": [(_flat(text), _flat(e[0])) for e in embs],
                 "video": [(_flat(video), _flat(e[2])) for e in embs]}
        pairs = [p for side in (("text", "video") if distill_cfg.rkd_on == "both"
                                else (distill_cfg.rkd_on,)) for p in sides[side]]
        distill_loss = sum(relational.rkd_loss(
            s, t, distance_weight=distill_cfg.rkd_distance_weight,
            angle_weight=distill_cfg.rkd_angle_weight)[0] for s, t in pairs) / len(embs)
      measurements["distill_loss"] = distill_loss
      loss = loss + distill_weight * distill_loss
    if within and (within_cfg.caption_weight > 0 or within_cfg.video_weight > 0):
      # Within-modal matrices from the model's own embeddings, weighted like S_tv; a term with
      # weight 0 is not computed.
      s_tt = (similarity(text, weights, text, available) if within_cfg.caption_weight > 0
              else None)
      s_vv = (similarity(video, weights, video, available) if within_cfg.video_weight > 0
              else None)
      within_loss, parts = within_modality.within_modality_loss(
          sims, s_tt, s_vv, caption_weight=within_cfg.caption_weight,
          caption_temperature=within_cfg.caption_temperature,
          video_weight=within_cfg.video_weight, video_temperature=within_cfg.video_temperature,
          stop_gradient=within_cfg.stop_gradient)
      measurements.update(parts)
      loss = loss + within_loss
    return loss, (measurements, updates["batch_stats"])

  return loss_fn


def _check_teacher(teacher: teachers_lib.Teacher, variables: Any,
                   data: retrieval_data.RetrievalDataset) -> None:
  split = data.train
  if teacher.text_embedding not in split.text:
    raise UserError(f"teacher {teacher.name} uses text embedding {teacher.text_embedding!r}, "
                    f"not in the data ({sorted(split.text)})")
  expected = variables["params"]["text_vlad"]["clusters"].shape[0]
  got = split.text_dim(teacher.text_embedding)
  if expected != got:
    raise UserError(f"embedding-dim mismatch: teacher {teacher.name} ({teacher.artifact_dir}) "
                    f"expects {teacher.text_embedding} features of dim {expected}, the data "
                    f"has {got}")
  dims = split.expert_dims()
  for name, shape in teacher.model.expert_shapes:
    if dims.get(name) != tuple(shape):
      raise UserError(f"teacher {teacher.name} expects expert {name!r} of shape "
                      f"{tuple(shape)}, the data has {dims.get(name)}")


def load_teachers(teacher_dirs: Sequence[str], data: retrieval_data.RetrievalDataset
                  ) -> list[tuple[teachers_lib.Teacher, Any]]:
  """Loads and checks teacher artifacts against the data, before anything is trained."""
  missing = [d for d in teacher_dirs if not os.path.isdir(d)]
  if missing:
    raise UserError(f"teacher artifact directories not found: {missing}")
  loaded = [teachers_lib.load_teacher(d) for d in teacher_dirs]
  for teacher, variables in loaded:
    _check_teacher(teacher, variables, data)
  return loaded


def _per_epoch(loop_cfg: ml_collections.ConfigDict, steps_per_epoch: int
               ) -> ml_collections.ConfigDict:
  """`eval_every_steps` / `checkpoint_every_steps` of -1 mean once per epoch."""
  out = ml_collections.ConfigDict(loop_cfg.to_dict())
  for key in ("eval_every_steps", "checkpoint_every_steps"):
    if out[key] < 0:
      out[key] = steps_per_epoch
  return out


def train_model(config: ml_collections.ConfigDict, data: retrieval_data.RetrievalDataset,
                mesh, stage_dir: str, *, name: str, text_embedding: str, experts: str, seed: int,
                distill_weight: float = 0.0, within: bool = False,
                loaded_teachers: Sequence[tuple[teachers_lib.Teacher, Any]] = (),
                train_split: retrieval_data.RetrievalSplit | None = None) -> dict[str, Any]:
  """Trains one retrieval model in `stage_dir`, writes its artifact, returns its results.

  Args:
    experts: comma-separated video experts of this model ('' = all of the data).
    distill_weight: lambda of L_d (0: no teachers needed).
    within: add the within-modality terms of `config.within`.
    train_split: the training split to use (e.g. with denoised captions); default data.train.
  """
  split = train_split if train_split is not None else data.train
  if text_embedding not in split.text:
    raise UserError(f"{name}: text embedding {text_embedding!r} not in the data "
                    f"(has {sorted(split.text)})")
  sharding.check_batch_size(config.train.batch_size, mesh, "config.train.batch_size")
  model = teachers_lib.build_model(config.model, model_experts(experts, split))
  steps, steps_per_epoch = num_steps(config.train, split.num_videos)

  teachers, frozen = (), None
  if distill_weight > 0:
    if not loaded_teachers:
      raise UserError(f"{name}: distillation needs teachers (config.teachers)")
    loaded = list(loaded_teachers)
    teachers = tuple(t for t, _ in loaded)
    if config.distill.teacher_mode == "cached":
      frozen = [teachers_lib.cache_embeddings(t, v, split, chunk_size=config.eval.chunk_size)
                for t, v in loaded]
    else:
      frozen = [v for _, v in loaded]
  needed_text = sorted({text_embedding} | (
      {t.text_embedding for t in teachers} if config.distill.teacher_mode == "live" else set()))
  train_iter = input_pipeline.train_iterator(split, global_batch_size=config.train.batch_size,
                                             seed=seed, text_embeddings=needed_text)

  sample = next(input_pipeline.train_iterator(split, global_batch_size=2, seed=0,
                                              text_embeddings=[text_embedding]))

  def init_variables(rng):
    return model.init(rng, sample["text"][text_embedding], sample["experts"],
                      sample["available"], train=False)

  eval_kw = dict(chunk_size=config.eval.chunk_size, query_chunk=config.eval.query_chunk)

  def validate(variables):
    return tt_evaluate.flatten_metrics(tt_evaluate.evaluate(
        model, variables, data.val, text_embedding, **eval_kw))

  program = train_lib.Program(
      name=name, init_variables=init_variables,
      loss_fn=make_loss_fn(model, text_embedding, config, distill_weight, teachers, within),
      optimizer=optim.create_optimizer(config.optim, steps_per_epoch), train_iter=train_iter,
      num_steps=steps, frozen=frozen, evaluate=validate)
  fit = train_lib.fit(program, _per_epoch(config.train, steps_per_epoch), stage_dir, mesh, seed)
  test = tt_evaluate.evaluate(model, fit.variables, data.test, text_embedding, **eval_kw)
  result = {"model_name": name, "text_embedding": text_embedding, "step": fit.step,
            "num_steps": steps, "distill_weight": distill_weight,
            "distill_method": config.distill.method if distill_weight > 0 else None,
            "within": within, "train_captions": int(split.caption_mask.sum()),
            "teachers": [t.artifact_dir for t in teachers], "val": fit.metrics, "test": test,
            "test_cost": tt_evaluate.video_cost(model, fit.variables, data.test,
                                                chunk_size=config.eval.chunk_size),
            "expert_shapes": [list(s) for s in model.expert_shapes],
            "artifact": os.path.join(stage_dir, "model")}
  if config.qbnorm.enabled:
    result["test_qbnorm"] = tt_evaluate.evaluate_qbnorm(
        model, fit.variables, bank=data.split(config.qbnorm.bank), test=data.test,
        text_embedding=text_embedding, beta=config.qbnorm.beta, k=config.qbnorm.k,
        bank_chunk=config.qbnorm.bank_chunk, **eval_kw)
    result["qbnorm"] = {"bank": config.qbnorm.bank, "beta": config.qbnorm.beta,
                        "k": config.qbnorm.k,
                        "querybank_size": int(data.split(config.qbnorm.bank).caption_mask.sum())}
  if jax.process_index() == 0:
    artifacts.save_artifact(os.path.join(stage_dir, "model"), fit.variables, config,
                            {"method": "teachtext", **result})
  return result


def _teacher_embeddings(config) -> list[str]:
  return [e.strip() for e in config.teachers.text_embeddings.split(",") if e.strip()]


def _denoise_enabled(config) -> bool:
  return config.denoise.fraction > 0 or config.denoise.max_rank > 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the whole TeachText pipeline in `workdir`; returns (and writes) results.json."""
  if config.student.name in ("student_baseline", "teacher_ensemble", "denoise") or \
      config.student.name.startswith("teacher_"):
    raise UserError(f"config.student.name={config.student.name!r} clashes with another stage")
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.train.batch_size, mesh, "config.train.batch_size")
  data = load_data(config)
  results: dict[str, Any] = {}
  student_experts = config.student.experts or config.model.experts
  teacher_experts = config.teachers.experts or config.model.experts

  teacher_dirs = [os.path.expanduser(d.strip())
                  for d in config.teachers.artifact_dirs.split(",") if d.strip()]
  if not teacher_dirs:
    for emb in _teacher_embeddings(config):
      stage_dir = os.path.join(workdir, f"teacher_{emb}")
      results[f"teacher_{emb}"] = stages.run_stage(stage_dir, lambda d, emb=emb: train_model(
          config, data, mesh, d, name=f"teacher_{emb}", text_embedding=emb,
          experts=teacher_experts, seed=stage_seed(config.seed, f"teacher_{emb}")))
      teacher_dirs.append(os.path.join(stage_dir, "model"))
  needs_teachers = config.distill.weight > 0 or _denoise_enabled(config)
  loaded_teachers = load_teachers(teacher_dirs, data) if needs_teachers else []
  if len(loaded_teachers) > 1:
    # Diagnostic, not a deployable model: Phi(S_1..S_N) on the test split, i.e. the target
    # the student is pulled towards, using every teacher's text embedding at test time.
    embs = [tt_evaluate.embed_split(t.model, v, data.test, t.text_embedding,
                                    chunk_size=config.eval.chunk_size)
            for t, v in loaded_teachers]
    results["teacher_ensemble"] = {"test": tt_evaluate.retrieval_metrics_from_embeddings(
        embs, data.test.caption_mask, query_chunk=config.eval.query_chunk)}

  train_split = data.train
  if _denoise_enabled(config):
    mask_path = os.path.join(workdir, "denoise", "kept_captions.npy")

    def run_denoise(d):
      kept, quality = denoise_lib.denoise(loaded_teachers, data.train, config.denoise,
                                          chunk_size=config.eval.chunk_size,
                                          query_chunk=config.eval.query_chunk)
      if jax.process_index() == 0:
        np.save(mask_path, kept)
      return {"removal": quality, "fraction": config.denoise.fraction,
              "max_rank": config.denoise.max_rank}

    results["denoise"] = stages.run_stage(os.path.join(workdir, "denoise"), run_denoise)
    train_split = dataclasses.replace(data.train, caption_mask=np.load(mask_path))

  student_seed = stage_seed(config.seed, "student")
  # (name, distillation weight, within-modality terms)
  students = [(config.student.name, config.distill.weight, True)]
  if config.student.train_baseline:
    students.insert(0, ("student_baseline", 0.0, False))
  for name, weight, within in students:
    results[name] = stages.run_stage(
        os.path.join(workdir, name), lambda d, n=name, w=weight, wi=within: train_model(
            config, data, mesh, d, name=n, text_embedding=config.student.text_embedding,
            experts=student_experts, seed=student_seed, distill_weight=w, within=wi,
            loaded_teachers=loaded_teachers, train_split=train_split))
  table = {k: v["test"] for k, v in results.items() if "test" in v}
  table.update({f"{k}+qbnorm": v["test_qbnorm"] for k, v in results.items()
                if "test_qbnorm" in v})
  if jax.process_index() == 0:
    artifacts.write_json_atomic(os.path.join(workdir, "results.json"), results)
    print(results_lib.format_table(table, title=f"TeachText test metrics ({workdir})"))
  sharding.sync("teachtext-done")
  return results


def evaluate_artifact(variables: Any, config: ml_collections.ConfigDict,
                      metadata: dict[str, Any], split: str) -> dict[str, dict[str, float]]:
  """Metrics of an exported TeachText model on a split (used by `python -m vtd.evaluate`)."""
  data = load_data(config)
  model = teachers_lib.build_model(config.model,
                                   [(n, tuple(s)) for n, s in metadata["expert_shapes"]])
  return tt_evaluate.evaluate(model, variables, data.split(split), metadata["text_embedding"],
                              chunk_size=config.eval.chunk_size,
                              query_chunk=config.eval.query_chunk)
