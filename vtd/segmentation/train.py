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
from vtd.data import synthetic_video
from vtd.errors import UserError
from vtd.evaluators import segmentation as seg_metrics
from vtd.segmentation import frames as frames_lib
from vtd.segmentation import models
from vtd.segmentation import overlays
from vtd.segmentation import students as students_lib
from vtd.segmentation import teacher as teacher_lib


def load_data(config: ml_collections.ConfigDict) -> synthetic_video.SyntheticVideoDataset:
  if config.data.source != "synthetic":
    raise UserError(f"config.data.source must be 'synthetic' (real videos: set "
                    f"config.data.videos), got {config.data.source!r}")
  spec = synthetic_video.SyntheticVideoSpec(**config.data.synthetic.to_dict())
  return synthetic_video.load_or_generate(spec, config.data.cache_dir or None)


def _student_names(config) -> list[str]:
  names = [n.strip() for n in config.students.names.split(",") if n.strip()]
  unknown = [n for n in names if n not in models.STUDENTS]
  if unknown:
    raise UserError(f"config.students.names has {unknown}; valid: {sorted(models.STUDENTS)}")
  return names


def test_metrics(masks: np.ndarray, test: synthetic_video.SegmentationTestSet,
                 eval_cfg: ml_collections.ConfigDict) -> dict[str, float]:
  """P, J (percent, Object Discovery protocol) and CorLoc (percent) of soft masks [N, s, s]."""
  h, w = test.masks.shape[1:]
  soft = frames_lib.resize_masks(masks, (h, w))
  binary = seg_metrics.binarize(soft, eval_cfg.bin_threshold, normalize=True)
  boxes = seg_metrics.masks_to_boxes(binary, rule=eval_cfg.box_rule)
  return {"P": 100 * seg_metrics.pixel_accuracy(binary, test.masks),
          "J": 100 * seg_metrics.jaccard(binary, test.masks),
          "CorLoc": 100 * seg_metrics.corloc(boxes, test.gt_boxes())}


def _selection_quality(masks: np.ndarray, gt: np.ndarray | None, threshold: float
                       ) -> dict[str, float]:
  """Mean J (percent) of a set of training masks against ground truth (reporting only)."""
  if gt is None or len(masks) == 0:
    return {}
  binary = seg_metrics.binarize(masks, threshold, normalize=True)
  return {"J": 100 * seg_metrics.jaccard(binary, gt), "count": float(len(masks))}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  mesh = sharding.make_mesh()
  data = load_data(config)
  size = config.data.image_size
  test_images = frames_lib.resize_images(data.test.images, size)
  names = _student_names(config)
  results: dict[str, Any] = {}

  table_path = os.path.join(workdir, "teacher", "frames.npz")

  def run_teacher(stage_dir):
    table, test_masks = teacher_lib.run(data, config, mesh)
    if jax.process_index() == 0:
      table.save(table_path)
      np.save(os.path.join(stage_dir, "test_masks.npy"), test_masks)
    keep = frames_lib.top_fraction(table.scores, config.selection.keep_fraction)
    return {"test": test_metrics(test_masks, data.test, config.eval),
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
  prev_test = {"videopca_teacher": np.load(os.path.join(workdir, "teacher", "test_masks.npy"))}

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
          np.save(os.path.join(d, "test_masks.npy"),
                  students_lib.predict(model, fit.variables, test_images, **kw))
          artifacts.save_artifact(os.path.join(d, "model"), fit.variables, config,
                                  {"method": "segmentation", "model_name": f"gen{gen}/{name}",
                                   "student": name, "step": fit.step})
        return {"test": test_metrics(np.load(os.path.join(d, "test_masks.npy")), data.test,
                                     config.eval), "num_train_pairs": int(len(train_images))}

      results[f"gen{gen}/{name}"] = stages.run_stage(stage_dir, run_student)
      preds_train[name] = np.load(os.path.join(stage_dir, "train_masks.npy")).astype(np.float32)
      preds_test[name] = np.load(os.path.join(stage_dir, "test_masks.npy"))
    multi_test = students_lib.multinet(list(preds_test.values()))
    results[f"gen{gen}/multinet"] = {"test": test_metrics(multi_test, data.test, config.eval)}
    if jax.process_index() == 0:
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
      t = res["test"]
      lines.append(f"| {name} | {t['P']:.1f} | {t['J']:.1f} | {t['CorLoc']:.1f} |")
  sel = [(n, r["selection"]) for n, r in results.items() if "selection" in r]
  if sel:
    lines += ["", "| selection | J of all candidates | J of kept | kept |", "|---|---|---|---|"]
    for name, s in sel:
      if s.get("all") and s.get("kept"):
        lines.append(f"| {name} | {s['all']['J']:.1f} | {s['kept']['J']:.1f} | "
                     f"{int(s['kept']['count'])} / {int(s['all']['count'])} |")
  return "\n".join(lines)
