"""The UTS pipeline end to end on tiny data; resumable sharded extraction; real video folders."""

import json
import logging
import os
import re
import shutil

import cv2
import jax
import numpy as np
import pytest

from configs import uts as uts_config
from tests.uts import extract_worker
from tests.uts.conftest import tiny_config
from tests.stage_log import stage_actions
from vtd import artifacts
from vtd import evaluate as evaluate_lib
from vtd import export as export_lib
from vtd import main as vtd_main
from vtd import results as results_lib
from vtd import sharding
from vtd import stages
from vtd.uts.data import fivr as fivr_data
from vtd.errors import UserError
from vtd.uts import extract
from vtd.uts import input_pipeline
from vtd.uts import networks
from vtd.uts import pipeline
from vtd.uts import retrieval


ROWS = [f"{m}/{k}" for m in ("teacher", "student") for k in retrieval.METHODS]
STAGES = ["pretrain", "teacher", "student", "features/teacher", "features/student",
          "retrieval"]


def test_results_rows_curves_and_files(finished_run, capsys):
  config, workdir, results = finished_run
  with open(workdir / "results.json") as f:
    on_disk = json.load(f)
  assert on_disk["method"] == "uts"
  assert sorted(on_disk["evaluators"]) == ["test", "val"]
  assert on_disk["evaluators"]["test"]["columns"] == ["DSVR", "CSVR", "ISVR", "bytes_per_video",
                                                      "query_ms"]
  assert sorted(on_disk["models"]) == sorted(ROWS)
  for row in ROWS:
    for split in ("test", "val"):
      metrics = on_disk["models"][row][split]
      assert all(0 <= metrics[t] <= 100 for t in ("DSVR", "CSVR", "ISVR"))
      assert metrics["query_ms"] > 0
    assert results[row]["eval_info"]["test"]["queries"]["DSVR"] == 2
    assert results[row]["eval_info"]["val"]["queries"]["DSVR"] == (
        config.data.synthetic.num_val_events)
    # Interpolated PR: recall levels 0..1, precision non-increasing, in [0, 1].
    pr = on_disk["stages"][row]["eval_curves"]["test"]["precision_recall"]["DSVR"]
    assert pr["recall"][0] == 0 and pr["recall"][-1] == 1 and len(pr["recall"]) == 21
    assert np.all(np.diff(pr["precision"]) <= 1e-12) and 0 <= min(pr["precision"])
  # FRP keeps one nbits/8-byte code per frame; GV one float32 vector per video.
  student_gv = on_disk["models"]["student/GV"]["test"]
  assert student_gv["bytes_per_video"] == 4 * config.teacher.pca_dim
  num_videos = len(input_pipeline.load_collection(config))
  frames_per_video = on_disk["stages"]["features/student"]["frames"] / num_videos
  assert on_disk["models"]["student/FRP"]["test"]["bytes_per_video"] == pytest.approx(
      config.lsh.nbits / 8 * frames_per_video)
  assert (workdir / "plots" / "precision_recall.png").stat().st_size > 10_000
  assert (workdir / "student" / "curves.png").is_file()
  # The stages recorded which pretrained weights the teacher was built from.
  pretrained = on_disk["stages"]["pretrain"]
  assert pretrained["step"] >= 1 and len(pretrained["weights_digest"]) == 20
  assert pretrained["directory"].startswith(config.data.cache_dir)
  assert on_disk["stages"]["teacher"]["artifact"] == "teacher/model"  # Relative paths.
  # The result files are FIVR's format: one dict per test query, similarities > 0 only.
  with open(workdir / "retrieval" / "teacher_FRP_results.json") as f:
    sims = json.load(f)
  assert len(sims) == 2 and all(s > 0 for d in sims.values() for s in d.values())
  # vtd.results prints the run's table.
  capsys.readouterr()
  results_lib.main([str(workdir / "results.json")])
  out = capsys.readouterr().out
  assert "| student/FRP |" in out and "DSVR mAP" in out and "bytes/video" in out


