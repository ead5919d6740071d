"""Stage provenance: what reruns, what is reused, what is moved aside, on toy graphs."""

import json
import os

import ml_collections
import pytest

from vtd import stages
from vtd.errors import UserError


def make_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      method="toy", seed=0,
      data=dict(size=4, cache_dir="~/.cache"),
      model=dict(width=8),
      train=dict(steps=3, log_every_steps=1),
      eval=dict(threshold=0.5),
      runtime=dict(reuse="changed"),
  ))
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


class Recorder:
  """Stage functions that record each call and the value they computed."""

  def __init__(self):
    self.calls = []

  def teacher(self, ctx):
    self.calls.append(ctx.name)
    value = ctx.config.model.width * ctx.config.seed + ctx.config.data.size
    (ctx.dir / "out.json").write_text(json.dumps(value))
    return {"value": value, "threshold": ctx.config.eval.threshold}

  def student(self, ctx):
    self.calls.append(ctx.name)
    upstream = json.loads((ctx.input_dir("teacher") / "out.json").read_text())
    return {"value": upstream + ctx.config.train.steps}


def graph(rec):
  return [
      stages.Stage(name="teacher", run=rec.teacher, config_keys=("seed", "data", "model"),
                   eval_keys=("eval",)),
      stages.Stage(name="student", run=rec.student, config_keys=("train",),
                   inputs=("teacher",), uses_data=False),
  ]


def run(config, workdir, rec=None, data="v1"):
  rec = rec or Recorder()
  results = stages.run_pipeline(config, workdir, graph(rec), data_fingerprint={"d": data},
                                non_result_keys=("data.cache_dir",))
  return results, rec.calls


def superseded(workdir):
  """Names of the stages moved to <workdir>/superseded/<time>/ (over all times)."""
  root = workdir / stages.SUPERSEDED_DIR
  return sorted(p.name for stamp in root.iterdir() for p in stamp.iterdir()) if root.exists() \
      else []


def test_unchanged_config_reuses_everything(tmp_path):
  first, calls = run(make_config(), tmp_path)
  assert calls == ["teacher", "student"]
  again, calls = run(make_config(), tmp_path)
  assert calls == [] and again == first


def test_non_result_keys_change_nothing(tmp_path):
  run(make_config(), tmp_path)
  _, calls = run(make_config(**{"train.log_every_steps": 50, "data.cache_dir": "/elsewhere",
                                "runtime.reuse": "changed"}), tmp_path)
  assert calls == []


def test_changed_key_reruns_stage_and_downstream_and_keeps_the_old(tmp_path):
  run(make_config(), tmp_path)
  results, calls = run(make_config(**{"model.width": 16}), tmp_path)
  assert calls == ["teacher", "student"]
  assert results["teacher"]["value"] == 4 and results["student"]["value"] == 7
  assert superseded(tmp_path) == ["student", "teacher"]
  old = next((tmp_path / stages.SUPERSEDED_DIR).iterdir())
  assert json.loads((old / "teacher" / stages.DONE_FILE).read_text())["provenance"][
      "config"]["model"] == {"width": 8}


def test_downstream_only_change_keeps_upstream(tmp_path):
  run(make_config(), tmp_path)
  results, calls = run(make_config(**{"train.steps": 5}), tmp_path)
  assert calls == ["student"] and results["student"]["value"] == 9
  assert superseded(tmp_path) == ["student"]


def test_eval_only_change_reevaluates_in_place(tmp_path):
  run(make_config(), tmp_path)
  results, calls = run(make_config(**{"eval.threshold": 0.7}), tmp_path)
  # The teacher runs again in its own directory (nothing moved); the student's input, the
  # teacher's trained outputs, did not change, so it is reused.
  assert calls == ["teacher"] and results["teacher"]["threshold"] == 0.7
  assert superseded(tmp_path) == []


def test_eval_keys_declared_differently_with_equal_values_reuse(tmp_path):
  run(make_config(), tmp_path)
  # A later vtd declares the stage's evaluation keys one level deeper ("eval.threshold"
  # instead of "eval"): the recorded eval fingerprint differs, the values do not.
  def deeper(rec):
    teacher, student = graph(rec)
    return [stages.Stage(name="teacher", run=rec.teacher, config_keys=teacher.config_keys,
                         eval_keys=("eval.threshold",)), student]
  rec = Recorder()
  stages.run_pipeline(make_config(), tmp_path, deeper(rec), data_fingerprint={"d": "v1"},
                      non_result_keys=("data.cache_dir",))
  assert rec.calls == []
  rec = Recorder()
  stages.run_pipeline(make_config(**{"eval.threshold": 0.7}), tmp_path, deeper(rec),
                      data_fingerprint={"d": "v1"}, non_result_keys=("data.cache_dir",))
  assert rec.calls == ["teacher"]


