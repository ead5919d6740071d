"""The segmentation stage graph end to end on tiny data: results, reuse, what a changed key
reruns, export / evaluate, and the checks made before the first stage."""

import json
import logging
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from configs import segmentation as seg_config
from tests.stage_log import stage_actions
from vtd import artifacts
from vtd import export as export_lib
from vtd import evaluate as evaluate_lib
from vtd import main as vtd_main
from vtd import results as results_lib
from vtd import sharding
from vtd import stages
from vtd.errors import UserError
from vtd.segmentation import input_pipeline
from vtd.segmentation import pipeline
from vtd.segmentation import teacher as teacher_lib
from vtd.segmentation import trainer
from vtd.segmentation import videopca

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = ["teacher", "gen1/selection", "gen1/lowres_net", "gen1/fconv", "gen1/multinet",
          "gen1/evalseg", "gen2/selection", "gen2/lowres_net", "gen2/fconv", "gen2/multinet",
          "overlays"]
MODELS = ["teacher", "gen1/lowres_net", "gen1/fconv", "gen1/multinet", "gen2/lowres_net",
          "gen2/fconv", "gen2/multinet"]
EVALUATED = MODELS + ["overlays"]  # What a change to a segmentation evaluator re-evaluates.
SCORERS = ["gen1/evalseg"]  # Scored by the mask_scoring evaluators.


def test_teacher_batching_equals_per_video():
  rng = np.random.default_rng(0)
  # 10 frames are split into two PCAs of 5; batches of 2 videos pad 6 -> 5 + masking.
  videos = [rng.integers(0, 255, size=(t, 12, 16, 3), dtype=np.uint8) for t in (10, 5)]
  vcfg = videopca.VideoPCAConfig(size=None, max_frames=5)
  got = teacher_lib.soft_masks(videos, vcfg, sharding.make_mesh(), batch_videos=2)
  for v, g in zip(videos, got):
    want = np.concatenate([np.asarray(videopca.videopca_soft_masks(v[a:b], cfg=vcfg))
                           for a, b in videopca.split_video(len(v), 5)])
    np.testing.assert_allclose(g, want, atol=1e-5)


def tiny_config(tmp_path):
  config = seg_config.get_config("smoke")
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.synthetic.update(num_train_videos=8, num_val_videos=2, num_test_videos=2)
  config.students.names = "lowres_net,fconv"
  config.student_training.num_steps = 4
  config.evalseg.num_steps = 4
  config.train.async_checkpointing = False
  config.runtime.compilation_cache_dir = ""
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("seg")
  config = tiny_config(tmp)
  results = vtd_main.run(config, str(tmp / "run"))
  return config, tmp / "run", results