def test_one_teacher_pass_gives_targets_and_retrieval_features(finished_run):
  """The teacher's retrieval features (whitened in NumPy from the teacher stage's raw shards)
  equal the jitted teacher applied to the frames, and the student's targets too."""
  config, workdir, _ = finished_run
  collection = input_pipeline.load_collection(config)
  teacher_vars, _, _ = artifacts.load_artifact(str(workdir / "teacher" / "model"))
  feats = extract.load(str(workdir / "features" / "teacher" / "shards"),
                       extract.num_shards(len(collection), config.extract.shard_videos))
  frames = np.concatenate([collection.read_frames(i) for i in range(3)])
  direct = networks.teacher_embed_fn(config, teacher_vars)(frames)
  for key in ("gap", "rmac"):
    np.testing.assert_allclose(feats.features[key][:len(frames)], np.asarray(direct[key]),
                               rtol=1e-3, atol=1e-3)
  with np.load(workdir / "teacher" / "train_set.npz") as z:
    np.testing.assert_array_equal(z["frames"][:len(frames)], frames)
    np.testing.assert_allclose(z["targets"], feats.features["gap"], rtol=1e-5, atol=1e-5)




def _plan(config, changed):
  """{stage: rerun?} for `changed` against `config`, from the declared keys and inputs alone
  (the fingerprints `stages.run_pipeline` compares), without running anything."""
  mesh = sharding.make_mesh()
  collection = input_pipeline.load_collection(config)
  prints = {}
  for cfg in (config, changed):
    fp = {}
    for stage in pipeline.build_graph(cfg, collection, mesh):
      skip = stages.NON_RESULT_KEYS + pipeline.NON_RESULT_KEYS
      prov = stages.Provenance(
          config=stages.declared_values(cfg, stage.config_keys, skip),
          eval_config=stages.declared_values(cfg, stage.eval_keys, skip),
          inputs={n: fp[n][0] for n in stage.inputs},
          data=pipeline.data_fingerprint(cfg.data) if stage.uses_data else None,
          extra=stage.extra)
      fp[stage.name] = (prov.fingerprint, prov.eval_fingerprint)
    prints[id(cfg)] = fp
  old, new = prints[id(config)], prints[id(changed)]
  return {n: "rerun" if old.get(n, ("",))[0] != new[n][0] else
          "reevaluate" if old[n][1] != new[n][1] else "reuse" for n in new}


@pytest.mark.parametrize("key, value, reruns", [
    ("student.head_kernel", 1, {"student", "features/student", "retrieval"}),
    ("loss.alpha", 0.2, {"student", "features/student", "retrieval"}),
    ("optim.lr", 1e-2, {"student", "features/student", "retrieval"}),
    ("seed", 3, {"student", "features/student", "retrieval"}),
    ("teacher.pca_dim", 16, {"teacher", "student", "features/teacher", "features/student",
                             "retrieval"}),
    ("pretrain.optim.lr", 1e-2, set(STAGES)),
    ("lsh.nbits", 64, {"retrieval"}),
    ("retrieval.backend", "jax", {"retrieval"}),
    ("retrieval.rmac_whitening", "none", {"retrieval"}),
    ("data.synthetic.seed", 1, {"teacher", "student", "features/teacher", "features/student",
                                "retrieval"}),
    ("extract.batch_frames", 32, set()),  # Performance knobs: nothing reruns.
    ("retrieval.batch_frames", 64, set()),
    ("data.cache_dir", "/elsewhere", set()),
    ("train.log_every_steps", 7, set()),
])
def test_each_key_reruns_exactly_its_stages(uts_cache, key, value, reruns):
  config = tiny_config(uts_cache)
  changed = tiny_config(uts_cache)
  node = changed
  *path, last = key.split(".")
  for part in path:
    node = node[part]
  node[last] = value
  plan = _plan(config, changed)
  assert {n for n, a in plan.items() if a == "rerun"} == reruns
  assert "reevaluate" not in plan.values()


def test_evaluation_keys_only_reevaluate(uts_cache):
  config = tiny_config(uts_cache)
  changed = tiny_config(uts_cache)
  changed.evals.test.pr_points = 11
  assert _plan(config, changed) == {**{n: "reuse" for n in STAGES}, "retrieval": "reevaluate"}


