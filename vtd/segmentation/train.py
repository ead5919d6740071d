"""Unsupervised foreground segmentation over generations (ICCV'17 / IJCV'19).

Stages (directories under the workdir; finished ones are reused, interrupted ones resume):
  teacher          VideoPCA on every training video -> soft masks, gen-1 selection scores
  gen1/<student>   each student trained on the top `selection.keep_fraction` teacher masks
  gen1/evalseg     EvalSeg-Net trained to regress cos(student mask, Multi-Net mask)
  gen2/<student>   students retrained from scratch on gen-1 student masks kept by EvalSeg-Net
  ...              up to `config.generations`
Selection rules and label construction live in `selection.py`. The held-out splits
(`config.data.eval_splits`: "val" to choose defaults, "test" to report) are only scored, never
used for training or selection.
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
from vtd.segmentation import selection
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
  """Metrics (percent) of soft masks [N, s, s] against a held-out set's ground truth.

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


def _selection_quality(masks: np.ndarray, gt: np.ndarray | None) -> dict[str, float]:
  """Mean J (percent) of training masks against ground truth (reporting only, never used)."""
  if gt is None or len(masks) == 0:
    return {}
  binary = seg_metrics.binarize(masks, 0.5, normalize=True)
  return {"J": 100 * seg_metrics.jaccard(binary, gt), "count": float(len(masks))}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  mesh = sharding.make_mesh()
  eval_sets = input_pipeline.load_eval_sets(config)
  size = config.data.image_size
  eval_images = {k: frames_lib.resize_images(t.images, size) for k, t in eval_sets.items()}
  names = _student_names(config)
  scale = config.student_training.target_scale
  norm_rule = config.multinet.normalisation
  results: dict[str, Any] = {}

  def metrics_of(masks: dict[str, np.ndarray]) -> dict[str, Any]:
    return {split: test_metrics(m, eval_sets[split], config.eval) for split, m in masks.items()}

  teacher_dir = os.path.join(workdir, "teacher")
  table_path = os.path.join(teacher_dir, "frames.npz")
  held_out_path = lambda d, split, kind: os.path.join(d, f"{split}_{kind}.npy")

  def run_teacher(stage_dir):
    # Training videos are read only here: a finished teacher stage never re-reads them.
    train = input_pipeline.load_train_videos(config)
    table, held_out = teacher_lib.run(train, eval_sets, config, mesh)
    if jax.process_index() == 0:
      table.save(table_path)
      for split, masks in held_out.items():
        np.save(held_out_path(stage_dir, split, "masks"), masks)
    keep = selection.keep_best(table.scores, config.selection.keep_fraction,
                               config.selection.scope, table.video_index)
    gt = table.gt_masks
    return {**metrics_of(held_out), "train_data": train.summary(),
            "selection": {"all": _selection_quality(table.teacher, gt),
                          "kept": _selection_quality(table.teacher[keep],
                                                     None if gt is None else gt[keep])}}

  results["videopca_teacher"] = stages.run_stage(teacher_dir, run_teacher)
  sharding.sync("teacher-outputs")
  table = frames_lib.FrameTable.load(table_path)
  frames_s = frames_lib.resize_images(table.images, size)
  gt_s = None if table.gt_masks is None else frames_lib.resize_masks(
      table.gt_masks.astype(np.float32), (size, size)) > 0.5
  keep = selection.keep_best(table.scores, config.selection.keep_fraction,
                            config.selection.scope, table.video_index,
                            minimum=config.student_training.batch_size)
  train_images, train_targets = table.images[keep], table.teacher[keep]
  shown = {"videopca_teacher": {s: np.load(held_out_path(teacher_dir, s, "masks"))
                                for s in eval_sets
                                if os.path.exists(held_out_path(teacher_dir, s, "masks"))}}

  for gen in range(1, config.generations + 1):
    gen_dir = os.path.join(workdir, f"gen{gen}")
    raw_train, raw_eval = {}, {}
    for s_idx, name in enumerate(names):
      stage_dir = os.path.join(gen_dir, name)
      model = students_lib.build_student(name, config.students)

      def run_student(d, name=name, model=model, s_idx=s_idx):
        seed = config.seed * 1000 + gen * 100 + s_idx
        program = students_lib.student_program(f"gen{gen}/{name}", model, train_images,
                                               train_targets, config, seed)
        fit = train_lib.fit(program, config.train, d, mesh, seed)
        predict = lambda x: students_lib.predict(model, fit.variables, x, size=size,
                                                 scale=scale)
        if jax.process_index() == 0:
          np.save(os.path.join(d, "train_raw.npy"), predict(frames_s).astype(np.float16))
          for split, images in eval_images.items():
            np.save(held_out_path(d, split, "raw"), predict(images))
          artifacts.save_artifact(os.path.join(d, "model"), fit.variables, config,
                                  {"method": "segmentation", "model_name": f"gen{gen}/{name}",
                                   "student": name, "step": fit.step})
        sharding.sync(f"gen{gen}-{name}-masks")  # Process 0 wrote them; all read them.
        # Scored as the public inference script does: resize, per-image min-max, threshold.
        return {**metrics_of({s: np.load(held_out_path(d, s, "raw")) for s in eval_images}),
                "num_train_pairs": int(len(train_images))}

      results[f"gen{gen}/{name}"] = stages.run_stage(stage_dir, run_student)
      raw_train[name] = np.load(os.path.join(stage_dir, "train_raw.npy")).astype(np.float32)
      raw_eval[name] = {s: np.load(held_out_path(stage_dir, s, "raw")) for s in eval_images}

    # Student outputs -> [0, 1] masks (one scale per student, from its training-frame outputs).
    scales = {n: selection.student_scale(raw_train[n], config.multinet.scale_quantile)
              for n in names}
    as_mask = lambda raw, n: selection.normalise(raw, norm_rule, scales[n])
    masks_train = {n: as_mask(raw_train[n], n) for n in names}
    combine = config.multinet.combine
    multi_eval = {s: selection.multinet([as_mask(raw_eval[n][s], n) for n in names], combine)
                  for s in eval_images}
    results[f"gen{gen}/multinet"] = metrics_of(multi_eval)
    for n in names:
      shown[f"gen{gen}/{n}"] = raw_eval[n]
    shown[f"gen{gen}/multinet"] = multi_eval
    if jax.process_index() == 0:
      train_columns = {f"gen{gen}/{n}": raw_train[n] for n in names}
      train_columns[f"gen{gen}/multinet"] = selection.multinet(list(masks_train.values()),
                                                               combine)
      _write_overlays(workdir, gen, eval_sets, eval_images, shown, frames_s, table,
                      train_columns, config)
    if gen == config.generations:
      break

    # EvalSeg-Net on this generation's students, then the next generation's training set.
    stack = np.stack([masks_train[n] for n in names])  # [S, F, size, size]
    multi_train = selection.multinet(list(stack), combine)
    evalseg_frames, score_frames = selection.split_frames(
        len(table), config.evalseg.train_fraction, config.evalseg.batch_size,
        seed=config.seed * 7919 + gen)
    train_cand = selection.candidates(stack, evalseg_frames)
    score_cand = selection.candidates(stack, score_frames)
    evalseg_dir = os.path.join(gen_dir, "evalseg")

    def run_evalseg(d):
      ev_model = models.EvalSegNet(**config.evalseg.model.to_dict())
      ev_size = config.evalseg.image_size or size
      ev_frames = frames_lib.resize_images(frames_s, ev_size)
      ev_masks = lambda c: frames_lib.resize_masks(c.masks, (ev_size, ev_size))
      seed = config.seed * 1000 + gen * 100 + 99
      program = students_lib.evalseg_program(
          ev_model, ev_frames[train_cand.frame_of], ev_masks(train_cand),
          selection.cosine_labels(train_cand, multi_train), config, seed)
      fit = train_lib.fit(program, config.train, d, mesh, seed)
      scores = students_lib.evalseg_scores(ev_model, fit.variables, ev_frames[score_cand.frame_of],
                                           ev_masks(score_cand),
                                           label_scale=config.evalseg.label_scale)
      if jax.process_index() == 0:
        np.save(os.path.join(d, "scores.npy"), scores)
      true_cos = selection.cosine_labels(score_cand, multi_train)
      return {"score_vs_true_cos_corr": float(np.corrcoef(scores, true_cos)[0, 1]),
              "num_scored": int(scores.size)}

    results[f"gen{gen}/evalseg"] = stages.run_stage(evalseg_dir, run_evalseg)
    scores = np.load(os.path.join(evalseg_dir, "scores.npy"))
    chosen = selection.choose(scores, config.evalseg.selection, config.evalseg.threshold,
                              config.evalseg.keep_fraction, config.student_training.batch_size,
                              scope=config.evalseg.scope,
                              groups=table.video_index[score_cand.frame_of])
    frame_ids = score_cand.frame_of[chosen]
    a = table.images.shape[1]
    train_images = table.images[frame_ids]
    train_targets = frames_lib.resize_masks(score_cand.masks[chosen], (a, a))
    results[f"gen{gen}/evalseg"]["selection"] = {
        "all": _selection_quality(score_cand.masks, None if gt_s is None
                                  else gt_s[score_cand.frame_of]),
        "kept": _selection_quality(score_cand.masks[chosen], None if gt_s is None
                                   else gt_s[frame_ids])}
    results[f"gen{gen}/evalseg"]["kept_per_student"] = selection.kept_per_student(
        score_cand, chosen, names)
    logging.info("gen %d: EvalSeg-Net kept %d of %d student masks %s", gen, chosen.size,
                 scores.size, results[f"gen{gen}/evalseg"]["kept_per_student"])

  if jax.process_index() == 0:
    artifacts.write_json_atomic(os.path.join(workdir, "results.json"), results)
    print(format_results(results, workdir))
  sharding.sync("segmentation-done")
  return results