def test_stages_results_and_overlays(finished_run, capsys):
  _, workdir, results = finished_run
  assert list(results) == STAGES
  with open(workdir / "results.json") as f:
    on_disk = json.load(f)
  assert on_disk["method"] == "segmentation"
  assert sorted(on_disk["evaluators"]) == ["scoring_test", "scoring_val", "test", "val"]
  assert on_disk["evaluators"]["test"]["columns"] == ["P", "J", "CorLoc"]
  assert sorted(on_disk["models"]) == sorted(MODELS + SCORERS)
  for name in MODELS:
    assert sorted(on_disk["models"][name]) == ["test", "val"]
    for split in ("val", "test"):  # Both held-out splits are scored, separately.
      row = on_disk["models"][name][split]
      assert set(row) == {"P", "J", "CorLoc"} and all(0 <= v <= 100 for v in row.values())
  # EvalSeg-Net scores both students' masks of the held-out images (2 videos x 6 images).
  assert sorted(on_disk["models"]["gen1/evalseg"]) == ["scoring_test", "scoring_val"]
  for split in ("val", "test"):
    row = on_disk["models"]["gen1/evalseg"][f"scoring_{split}"]
    assert list(row) == on_disk["evaluators"]["scoring_test"]["columns"]
    assert all(-1 <= row[c] <= 1 for c in row if c.startswith("score_vs_"))
    assert 0 <= row["J/all"] <= row["J/best"] <= 100 and 0 <= row["J/kept"] <= row["J/best"]
    info = results["gen1/evalseg"]["eval_info"][f"scoring_{split}"]
    assert info["candidates"] == 2 * 12 and info["kept"] == round(0.1 * 24)
  assert results["gen1/evalseg"]["artifact"] == "gen1/evalseg/model"
  first = results["gen1/selection"]
  assert first["num_pairs"] == round(0.5 * first["selection"]["all"]["count"])
  second = results["gen2/selection"]
  assert sum(second["kept_per_student"].values()) == second["selection"]["kept"]["count"]
  assert set(second["kept_per_student"]) == {"lowres_net", "fconv"}
  assert -1 <= results["gen1/evalseg"]["score_vs_true_cos_corr"] <= 1
  # Paths in results are relative to the workdir; every overlay is a readable PNG.
  assert results["gen2/fconv"]["artifact"] == "gen2/fconv/model"
  assert results["teacher"]["held_out_masks"] == {"val": "teacher/val_masks.npy",
                                                  "test": "teacher/test_masks.npy"}
  assert sorted(results["overlays"]["overlays"]) == [f"overlays/{s}_gen{g}.png"
                                                     for s in ("test", "val") for g in (1, 2)]
  image = cv2.imread(str(workdir / "overlays" / "val_gen2.png"))
  # Header, 2 val videos x 3 images (6 rows), footer; image, ground truth, 7 model columns.
  assert image.shape == (34 + 6 * 128 + 20, 9 * 128, 3)
  assert results["gen1/fconv"]["num_steps"] == 4
  results_lib.main([str(workdir / "results.json")])
  out = capsys.readouterr().out
  assert "| gen2/multinet |" in out and "| model | P | J | CorLoc |" in out
  assert "| model | Spearman(score, J) | Pearson(score, J) | J all | J kept | J best |" in out
  assert "| gen1/evalseg |" in out