def test_changed_keys_on_a_finished_run(finished_run, tmp_path, caplog):
  """The plan above, on a real finished workdir: a search knob reruns only retrieval (the old
  one is kept), an evaluation knob re-evaluates it in place, the seed reruns the student and
  what depends on it while the teacher and its features are reused."""
  caplog.set_level(logging.INFO, logger="absl")
  config, workdir, results = finished_run
  work = tmp_path / "run"
  shutil.copytree(workdir, work)
  config = tiny_config(config.data.cache_dir)
  config.train.log_every_steps = 7  # Cannot change a result: everything is reused.
  assert vtd_main.run(config, str(work)) == results
  assert set(stage_actions(caplog).values()) == {"reusing"}
  caplog.clear()
  config.lsh.nbits = 64
  again = vtd_main.run(config, str(work))
  assert stage_actions(caplog) == {**{n: "reusing" for n in STAGES}, "retrieval": "rerunning"}
  assert again["student/FRP"]["evals"]["test"]["bytes_per_video"] == pytest.approx(
      results["student/FRP"]["evals"]["test"]["bytes_per_video"] / 2)
  for split in ("test", "val"):  # GV does not use the codes.
    for column in ("DSVR", "CSVR", "ISVR", "bytes_per_video"):
      assert again["student/GV"]["evals"][split][column] == results["student/GV"]["evals"][
          split][column]
  (stamp,) = os.listdir(work / "superseded")
  assert os.listdir(work / "superseded" / stamp) == ["retrieval"]
  caplog.clear()
  config.evals.test.pr_points = 11
  again = vtd_main.run(config, str(work))
  assert stage_actions(caplog) == {**{n: "reusing" for n in STAGES}, "retrieval": "re-evaluating"}
  assert len(again["student/GV"]["eval_curves"]["test"]["precision_recall"]["CSVR"][
      "recall"]) == 11
  caplog.clear()
  config.seed = 1  # Read by the student (init, data order) and retrieval, not the teacher.
  again = vtd_main.run(config, str(work))
  assert stage_actions(caplog) == {"pretrain": "reusing", "teacher": "reusing",
                              "features/teacher": "reusing", "student": "rerunning",
                              "features/student": "rerunning", "retrieval": "rerunning"}
  assert again["teacher/GV"]["evals"]["test"]["DSVR"] == results["teacher/GV"]["evals"][
      "test"]["DSVR"]
  # strict: a changed key stops the run with one line naming it.
  config.runtime.reuse = "strict"
  config.lsh.nbits = 32
  with pytest.raises(UserError, match=r"retrieval .*config changed \(lsh.nbits 64 -> 32\)"):
    vtd_main.run(config, str(work))


def test_stage_titles_are_distinct(uts_cache):
  config = tiny_config(uts_cache)
  config.teacher.compare_random_init = True
  config.student.init = "pretrain"
  graph = pipeline.build_graph(config, input_pipeline.load_collection(config),
                               sharding.make_mesh())
  assert [s.name for s in graph] == ["pretrain", "pretrain_student", "teacher",
                                     "teacher_random", "student", "features/teacher",
                                     "features/teacher_random", "features/student",
                                     "retrieval"]
  titles = [s.title for s in graph]
  assert len(set(titles)) == len(titles) and all(titles)


def test_export_then_evaluate_reproduces_the_rows(finished_run, tmp_path, capsys):
  _, workdir, results = finished_run
  assert export_lib.exportable(str(workdir)) == ["student", "teacher"]
  export_lib.main([f"--workdir={workdir}", "--model=list"])
  assert capsys.readouterr().out.split() == ["student", "teacher"]
  out = tmp_path / "student"
  export_lib.export(str(workdir), "student", str(out))
  got = evaluate_lib.evaluate_artifact(str(out), "test")
  assert sorted(got["rows"]) == [f"student/{m}" for m in sorted(retrieval.METHODS)]
  for row, metrics in got["rows"].items():
    want = results[row]["evals"]["test"]
    for column in ("DSVR", "CSVR", "ISVR", "bytes_per_video"):
      assert metrics["evals"]["test"][column] == pytest.approx(want[column], abs=1e-9), row
  export_lib.export(str(workdir), "teacher", str(tmp_path / "teacher"))
  capsys.readouterr()
  evaluate_lib.main([f"--artifact={tmp_path / 'teacher'}", "--split=val",
                     f"--output={tmp_path / 'teacher.json'}"])
  printed = capsys.readouterr().out
  assert "| teacher/FRP |" in printed and "val split" in printed
  with open(tmp_path / "teacher.json") as f:
    teacher = json.load(f)["rows"]
  for method in retrieval.METHODS:  # Whitening on device vs in NumPy: same ranking.
    want = results[f"teacher/{method}"]["evals"]["val"]  # The 'test' evaluator, on val.
    assert teacher[f"teacher/{method}"]["evals"]["test"]["DSVR"] == pytest.approx(
        want["DSVR"], abs=0.5)


