"""Unsupervised foreground segmentation over generations (ICCV'17 / IJCV'19).

Stages (directories under the workdir; finished ones are reused, interrupted ones resume):
  teacher          VideoPCA on every training video -> soft masks, gen-1 selection scores
  gen1/<student>   each student trained on the top `selection.keep_fraction` teacher masks
  gen1/evalseg     EvalSeg-Net trained to regress cos(student mask, Multi-Net mask)
  gen2/<student>   students retrained from scratch on gen-1 student masks kept by EvalSeg-Net
  ...              up to `config.generations`
The test split is only used for the reported metrics (P, J, CorLoc), never for selection.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vtd import artifacts
from vtd import sharding
from vtd import stages
from vtd import train as train_lib
from vtd.errors import UserError
from vtd.evaluators import segmentation as seg_metrics
from vtd.segmentation import frames as frames_lib
from vtd.segmentation import input_pipeline
from vtd.segmentation import models
from vtd.segmentation import overlays
from vtd.segmentation import students as students_lib
from vtd.segmentation import teacher as teacher_lib


def _student_names(config) -> list[str]:
  names = [n.strip() for n in config.students.names.split(",") if n.strip()]
  unknown = [n for n in names if n not in models.STUDENTS]
  if unknown:
    raise UserError(f"config.students.names has {unknown}; valid: {sorted(models.STUDENTS)}")
  return names


def test_metrics(masks: np.ndarray, test: input_pipeline.TestSet,
                 eval_cfg: ml_collections.ConfigDict) -> dict[str, float]:
  """Metrics (percent) of soft masks [N, s, s] against the test set's ground truth.

  Each mask is resized to its image's original size (the protocols never resize the ground
  truth), min-max normalised and thresholded (or refined with GrabCut). P and J where the set
  has masks (Object Discovery protocol), CorLoc where it has boxes (YouTube-Objects).
  """
  binary = []
  for mask, image in zip(masks, test.images):
    soft = frames_lib.resize_masks(mask[None], image.shape[:2])[0]
    if eval_cfg.grabcut:
      binary.append(seg_metrics.grabcut_refine(image, soft, threshold=eval_cfg.bin_threshold))
    else:
      binary.append(seg_metrics.binarize(soft, eval_cfg.bin_threshold, normalize=True))
  by_class = test.average == "classes"
  out = {}
  if test.masks is not None:
    if by_class:
      scores = seg_metrics.object_discovery_scores(binary, test.masks, test.class_names)
      out.update(P=scores["mean/P"], J=scores["mean/J"])
    else:
      out.update(P=100 * seg_metrics.pixel_accuracy(binary, test.masks),
                 J=100 * seg_metrics.jaccard(binary, test.masks))
  if test.boxes is not None:
    boxes = seg_metrics.masks_to_boxes(binary, rule=eval_cfg.box_rule)
    out["CorLoc"] = (seg_metrics.corloc_by_class(boxes, test.boxes, test.class_names)["mean"]
                     if by_class else 100 * seg_metrics.corloc(boxes, test.boxes))
  return out


def _selection_quality(masks: np.ndarray, gt: np.ndarray | None, threshold: float
                       ) -> dict[str, float]:
  """Mean J (percent) of a set of training masks against ground truth (reporting only)."""
  if gt is None or len(masks) == 0:
    return {}
  binary = seg_metrics.binarize(masks, threshold, normalize=True)
  return {"J": 100 * seg_metrics.jaccard(binary, gt), "count": float(len(masks))}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  mesh = sharding.make_mesh()
  test = input_pipeline.load_test_set(config)
  size = config.data.image_size
  test_images = None if test is None else frames_lib.resize_images(test.images, size)
  names = _student_names(config)
  results: dict[str, Any] = {}

  def metrics_of(masks: np.ndarray) -> dict[str, Any]:
    return {} if test is None else {"test": test_metrics(masks, test, config.eval)}

  table_path = os.path.join(workdir, "teacher", "frames.npz")
  teacher_test_path = os.path.join(workdir, "teacher", "test_masks.npy")

  def run_teacher(stage_dir):
    # Training videos are read only here: a finished teacher stage never re-reads them.
    train = input_pipeline.load_train_videos(config)
    table, test_masks = teacher_lib.run(train, test, config, mesh)
    if jax.process_index() == 0:
      table.save(table_path)
      if test_masks is not None:
        np.save(teacher_test_path, test_masks)
    keep = frames_lib.top_fraction(table.scores, config.selection.keep_fraction)
    return {**({} if test_masks is None else metrics_of(test_masks)),
            "train_data": train.summary(),
            "selection": {"all": _selection_quality(table.teacher, table.gt_masks, 0.5),
                          "kept": _selection_quality(table.teacher[keep],
                                                     None if table.gt_masks is None
                                                     else table.gt_masks[keep], 0.5)}}

  results["videopca_teacher"] = stages.run_stage(os.path.join(workdir, "teacher"), run_teacher)
  table = frames_lib.FrameTable.load(table_path)
  frames_s = frames_lib.resize_images(table.images, size)
  keep = frames_lib.top_fraction(table.scores, config.selection.keep_fraction,
                                 minimum=config.student_training.batch_size)
  train_images, train_targets = table.images[keep], table.teacher[keep]
  prev_test = ({"videopca_teacher": np.load(teacher_test_path)}
               if os.path.exists(teacher_test_path) else {})

  for gen in range(1, config.generations + 1):
    gen_dir = os.path.join(workdir, f"gen{gen}")
    preds_train, preds_test = {}, {}
    for s_idx, name in enumerate(names):
      stage_dir = os.path.join(gen_dir, name)
      model = students_lib.build_student(name, config.students)

      def run_student(d, name=name, model=model, s_idx=s_idx):
        seed = config.seed * 1000 + gen * 100 + s_idx
        program = students_lib.student_program(f"gen{gen}/{name}", model, train_images,
                                               train_targets, config, seed)
        fit = train_lib.fit(program, config.train, d, mesh, seed)
        kw = dict(size=size, scale=config.student_training.target_scale,
                  normalisation=config.multinet.normalisation)
        if jax.process_index() == 0:
          np.save(os.path.join(d, "train_masks.npy"),
                  students_lib.predict(model, fit.variables, frames_s, **kw).astype(np.float16))
          if test is not None:
            np.save(os.path.join(d, "test_masks.npy"),
                    students_lib.predict(model, fit.variables, test_images, **kw))
          artifacts.save_artifact(os.path.join(d, "model"), fit.variables, config,
                                  {"method": "segmentation", "model_name": f"gen{gen}/{name}",
                                   "student": name, "step": fit.step})
        sharding.sync(f"gen{gen}-{name}-masks")  # Process 0 wrote them; all read them.
        test_masks = None if test is None else np.load(os.path.join(d, "test_masks.npy"))
        return {**metrics_of(test_masks), "num_train_pairs": int(len(train_images))}

      results[f"gen{gen}/{name}"] = stages.run_stage(stage_dir, run_student)
      preds_train[name] = np.load(os.path.join(stage_dir, "train_masks.npy")).astype(np.float32)
      if test is not None:
        preds_test[name] = np.load(os.path.join(stage_dir, "test_masks.npy"))
    if test is not None:
      multi_test = students_lib.multinet(list(preds_test.values()))
      results[f"gen{gen}/multinet"] = metrics_of(multi_test)
    if test is not None and jax.process_index() == 0:
      overlays.write(os.path.join(workdir, "overlays", f"gen{gen}.png"), test_images,
                     {**prev_test, **{f"gen{gen}/{n}": m for n, m in preds_test.items()},
                      f"gen{gen}/multinet": multi_test}, count=config.eval.overlay_images)
    if gen == config.generations:
      break
    # EvalSeg-Net on this generation's students, then the next generation's training set.
    multi_train = students_lib.multinet(list(preds_train.values()))
    rng = np.random.default_rng(config.seed * 7919 + gen)
    n_frames = len(table)
    evalseg_frames = rng.permutation(n_frames)[:max(
        config.evalseg.batch_size, int(round(config.evalseg.train_fraction * n_frames)))]
    score_frames = np.setdiff1d(np.arange(n_frames), evalseg_frames)
    stack = np.stack([preds_train[n] for n in names])  # [S, F, size, size]
    evalseg_dir = os.path.join(gen_dir, "evalseg")

    def run_evalseg(d):
      ev_model = models.EvalSegNet(**config.evalseg.model.to_dict())
      cand = stack[:, evalseg_frames].reshape((-1, size, size))
      imgs = np.tile(frames_s[evalseg_frames], (len(names), 1, 1, 1))
      labels = students_lib.cosine(cand, np.tile(multi_train[evalseg_frames], (len(names), 1, 1)))
      seed = config.seed * 1000 + gen * 100 + 99
      program = students_lib.evalseg_program(ev_model, imgs, cand, labels, config, seed)
      fit = train_lib.fit(program, config.train, d, mesh, seed)
      cand_all = stack[:, score_frames].reshape((-1, size, size))
      imgs_all = np.tile(frames_s[score_frames], (len(names), 1, 1, 1))
      scores = students_lib.evalseg_scores(ev_model, fit.variables, imgs_all, cand_all,
                                           label_scale=config.evalseg.label_scale)
      if jax.process_index() == 0:
        np.save(os.path.join(d, "scores.npy"), scores)
      true_cos = students_lib.cosine(cand_all, np.tile(multi_train[score_frames],
                                                       (len(names), 1, 1)))
      return {"score_vs_true_cos_corr": float(np.corrcoef(scores, true_cos)[0, 1]),
              "num_scored": int(scores.size)}

    results[f"gen{gen}/evalseg"] = stages.run_stage(evalseg_dir, run_evalseg)
    scores = np.load(os.path.join(evalseg_dir, "scores.npy"))
    if config.evalseg.selection == "threshold":
      chosen = np.flatnonzero(scores >= config.evalseg.threshold)
    elif config.evalseg.selection == "top_fraction":
      chosen = frames_lib.top_fraction(scores, config.evalseg.keep_fraction)
    else:
      raise UserError(f"config.evalseg.selection must be threshold|top_fraction, got "
                      f"{config.evalseg.selection!r}")
    if chosen.size < config.student_training.batch_size:
      raise UserError(f"EvalSeg-Net kept {chosen.size} masks at gen {gen} (threshold "
                      f"{config.evalseg.threshold}); use --config.evalseg.selection=top_fraction")
    student_of, frame_of = np.divmod(chosen, score_frames.size)
    frame_ids = score_frames[frame_of]
    cand = stack[student_of, frame_ids]
    a = table.images.shape[1]
    train_images = table.images[frame_ids]
    train_targets = frames_lib.resize_masks(cand, (a, a))
    all_cand = stack[:, score_frames].reshape((-1, size, size))
    gt = None if table.gt_masks is None else frames_lib.resize_masks(
        table.gt_masks.astype(np.float32), (size, size)) > 0.5
    results[f"gen{gen}/evalseg"]["selection"] = {
        "all": _selection_quality(all_cand, None if gt is None else np.tile(
            gt[score_frames], (len(names), 1, 1)), 0.5),
        "kept": _selection_quality(cand, None if gt is None else gt[frame_ids], 0.5)}
    logging.info("gen %d: EvalSeg-Net kept %d of %d student masks", gen, chosen.size,
                 scores.size)

  if jax.process_index() == 0:
    artifacts.write_json_atomic(os.path.join(workdir, "results.json"), results)
    print(format_results(results, workdir))
  sharding.sync("segmentation-done")
  return results


def format_results(results: dict[str, Any], workdir: str) -> str:
  lines = [f"Segmentation test metrics ({workdir})", "", "| model | P | J | CorLoc |",
           "|---|---|---|---|"]
  for name, res in results.items():
    if "test" in res:
      cells = [f"{res['test'][k]:.1f}" if k in res["test"] else "-" for k in ("P", "J", "CorLoc")]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  sel = [(n, r["selection"]) for n, r in results.items() if "selection" in r]
  if sel:
    lines += ["", "| selection | J of all candidates | J of kept | kept |", "|---|---|---|---|"]
    for name, s in sel:
      if s.get("all") and s.get("kept"):
        lines.append(f"| {name} | {s['all']['J']:.1f} | {s['kept']['J']:.1f} | "
                     f"{int(s['kept']['count'])} / {int(s['all']['count'])} |")
  return "\n".join(lines)
