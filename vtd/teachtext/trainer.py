"""TeachText stage bodies: load the data, train and evaluate one retrieval model.

`vtd/teachtext/pipeline.py` declares the stage graph (teachers -> denoise -> students); every
trained stage is one `train_model` call: a CE/MoEE model trained with L_r (+ lambda * L_d
towards frozen teachers, + the within-modality terms), its checkpoint selected on validation
t2v geometric mean of R@1/5/10 (as the official code), its artifact written to
`<stage>/model`, and its test metrics (and QB-Norm's, if enabled) returned for results.json.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from vtd import artifacts
from vtd import config_lib
from vtd import fingerprint
from vtd import optim
from vtd import seeds
from vtd import stages
from vtd import train as train_lib
from vtd.teachtext.data import ce_features
from vtd.teachtext.data import retrieval as retrieval_data
from vtd.teachtext.data import synthetic_retrieval
from vtd.errors import UserError
from vtd.evaluators import common as evaluators_lib
from vtd.teachtext import evaluate as tt_evaluate
from vtd.teachtext import input_pipeline
from vtd.teachtext import teachers as teachers_lib
from vtd.teachtext import losses


def load_data(data_cfg: ml_collections.ConfigDict, text_embeddings: Sequence[str] = ()
              ) -> retrieval_data.RetrievalDataset:
  """The dataset named by `data_cfg.source` (`config.data`).

  Args:
    text_embeddings: for source=ce, the text embeddings to load (they dominate memory);
      the other sources hold all of theirs.
  """
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
    return ce_features.load_ce_dataset(
        os.path.expanduser(data_cfg.root), data_cfg.dataset,
        experts=config_lib.parse_list(data_cfg.experts) or None, text_embeddings=sorted(text_embeddings),
        split_dir=data_cfg.split_dir or None, dtype=np.dtype(data_cfg.dtype))
  raise UserError(f"config.data.source must be synthetic, npz or ce, got {data_cfg.source!r}")


def data_fingerprint(data_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the data of `config.data` is, for stage provenance: the generator's identity
  (spec + version) for embedded data, file fingerprints for real data."""
  if data_cfg.source == "synthetic":
    spec = synthetic_retrieval.SyntheticRetrievalSpec(**data_cfg.synthetic.to_dict())
    return {"generator": "synthetic_retrieval", "key": spec.cache_key()}
  paths = [data_cfg.path] if data_cfg.source == "npz" else [data_cfg.root, data_cfg.split_dir]
  return {"files": fingerprint.paths_fingerprint(paths)}


def stage_seed(seed: int, group: str) -> int:
  """Independent, reproducible seed per stage group ('student' stages share one)."""
  return seeds.derive_seed(seed, group)


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
  wanted = config_lib.parse_list(experts) or list(dims)
  unknown = [e for e in wanted if e not in dims]
  if unknown:
    raise UserError(f"experts {unknown} are not in the data ({sorted(dims)})")
  return sorted((e, dims[e]) for e in wanted)


def check_teacher(teacher: teachers_lib.Teacher, variables: Any,
                  data: retrieval_data.RetrievalDataset) -> None:
  """One-line errors when a teacher artifact does not fit the data."""
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


def load_teachers(teacher_dirs: Sequence[Any], data: retrieval_data.RetrievalDataset
                  ) -> list[tuple[teachers_lib.Teacher, Any]]:
  """Loads and checks teacher artifacts against the data."""
  missing = [str(d) for d in teacher_dirs if not epath.Path(d).is_dir()]
  if missing:
    raise UserError(f"teacher artifact directories not found: {missing}; train the teachers "
                    "first or fix config.teachers.artifact_dirs")
  loaded = [teachers_lib.load_teacher(d) for d in teacher_dirs]
  for teacher, variables in loaded:
    check_teacher(teacher, variables, data)
  return loaded


def _per_epoch(loop_cfg: ml_collections.ConfigDict, steps_per_epoch: int
               ) -> ml_collections.ConfigDict:
  """`eval_every_steps` / `checkpoint_every_steps` of -1 mean once per epoch."""
  out = ml_collections.ConfigDict(loop_cfg.to_dict())
  for key in ("eval_every_steps", "checkpoint_every_steps"):
    if out[key] < 0:
      out[key] = steps_per_epoch
  return out