@pytest.mark.parametrize("key, value, message", [
    ("teacher.init", "imagenet", "config.teacher.init must be one of pretrain, random; got "
                                 "'imagenet'"),
    ("student.pool", "max", "config.student.pool must be one of gap, rmac; got 'max'"),
    ("loss.band_sort", "up", "config.loss.band_sort must be one of descending, ascending"),
    ("loss.band_scope", "local", "config.loss.band_scope must be one of global, per_device"),
    ("retrieval.backend", "annoy", "config.retrieval.backend must be one of faiss, jax"),
    ("retrieval.rmac_whitening", "zca", "config.retrieval.rmac_whitening must be one of none, "
                                        "pca"),
    ("retrieval.index", "ivf", "config.retrieval.index='ivf': expected flat, ivf<nlist> or "
                               "hnsw<M>"),
    ("data.source", "youtube", "config.data.source must be one of synthetic, directory"),
    ("loss.lambdas", (1.0, 1.0), "config.loss.lambdas=(1.0, 1.0) must hold the 4 weights"),
    ("extract.rmac_levels", (), "config.extract.rmac_levels=() must be positive integers"),
    ("lsh.nbits", 100, "config.lsh.nbits=100 must be a positive multiple of 8"),
    ("extract.shard_videos", 0, "config.extract.shard_videos=0 must be >= 1"),
    ("train.batch_size", 12, "config.train.batch_size=12 is not divisible by the 8 devices of "
                             "the mesh; use a multiple of 8"),
    ("extract.batch_frames", 12, "config.extract.batch_frames=12 is not divisible by the 8 "
                                 "local devices; use a multiple of 8"),
    ("pretrain.train.batch_size", 12, "config.pretrain.train.batch_size=12 is not divisible by "
                                      "the 8 devices"),
    ("pretrain.train.batch_size", 24, "config.pretrain.train.batch_size=24 exceeds the 16 "
                                      "generated source images"),
    ("train.num_steps", 0, "config.train.num_steps=0 must be >= 1"),
    ("pretrain.train.num_steps", -1, "config.pretrain.train.num_steps=-1 must be >= 1"),
    ("data.synthetic.num_events", 0, "num_events"),
])
def test_config_errors_before_any_stage(tmp_path, key, value, message):
  assert jax.device_count() == 8  # tests/conftest.py
  config = tiny_config(tmp_path / "cache")
  node = config
  *path, last = key.split(".")
  for part in path:
    node = node[part]
  node[last] = value
  with pytest.raises(UserError, match=re.escape(message)) as e:
    vtd_main.run(config, str(tmp_path / "run"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "run" / "teacher").exists() and not (tmp_path / "cache").exists()


def test_data_errors_before_any_stage(tmp_path):
  config = tiny_config(tmp_path / "cache")
  config.data.source = "directory"
  with pytest.raises(UserError, match=r"config.data.source='directory' needs config.data.root"):
    vtd_main.run(config, str(tmp_path / "run"))
  config.data.root = str(tmp_path / "nowhere")
  with pytest.raises(UserError, match="annotation"):
    vtd_main.run(config, str(tmp_path / "run"))
  config = tiny_config(tmp_path / "cache")
  config.train.batch_size = 4096
  with pytest.raises(UserError, match=r"config.train.batch_size=4096 exceeds the \d+ training "
                                      "frames"):
    vtd_main.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "teacher").exists()


def _collection(num_videos=5, bad=()):
  return extract_worker.collection(num_videos, bad)


_embed = extract_worker.embed