def test_changed_config_reruns_exactly_the_affected_stages(finished_run, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  _, workdir, results = finished_run
  work = tmp_path / "run"
  shutil.copytree(workdir, work)
  # Logging cadence cannot change a result: everything is reused.
  config = tiny_config(workdir.parent)
  config.train.log_every_steps = 3
  assert vtd_main.run(config, str(work)) == results
  assert set(stage_actions(caplog).values()) == {"reusing"}
  # An evaluation-only key: every model is re-evaluated, nothing is retrained or reselected.
  caplog.clear()
  config.evals.test.bin_threshold = 0.3
  again = vtd_main.run(config, str(work))
  assert stage_actions(caplog) == {s: "re-evaluating" if s in EVALUATED else "reusing"
                              for s in STAGES}
  assert again["gen2/fconv"]["step"] == results["gen2/fconv"]["step"]
  assert again["gen2/selection"] == results["gen2/selection"]
  assert not (work / "superseded").exists()
  # EvalSeg-Net's selection rule: generation 2 reruns, generation 1 and EvalSeg-Net do not.
  caplog.clear()
  config.evalseg.keep_fraction = 0.3
  again = vtd_main.run(config, str(work))
  gen2 = {"gen2/selection", "gen2/lowres_net", "gen2/fconv", "gen2/multinet", "overlays"}
  assert stage_actions(caplog) == {s: "rerunning" if s in gen2 else "reusing" for s in STAGES}
  (stamp,) = os.listdir(work / "superseded")
  assert sorted(os.listdir(work / "superseded" / stamp)) == ["gen2", "overlays"]
  assert again["gen2/selection"]["num_pairs"] != results["gen2/selection"]["num_pairs"]
  # Multi-Net's combination is not EvalSeg-Net's label: its scores (and so generation 2's
  # labels) are unchanged, the Multi-Net's own masks are not.
  caplog.clear()
  config.multinet.combine = "product"
  changed = vtd_main.run(config, str(work))
  stamp = sorted(os.listdir(work / "superseded"))[-1]
  old, new = (np.load(d / "gen1" / "evalseg" / "scores.npz")
              for d in (work / "superseded" / stamp, work))
  np.testing.assert_array_equal(new["scores"], old["scores"])
  assert changed["gen2/selection"] == again["gen2/selection"]
  assert changed["gen1/multinet"]["evals"] != again["gen1/multinet"]["evals"]
  # strict: a changed key stops the run with one line naming it.
  config.runtime.reuse = "strict"
  config.student_training.steps_per_student.fconv = 5
  # (Its student_training.num_steps is no longer read: the per-student count replaces it.)
  with pytest.raises(UserError, match=r"gen1/fconv .*config changed \(.*student_training."
                                      r"steps_per_student.fconv 0 -> 5\)"):
    vtd_main.run(config, str(work))


def _changed(config, new):
  """{stage: 'rerun' | 're-evaluate'} when `config` becomes `new`, from the graph's
  declarations (what run_pipeline compares), without running anything."""
  def fingerprints(cfg):
    fps, evs = {}, {}
    skip = stages.NON_RESULT_KEYS + pipeline.NON_RESULT_KEYS
    for st in pipeline.build_graph(cfg, data=None, mesh=None):
      prov = stages.Provenance(
          config=stages.declared_values(cfg, st.config_keys, skip),
          eval_config=stages.declared_values(cfg, st.eval_keys, skip),
          inputs={n: fps[n] for n in st.inputs},
          data=input_pipeline.data_fingerprint(cfg) if st.uses_data else None)
      fps[st.name], evs[st.name] = prov.fingerprint, prov.eval_fingerprint
    return fps, evs

  (a, ea), (b, eb) = fingerprints(config), fingerprints(new)
  assert list(a) == list(b)
  return {s: "rerun" if a[s] != b[s] else "re-evaluate" for s in a
          if a[s] != b[s] or ea[s] != eb[s]}


def _graph_config():
  config = seg_config.get_config("smoke")
  config.students.names = "lowres_net,fconv"  # The stages of STAGES.
  return config


DOWNSTREAM_OF_GEN1_FCONV = {"gen1/fconv", "gen1/multinet", "gen1/evalseg", "gen2/selection",
                            "gen2/lowres_net", "gen2/fconv", "gen2/multinet", "overlays"}
GEN2 = {"gen2/selection", "gen2/lowres_net", "gen2/fconv", "gen2/multinet", "overlays"}


@pytest.mark.parametrize("changes, expected", [
    # One student's step count: that student and everything that reads its masks.
    ({"student_training.steps_per_student.fconv": 7}, DOWNSTREAM_OF_GEN1_FCONV),
    # The selection rule's parameters reach generation 2 only, and only the active rule's.
    ({"evalseg.keep_fraction": 0.3}, GEN2),
    ({"evalseg.threshold": 0.5}, set()),  # Unused by the default top_fraction rule.
    # How kept masks become targets: generation 2 onwards; the threshold only when read.
    ({"evalseg.target_rule": "binary"}, GEN2),
    ({"evalseg.target_threshold": 0.3, "evalseg.target_rule": "gated"}, GEN2),
    ({"evalseg.target_threshold": 0.3, "evalseg.target_rule": "soft"}, set()),
    ({"evalseg.selection": "threshold", "evalseg.threshold": 0.5}, GEN2),
    # Multi-Net's combination: its stages, and (through the stage inputs) what follows them;
    # EvalSeg-Net's label rule: EvalSeg-Net and the next generation.
    ({"multinet.combine": "product"}, {"gen1/multinet", "gen1/evalseg"} | GEN2),
    ({"evalseg.label_combine": "geometric_mean"}, {"gen1/evalseg"} | GEN2),
    ({"multinet.scale_quantile": 0.5}, set()),  # Only read by the student_scale rule.
    ({"selection.keep_fraction": 0.3}, set(STAGES) - {"teacher"}),
    ({"teacher.videopca.blur_sigma": 4.0}, set(STAGES)),
    ({"data.synthetic.seed": 1}, set(STAGES)),
    ({"evalseg.num_steps": 5}, {"gen1/evalseg"} | GEN2),
    ({"seed": 1}, set(STAGES) - {"teacher", "gen1/selection"}),
    # Where students' seeds come from: every student and what reads its masks.
    ({"student_training.seed_scope": "student"}, set(STAGES) - {"teacher", "gen1/selection"}),
    ({"overlays.num_images": 2}, {"overlays"}),
    ({"data.cache_dir": "/elsewhere"}, set()),  # Where generated data are cached.
])
def test_declared_keys_rerun_exactly_their_stages(changes, expected):
  config, new = _graph_config(), _graph_config()
  for key, value in changes.items():
    node = new
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  got = _changed(config, new)
  assert {s for s, a in got.items() if a == "rerun"} == expected
  assert all(a == "rerun" for a in got.values())


@pytest.mark.parametrize("key, value, expected", [
    ("evals.test.bin_threshold", 0.3, EVALUATED),
    ("evals.val.grabcut", True, EVALUATED),
    ("evals.val.enabled", False, EVALUATED),
    # An evaluator of EvalSeg-Net re-evaluates EvalSeg-Net only, and the other way round.
    ("evals.scoring_test.keep_fraction", 0.2, SCORERS),
    ("evals.scoring_val.enabled", False, SCORERS),
    ("data.test_root", "/data/od", EVALUATED + SCORERS),
])
def test_evaluation_keys_re_evaluate_only(key, value, expected):
  config, new = _graph_config(), _graph_config()
  *path, last = key.split(".")
  node = new
  for part in path:
    node = node[part]
  node[last] = value
  assert _changed(config, new) == {s: "re-evaluate" for s in expected}


def test_export_lists_models_and_evaluate_reproduces_metrics(finished_run, tmp_path, capsys):
  _, workdir, results = finished_run
  models = sorted(m for m in MODELS + SCORERS if m != "teacher")
  assert export_lib.exportable(str(workdir)) == models  # VideoPCA has no weights.
  export_lib.main([f"--workdir={workdir}", "--model=list"])
  assert capsys.readouterr().out.split() == models
  with pytest.raises(UserError, match="no exportable model 'teacher' in .*; exportable: "
                                      "gen1/evalseg, gen1/fconv, gen1/lowres_net, gen1/multinet"):
    export_lib.export(str(workdir), "teacher", str(tmp_path / "x"))
  for name in ("gen2/fconv", "gen1/multinet"):
    out = tmp_path / name.replace("/", "_")
    export_lib.export(str(workdir), name, str(out))
    for split in ("test", "val"):
      got = evaluate_lib.evaluate_artifact(str(out), split)["metrics"]["evals"]["test"]
      want = results[name]["evals"][split]
      assert got.keys() == want.keys()
      for k, v in want.items():
        np.testing.assert_allclose(got[k], v, atol=1e-6)
  evaluate_lib.main([f"--artifact={tmp_path / 'gen2_fconv'}", "--split=test",
                     f"--output={tmp_path / 'm.json'}"])
  out = capsys.readouterr().out
  assert "| gen2/fconv |" in out and "scoring" not in out  # A student is not a mask scorer.


def test_exported_evalseg_reproduces_its_mask_scoring(finished_run, tmp_path, capsys):
  _, workdir, results = finished_run
  out = tmp_path / "evalseg"
  meta = export_lib.export(str(workdir), "gen1/evalseg", str(out))
  assert meta["kind"] == "evalseg" and meta["students"] == ["lowres_net", "fconv"]
  for split in ("test", "val"):
    got = evaluate_lib.evaluate_artifact(str(out), split)
    # Only the mask_scoring evaluator of that split (its val and test copies are one).
    assert list(got["evaluators"]) == [f"scoring_{split}"]
    got = got["metrics"]["evals"][f"scoring_{split}"]
    want = results["gen1/evalseg"]["evals"][f"scoring_{split}"]
    assert got.keys() == want.keys()
    for k, v in want.items():
      np.testing.assert_allclose(got[k], v, atol=1e-6)
  evaluate_lib.main([f"--artifact={out}", "--split=test", f"--output={tmp_path / 'm.json'}"])
  printed = capsys.readouterr().out
  assert "scoring_test on the test split" in printed and "| gen1/evalseg |" in printed
  with open(tmp_path / "m.json") as f:
    assert json.load(f)["evaluators"]["scoring_test"]["formats"]["score_vs_J/spearman"] == ".2f"
  # A damaged artifact (a student's variables missing): one line, exit 2.
  variables, config, meta = artifacts.load_artifact(out)
  damaged = tmp_path / "damaged"
  artifacts.save_artifact(damaged, {k: {n: v for n, v in tree.items() if n != "fconv"}
                                    for k, tree in variables.items()}, config, meta)
  with pytest.raises(SystemExit) as e:
    evaluate_lib.main([f"--artifact={damaged}", "--split=test",
                       f"--output={tmp_path / 'x.json'}"])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
      "error: the artifact has no variables of 'fconv' (it has evalseg_net, lowres_net); "
      "re-export it with python -m vtd.export from the workdir that trained it")