def _write_overlays(workdir, gen, eval_sets, eval_images, shown, frames_s, table,
                    train_columns, config):
  """overlays/<split>_gen<k>.png per held-out split (teacher and every generation so far), or
  overlays/train_gen<k>.png of training frames, one per video, when the run has no held-out
  set (real videos: no ground truth column)."""
  count, size = config.eval.overlay_images, config.data.image_size
  for split, test in eval_sets.items():
    columns = {k: v[split] for k, v in shown.items() if split in v}
    rows = (overlays.pick_rows(test.video_index, count) if test.video_index is not None
            else np.arange(min(count, len(test))))
    gt = None if test.masks is None else [test.masks[i] for i in rows]  # Original sizes.
    overlays.write(os.path.join(workdir, "overlays", f"{split}_gen{gen}.png"),
                   eval_images[split][rows], {k: v[rows] for k, v in columns.items()},
                   gt_masks=gt, threshold=config.eval.bin_threshold,
                   image_ids=None if test.video_index is None else [
                       f"{split} video {test.video_index[i]}" for i in rows])
  if not eval_sets:
    rows = overlays.pick_rows(table.video_index, count)
    columns = {"videopca_teacher": frames_lib.resize_masks(table.teacher[rows], (size, size)),
               **{k: v[rows] for k, v in train_columns.items()}}
    overlays.write(os.path.join(workdir, "overlays", f"train_gen{gen}.png"), frames_s[rows],
                   columns, image_ids=[f"video {v}, frame {f}" for v, f in
                                       zip(table.video_index[rows], table.frame_index[rows])],
                   threshold=config.eval.bin_threshold)


def format_results(results: dict[str, Any], workdir: str) -> str:
  splits = [s for s in ("val", "test") if any(s in r for r in results.values())]
  lines = [f"Segmentation metrics ({workdir})"]
  for split in splits:
    lines += ["", f"{split}:", "| model | P | J | CorLoc |", "|---|---|---|---|"]
    for name, res in results.items():
      if split in res:
        cells = [f"{res[split][k]:.1f}" if k in res[split] else "-"
                 for k in ("P", "J", "CorLoc")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
  sel = [(n, r) for n, r in results.items() if "selection" in r]
  if sel:
    lines += ["", "| selection | J of all candidates | J of kept | kept | kept per student |",
              "|---|---|---|---|---|"]
    for name, r in sel:
      s = r["selection"]
      if s.get("all") and s.get("kept"):
        per = ", ".join(f"{k} {v}" for k, v in r.get("kept_per_student", {}).items())
        lines.append(f"| {name} | {s['all']['J']:.1f} | {s['kept']['J']:.1f} | "
                     f"{int(s['kept']['count'])} / {int(s['all']['count'])} | {per or '-'} |")
  return "\n".join(lines)