def test_data_change_reruns_stages_that_use_data(tmp_path):
  run(make_config(), tmp_path)
  _, calls = run(make_config(), tmp_path, data="v2")
  assert calls == ["teacher", "student"]  # The student because its input changed.


def test_strict_mode_stops_naming_the_keys(tmp_path):
  run(make_config(), tmp_path)
  with pytest.raises(UserError, match=r"stage 1/2 teacher: config changed \(model.width 8 -> "
                                      r"16, seed 0 -> 1\); runtime.reuse=strict"):
    run(make_config(**{"model.width": 16, "seed": 1, "runtime.reuse": "strict"}), tmp_path)
  with pytest.raises(UserError, match="evaluation settings changed"):
    run(make_config(**{"eval.threshold": 0.1, "runtime.reuse": "strict"}), tmp_path)
  assert superseded(tmp_path) == []
  _, calls = run(make_config(**{"runtime.reuse": "strict"}), tmp_path)
  assert calls == []


def test_unfinished_stage_resumes_or_is_moved_aside(tmp_path):
  rec = Recorder()

  def crash(ctx):
    (ctx.dir / "checkpoint").write_text("partial")
    raise RuntimeError("killed")

  crashing = [stages.Stage(name="teacher", run=crash, config_keys=("model",))]
  working = [stages.Stage(name="teacher", run=rec.teacher, config_keys=("model",),
                          eval_keys=("seed", "data", "eval"))]
  with pytest.raises(RuntimeError):
    stages.run_pipeline(make_config(), tmp_path, crashing)
  # Same config: the partial stage is resumed in place (its checkpoints are kept).
  with pytest.raises(RuntimeError):
    stages.run_pipeline(make_config(), tmp_path, crashing)
  assert (tmp_path / "teacher" / "checkpoint").exists() and superseded(tmp_path) == []
  # Changed config: the partial stage (checkpoints of another config) goes aside.
  stages.run_pipeline(make_config(**{"model.width": 3}), tmp_path, working)
  assert superseded(tmp_path) == ["teacher"] and rec.calls == ["teacher"]
  assert not (tmp_path / "teacher" / "checkpoint").exists()


def test_older_stage_without_provenance_is_rerun(tmp_path):
  (tmp_path / "teacher").mkdir()
  (tmp_path / "teacher" / stages.DONE_FILE).write_text(json.dumps({"value": 123}))
  results, calls = run(make_config(), tmp_path)
  assert calls == ["teacher", "student"] and results["teacher"]["value"] == 4


def test_undeclared_key_fails_loudly(tmp_path):
  def sneaky(ctx):
    return {"lr": ctx.config.train.steps}  # 'train' is not declared.

  with pytest.raises(AttributeError):
    stages.run_pipeline(make_config(), tmp_path,
                        [stages.Stage(name="s", run=sneaky, config_keys=("model",))])


def test_graph_errors():
  rec = Recorder()
  with pytest.raises(ValueError, match="reads \\['teacher'\\], which do not run before it"):
    stages.check_graph(make_config(), graph(rec)[::-1])
  with pytest.raises(ValueError, match="declares config key 'model.depth'"):
    stages.check_graph(make_config(), [stages.Stage(name="a", run=rec.teacher,
                                                    config_keys=("model.depth",))])
  with pytest.raises(ValueError, match="would nest"):
    stages.check_graph(make_config(), [
        stages.Stage(name="a", run=rec.teacher, config_keys=()),
        stages.Stage(name="a/b", run=rec.teacher, config_keys=())])


def test_results_paths_are_relative(tmp_path):
  ctx = stages.StageContext(name="s", dir=tmp_path / "s", workdir=tmp_path, config=None,
                            inputs={})
  assert ctx.rel(tmp_path / "s" / "model") == "s/model"
  assert ctx.rel("/elsewhere/model") == "/elsewhere/model"


def test_describe_changes():
  assert stages.describe_changes({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == (
      "a.c 2 -> 3, d \"<unset>\" -> 4")