def _mesh8():
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8  # tests/conftest.py forces 8 CPU devices.
  return mesh


def test_student_seed_scope():
  """seed_scope "student": a student restarts from the same initial weights (and batch-order
  seed) at every generation; "stage" (the default): a new initialisation per generation."""
  config = seg_config.get_config()
  assert config.student_training.seed_scope == "stage"
  # The default is how seeds were derived before the knob existed, so it is not a declared
  # key: workdirs made before it keep their students.
  assert "student_training.seed_scope" not in pipeline._student_keys(config, "basic_unet")
  names = {scope: [trainer.student_seed_name(f"gen{g}/basic_unet", "basic_unet", scope)
                   for g in (1, 2, 3)] for scope in trainer.SEED_SCOPES}
  assert names["student"] == ["basic_unet"] * 3
  assert names["stage"] == ["gen1/basic_unet", "gen2/basic_unet", "gen3/basic_unet"]
  with pytest.raises(UserError, match="seed_scope must be one of student, stage"):
    trainer.student_seed_name("gen1/basic_unet", "basic_unet", "run")


@pytest.mark.parametrize("key, value, message", [
    ("student_training.batch_size", 13, "config.student_training.batch_size=13 is not "
     "divisible by the 8 devices of the mesh; use a multiple of 8"),
    ("evalseg.batch_size", 12, "config.evalseg.batch_size=12 is not divisible by the 8 devices "
     "of the mesh; use a multiple of 8"),
    ("students.names", "lowres_net,unet", "config.students.names='lowres_net,unet': give "
     "distinct names of basic_unet, dense_unet, dilate_unet, fconv, lowres_net, "
     "comma-separated"),
    ("students.names", "fconv,fconv", "config.students.names='fconv,fconv': give distinct"),
    ("generations", 0, "config.generations=0 must be >= 1"),
    ("selection.scope", "video", "config.selection.scope must be one of global, per_video; "
     "got 'video'"),
    ("evalseg.selection", "best", "config.evalseg.selection must be one of threshold, "
     "top_fraction; got 'best'"),
    ("evalseg.scope", "all", "config.evalseg.scope must be one of global, per_video"),
    ("evalseg.target_rule", "sharp", "config.evalseg.target_rule must be one of soft, gated, "
     "binary; got 'sharp'"),
    ("evalseg.target_threshold", 1.0, r"config.evalseg.target_threshold=1.0 must be in \[0, 1\)"),
    ("multinet.combine", "sum", "config.multinet.combine must be one of product, "
     "geometric_mean; got 'sum'"),
    ("evalseg.label_combine", "mean", "config.evalseg.label_combine must be one of product, "
     "geometric_mean; got 'mean'"),
    ("multinet.normalisation", "none", "config.multinet.normalisation must be one of minmax"),
    ("student_training.loss", "l1", "config.student_training.loss must be one of mse, bce"),
    ("student_training.seed_scope", "run", "config.student_training.seed_scope must be one "
     "of student, stage; got 'run'"),
    ("data.test_set", "imagenet", "config.data.test_set must be one of auto, synthetic"),
    ("data.on_unreadable", "ignore", "config.data.on_unreadable must be one of skip, raise"),
    ("selection.keep_fraction", 0.0, r"config.selection.keep_fraction=0.0 must be in \(0, 1\]"),
    ("evalseg.keep_fraction", 1.5, r"config.evalseg.keep_fraction=1.5 must be in \(0, 1\]"),
    ("evalseg.train_fraction", 1.0, r"config.evalseg.train_fraction=1.0 must be in \(0, 1\)"),
    ("student_training.num_steps", 0, "student lowres_net would train for 0 steps"),
    ("evalseg.num_steps", 0, "config.evalseg.num_steps must be > 0"),
    ("evals.test.split", "train", "config.evals.test.split='train' must be one of val, test"),
    ("evals.val.type", "nope", "config.evals.val.type='nope' is not an evaluator"),
    ("evals.test.box_rule", "biggest", "config.evals.test: box_rule must be one of"),
    ("data.videos", "/nonexistent/videos", "/nonexistent/videos"),
])
def test_config_errors_before_any_stage(key, value, message):
  config = seg_config.get_config("smoke")
  *path, last = key.split(".")
  node = config
  for part in path:
    node = node[part]
  node[last] = value
  with pytest.raises(UserError, match=message):
    pipeline.check_config(config, _mesh8())


