"""End to end: the TeachText pipeline on tiny data, stage reuse, export/evaluate, input errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import teachtext as teachtext_config
from tests.stage_log import stage_actions
from vtd import artifacts
from vtd import export as export_lib
from vtd import evaluate as evaluate_lib
from vtd import main as vtd_main
from vtd import metric_writers
from vtd.errors import UserError

MODELS = ["teacher_w2v", "teacher_gpt", "teacher_gpt_xl", "student_baseline",
          "student_teachtext"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(tmp_path):
  config = teachtext_config.get_config("smoke")
  config.data.synthetic.update(num_train=64, num_val=16, num_test=16, num_concepts=32)
  config.data.cache_dir = str(tmp_path / "cache")
  config.train.num_epochs = 3
  config.train.eval_every_steps = 6
  config.train.async_checkpointing = False
  config.runtime.compilation_cache_dir = ""
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tt")
  config = tiny_config(tmp)
  results = vtd_main.run(config, str(tmp / "run"))
  return config, tmp / "run", results


def test_results_for_every_model(finished_run):
  _, workdir, results = finished_run
  with open(workdir / "results.json") as f:
    on_disk = json.load(f)
  assert on_disk["method"] == "teachtext"
  assert sorted(on_disk["models"]) == sorted(MODELS + ["teacher_ensemble"])
  assert sorted(on_disk["evaluators"]) == ["test", "val"]  # qbnorm is off by default.
  assert on_disk["evaluators"]["test"]["columns"][0] == "t2v/R1"
  assert on_disk["models"]["teacher_ensemble"]["test"]["t2v/num_queries"] > 16
  for name in MODELS:
    test = on_disk["models"][name]["test"]
    assert 0 <= test["t2v/R1"] <= test["t2v/R5"] <= test["t2v/R10"] <= test["t2v/R50"] <= 100
    assert test["v2t/num_queries"] == 16
    assert os.path.isfile(workdir / name / "model" / artifacts.VARIABLES)
    curve = on_disk["stages"][name]["eval_curves"]["test"]["recall_at_k"]["t2v"]
    assert curve[0] == pytest.approx(test["t2v/R1"], abs=1e-3)
    assert curve[9] == pytest.approx(test["t2v/R10"], abs=1e-3)
    assert os.path.isfile(workdir / name / "curves.png")
  assert os.path.isfile(workdir / "plots" / "recall_at_k.png")
  assert os.listdir(workdir / "tb")  # hparams and test metrics for TensorBoard.
  on_disk = on_disk["stages"]
  tt = on_disk["student_teachtext"]
  assert tt["distill_weight"] == 1.0 and len(tt["teachers"]) == 3
  records = metric_writers.read_jsonl(workdir / "student_teachtext" / "metrics.jsonl")
  assert any("train/distill_loss" in r for r in records)
  # Teachers are referenced by path, never copied into the student's checkpoints.
  ckpt_files = [f for _, _, fs in os.walk(workdir / "student_teachtext" / "checkpoints")
                for f in fs]
  assert ckpt_files and not any("teacher" in f for f in ckpt_files)


def test_finished_stages_are_reused(finished_run):
  config, workdir, results = finished_run
  stamps = {m: os.path.getmtime(workdir / m / "model" / artifacts.VARIABLES) for m in MODELS}
  again = vtd_main.run(config, str(workdir))
  assert again == results
  assert stamps == {m: os.path.getmtime(workdir / m / "model" / artifacts.VARIABLES)
                    for m in MODELS}


def test_export_then_evaluate_reproduces_test_metrics(finished_run, tmp_path):
  _, workdir, results = finished_run
  out = tmp_path / "exported"
  meta = export_lib.export(str(workdir), "student_teachtext", str(out))
  assert sorted(os.listdir(out)) == sorted([artifacts.VARIABLES, artifacts.CONFIG,
                                            artifacts.METADATA])
  assert meta["exported_from"].endswith("student_teachtext")
  got = evaluate_lib.evaluate_artifact(str(out), "test")
  for k, v in results["student_teachtext"]["evals"]["test"].items():
    np.testing.assert_allclose(got["metrics"]["evals"]["test"][k], v, rtol=1e-6)
  assert export_lib.exportable(str(workdir)) == sorted(MODELS)
  with pytest.raises(UserError, match="no exportable model 'teacher_ensemble' in .*; "
                                      "exportable: student_baseline, student_teachtext"):
    export_lib.export(str(workdir), "teacher_ensemble", str(tmp_path / "x"))


def _main_cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "vtd.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_config_typo_is_an_error(tmp_path):
  proc = _main_cli("--config=configs/teachtext.py:smoke", f"--workdir={tmp_path}",
                   "--config.optim.lrr=0.1")
  assert proc.returncode != 0 and "lrr" in proc.stderr


def test_missing_data_path_is_one_line_error(tmp_path):
  proc = _main_cli("--config=configs/teachtext.py:smoke", f"--workdir={tmp_path}",
                   "--config.data.source=npz", f"--config.data.path={tmp_path}/nope.npz")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"vtd: error: retrieval data file not found: {tmp_path}/nope.npz; fix config.data.path "
      "(a vtd retrieval .npz, e.g. from python -m vtd.teachtext.data.ce_features)")


def test_batch_not_divisible_by_devices_is_one_line_error(tmp_path):
  env_flag = "--xla_force_host_platform_device_count=8"
  proc = subprocess.run(
      [sys.executable, "-m", "vtd.main", "--config=configs/teachtext.py:smoke",
       f"--workdir={tmp_path}", "--config.train.batch_size=12"], cwd=REPO,
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "XLA_FLAGS": env_flag, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "vtd: error: config.train.batch_size=12 is not divisible by the 8 devices of the mesh; "
      "use a multiple of 8")


def test_embedding_dim_mismatch_is_an_error(finished_run, tmp_path):
  config, workdir, _ = finished_run
  config = tiny_config(tmp_path)
  # A teacher trained on 'gpt' (64-d) offered as a teacher whose data now has 48-d 'gpt'.
  variables, cfg, meta = artifacts.load_artifact(str(workdir / "teacher_gpt" / "model"))
  meta["text_embedding"] = "gpt_xl"  # 96-d in the data: the teacher expects 64.
  artifacts.save_artifact(str(tmp_path / "bad_teacher"), variables, cfg, meta)
  config.teachers.artifact_dirs = str(tmp_path / "bad_teacher")
  with pytest.raises(UserError, match="embedding-dim mismatch: teacher teacher_gpt .* expects "
                                      "gpt_xl features of dim 64, the data has 96"):
    vtd_main.run(config, str(tmp_path / "run"))




def test_changed_config_reruns_exactly_the_affected_stages(finished_run, tmp_path, caplog):
  import logging
  import shutil
  caplog.set_level(logging.INFO, logger="absl")
  config, workdir, results = finished_run
  work = tmp_path / "run"
  shutil.copytree(workdir, work)
  # Logging cadence cannot change a result: everything is reused.
  config = tiny_config(tmp_path)
  config.train.log_every_steps = 3
  assert vtd_main.run(config, str(work)) == results
  assert set(stage_actions(caplog).values()) == {"reusing"}
  # An evaluation-only key: every trained model is re-evaluated, nothing retrained.
  caplog.clear()
  config.evals.qbnorm.enabled = True
  again = vtd_main.run(config, str(work))
  assert stage_actions(caplog) == {m: "re-evaluating" for m in MODELS + ["teacher_ensemble"]}
  assert "qbnorm" in again["student_teachtext"]["evals"]
  assert again["student_teachtext"]["step"] == results["student_teachtext"]["step"]
  assert not (work / "superseded").exists()
  # A key only the distilled student reads: only it reruns; the old one is kept.
  caplog.clear()
  config.distill.weight = 2.0
  again = vtd_main.run(config, str(work))
  assert stage_actions(caplog) == {**{m: "reusing" for m in MODELS if m != "student_teachtext"},
                              "teacher_ensemble": "reusing", "student_teachtext": "rerunning"}
  assert again["student_teachtext"]["distill_weight"] == 2.0
  (stamp,) = os.listdir(work / "superseded")
  assert os.listdir(work / "superseded" / stamp) == ["student_teachtext"]
  with open(work / "results.json") as f:
    assert json.load(f)["stages"]["student_teachtext"]["distill_weight"] == 2.0
  # strict: a changed key stops the run with one line naming it.
  config.runtime.reuse = "strict"
  config.optim.lr = 0.5
  with pytest.raises(UserError, match=r"teacher_w2v .*config changed \(optim.lr 0.001 -> 0.5\)"):
    vtd_main.run(config, str(work))
  # Paths in results are relative to the workdir, so a moved workdir still points right.
  assert again["student_teachtext"]["artifact"] == "student_teachtext/model"
  assert again["student_teachtext"]["teachers"] == [f"teacher_{e}/model"
                                                   for e in ("w2v", "gpt", "gpt_xl")]