def train_model(ctx: stages.StageContext, data: retrieval_data.RetrievalDataset, mesh, *,
                text_embedding: str, experts: str, seed: int, distill_weight: float = 0.0,
                within: bool = False,
                loaded_teachers: Sequence[tuple[teachers_lib.Teacher, Any]] = (),
                train_split: retrieval_data.RetrievalSplit | None = None) -> dict[str, Any]:
  """Trains one retrieval model in `ctx.dir`, writes its artifact, returns its results.

  Reads `ctx.config` groups model, loss, train, optim, eval, qbnorm (+ distill when
  `distill_weight > 0`, + within when `within`).

  Args:
    experts: comma-separated video experts of this model ('' = all of the data).
    distill_weight: lambda of L_d (0: no teachers needed).
    within: add the within-modality terms of `config.within`.
    train_split: the training split to use (e.g. with denoised captions); default data.train.
  """
  config = ctx.config
  name = ctx.name
  split = train_split if train_split is not None else data.train
  model = teachers_lib.build_model(config.model, model_experts(experts, split))
  steps, steps_per_epoch = num_steps(config.train, split.num_videos)

  teachers, frozen = (), None
  if distill_weight > 0:
    teachers = tuple(t for t, _ in loaded_teachers)
    if config.distill.teacher_mode == "cached":
      frozen = [teachers_lib.cache_embeddings(t, v, split, chunk_size=config.eval.chunk_size)
                for t, v in loaded_teachers]
    else:
      frozen = [v for _, v in loaded_teachers]
  live = distill_weight > 0 and config.distill.teacher_mode == "live"
  needed_text = sorted({text_embedding} | ({t.text_embedding for t in teachers} if live
                                           else set()))
  train_iter = input_pipeline.train_iterator(split, global_batch_size=config.train.batch_size,
                                             seed=seed, text_embeddings=needed_text)
  sample = next(input_pipeline.train_iterator(split, global_batch_size=2, seed=0,
                                              text_embeddings=[text_embedding]))

  def init_variables(rng):
    return model.init(rng, sample["text"][text_embedding], sample["experts"],
                      sample["available"], train=False)

  evaluators = evaluators_lib.from_config(config.evals)
  if "val" not in evaluators:
    raise UserError("config.evals.val (the validation evaluator) is missing; checkpoints are "
                    "selected on it")
  validation = evaluators.pop("val")

  def scorer(variables):
    return tt_evaluate.Scorer.single(model, variables, text_embedding,
                                     chunk_size=config.eval.chunk_size)

  def validate(variables):
    return validation.run(scorer(variables), data).metrics

  loss_fn = losses.make_loss_fn(
      model, text_embedding, config.loss, distill_weight=distill_weight, teachers=teachers,
      distill_cfg=config.distill if distill_weight > 0 else None,
      within_cfg=config.within if within else None)
  program = train_lib.Program(
      name=name, init_variables=init_variables, loss_fn=loss_fn,
      optimizer=optim.create_optimizer(config.optim, steps_per_epoch), train_iter=train_iter,
      num_steps=steps, frozen=frozen, evaluate=validate)
  fit = train_lib.fit(program, _per_epoch(config.train, steps_per_epoch), ctx.dir, mesh, seed)
  result = {"model_name": name, "text_embedding": text_embedding, "step": fit.step,
            "num_steps": steps, "distill_weight": distill_weight,
            "distill_method": config.distill.method if distill_weight > 0 else None,
            "within": within, "train_captions": int(split.caption_mask.sum()),
            "teachers": [ctx.rel(t.artifact_dir) for t in teachers], "val": fit.metrics,
            **evaluators_lib.to_json(evaluators_lib.run_all(evaluators, scorer(fit.variables),
                                                            data)),
            "test_cost": tt_evaluate.video_cost(model, fit.variables, data.test,
                                                chunk_size=config.eval.chunk_size),
            "expert_shapes": [list(s) for s in model.expert_shapes],
            "artifact": ctx.rel(ctx.dir / "model")}
  if jax.process_index() == 0:
    artifacts.save_artifact(ctx.dir / "model", fit.variables, config,
                            {"method": "teachtext", **result})
  return result