def test_empty_video_folder_is_an_error(tmp_path):
  config = seg_config.get_config("smoke")
  config.data.videos = str(tmp_path)
  with pytest.raises(UserError, match=f"no video files or frame folders under "
                                      f"config.data.videos={tmp_path}"):
    pipeline.check_config(config, _mesh8())


@pytest.mark.slow
def test_indivisible_batch_fails_before_training_on_8_devices(tmp_path):
  """The issue's case: evalseg.batch_size=13 on 8 devices failed after minutes of training."""
  proc = subprocess.run(
      [sys.executable, "-m", "vtd.main", "--config=configs/segmentation.py:smoke",
       f"--workdir={tmp_path / 'run'}", "--config.evalseg.batch_size=13",
       f"--config.data.cache_dir={tmp_path / 'cache'}"], cwd=REPO, capture_output=True,
      text=True, timeout=300,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "vtd: error: config.evalseg.batch_size=13 is not divisible by the 8 devices of the mesh; "
      "use a multiple of 8")
  assert not (tmp_path / "run" / "teacher").exists()  # Nothing ran.


def test_eval_splits_come_from_the_evaluators(tmp_path):
  config = tiny_config(tmp_path)
  with pytest.raises(UserError, match=r"held-out split\(s\) \['train'\] of config.evals"):
    input_pipeline.load_eval_sets(config, ["val", "train"])
  config.data.synthetic.update(num_train_videos=2, num_test_videos=1, num_val_videos=1)
  config.evals.test.enabled = False
  data = pipeline.load_data(config)
  assert sorted(data.eval_sets) == ["test", "val"]  # EvalSeg-Net's scoring_test needs it too.
  config.evals.scoring_test.enabled = False
  data = pipeline.load_data(config)
  assert list(data.eval_sets) == ["val"] and data.eval_sets["val"].name == "synthetic/val"
  assert data.eval_sets["val"].split == "val"