def test_extract_shards_resume_and_skip(tmp_path):
  collection, videos = _collection(bad=(3,))
  out = extract.extract(collection, _embed, str(tmp_path), shard_videos=2, batch_frames=8)
  kept = [v for i, v in enumerate(videos) if i != 3]
  want = np.concatenate([v.astype(np.float32).mean(axis=(1, 2)) for v in kept])
  np.testing.assert_allclose(out.features["mean"], want, rtol=1e-6)
  np.testing.assert_array_equal(out.frame_video, np.concatenate(
      [np.full(len(v), i) for i, v in enumerate(videos) if i != 3]))
  assert out.skipped == ["v3"]
  # A finished shard is never recomputed; a missing one is.
  stamps = {k: os.path.getmtime(tmp_path / f"shard_{k:05d}.npz") for k in (0, 2)}
  os.remove(tmp_path / "shard_00001.npz")
  again = extract.extract(collection, _embed, str(tmp_path), shard_videos=2, batch_frames=8)
  assert {k: os.path.getmtime(tmp_path / f"shard_{k:05d}.npz") for k in (0, 2)} == stamps
  np.testing.assert_array_equal(again.features["max"], out.features["max"])
  with pytest.raises(UserError, match="divisible"):
    extract.extract(collection, _embed, str(tmp_path), shard_videos=2, batch_frames=3)


def test_extract_uses_all_local_devices():
  assert jax.local_device_count() == 8  # tests/conftest.py
  collection, videos = _collection(num_videos=6)
  frames = np.concatenate(videos)
  got = extract.embed_frames(_embed, frames, 16, extract.sharding.make_mesh(jax.local_devices()))
  np.testing.assert_allclose(got["mean"], np.asarray(_embed(frames)["mean"]), rtol=1e-6)


def _write_mp4(path, frames):
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (16, 16))
  assert writer.isOpened()
  for f in frames:
    writer.write(f)
  writer.release()


def test_directory_source_reads_videos_and_skips_corrupt(tmp_path):
  rng = np.random.default_rng(1)
  root = tmp_path / "fivr"
  (root / "videos").mkdir(parents=True)
  for vid in ("aaa", "bbb"):
    _write_mp4(root / "videos" / f"{vid}.mp4", rng.integers(0, 255, (6, 16, 16, 3), np.uint8))
  (root / "videos" / "ccc.mp4").write_bytes(b"not a video")
  folder = root / "videos" / "ddd"
  folder.mkdir()
  for i in range(3):
    cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 255, (16, 16, 3), np.uint8))
  fivr_data.save_annotation({"aaa": {"ND": ["bbb"], "IS": ["ccc"]}}, str(root / "annotation.json"))
  config = uts_config.get_config("smoke")
  config.data.source = "directory"
  config.data.root = str(root)
  config.data.frame_stride = 2
  coll = input_pipeline.load_collection(config)
  assert coll.video_ids == ["aaa", "bbb", "ccc", "ddd"] and coll.query_ids == ["aaa"]
  assert coll.read_frames(0).shape == (3, 32, 32, 3)  # 6 frames, stride 2, resized to 32
  assert coll.read_frames(3).shape == (2, 32, 32, 3)
  out = extract.extract(coll, _embed, str(tmp_path / "feat"), shard_videos=2, batch_frames=8)
  assert out.skipped == ["ccc"] and set(out.frame_video.tolist()) == {0, 1, 3}
  config.data.root = str(tmp_path / "empty")
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="annotation"):
    input_pipeline.load_collection(config)


def test_bad_weight_files_fail_before_any_stage(tmp_path):
  """A wrong student.weights is reported before the (expensive) teacher stage runs."""
  from tests.uts import test_weights
  config = tiny_config(tmp_path / "cache")
  workdir = tmp_path / "run"
  config.student.weights = str(tmp_path / "vgg16.pth")
  test_weights.write_torch_save_zip(config.student.weights, {"features.0.weight": np.zeros(
      (8, 3, 3, 3), np.float32)}, archive="vgg16")
  with pytest.raises(UserError, match=r"vgg16\.pth: a torch\.save file \(zip format\)"):
    vtd_main.run(config, str(workdir))
  config.student.weights = ""
  config.teacher.weights = str(tmp_path / "r.npz")  # Right format, wrong width.
  np.savez(config.teacher.weights, **{k: np.zeros(v, np.float32) for k, v in
                                      test_weights.resnet50_shapes(16, classes=10).items()})
  with pytest.raises(UserError, match=r"r\.npz: key '.*' has shape \(16.*the model expects"):
    vtd_main.run(config, str(workdir))
  assert not any(p.name in ("teacher", "pretrain", "student") for p in workdir.glob("*"))
  assert not (tmp_path / "cache").exists()  # Not even the data were generated.
