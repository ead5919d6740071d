"""Source-domain pretraining of the UTS backbones (vtd/uts/pretrain.py): a cached stage."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.uts.conftest import tiny_config
from vtd import sharding
from vtd.uts import networks
from vtd.uts import pretrain


def _shapes(tree):
  return jax.tree.map(np.shape, tree)


@pytest.mark.slow
def test_pretrained_teacher_is_cached_across_workdirs(tmp_path, uts_cache):
  # The session's cache: the pipeline tests' pretraining (the same config) is this one.
  config = tiny_config(uts_cache)
  mesh = sharding.make_mesh()
  result, directory = pretrain.run(config, str(tmp_path / "run_a" / "pretrain"), mesh)
  assert directory.startswith(str(uts_cache / "uts_pretrain" / "resnet50-"))
  assert result["step"] == 2 and 0 <= result["val_top1"] <= 1  # Keep-best on val.
  assert result["classes"] == 4 and result["train_images"] == 16
  assert result["weights_digest"] == pretrain.weights_digest(directory)
  backbone = pretrain.load_backbone(directory)
  # Exactly the teacher's backbone variables (the classifier's fc is dropped).
  template = jax.eval_shape(lambda: networks.build_teacher(config).init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert _shapes(backbone["params"]) == _shapes(template["params"]["backbone"])
  assert _shapes(backbone["batch_stats"]) == _shapes(template["batch_stats"]["backbone"])
  teacher = networks.init_teacher(config, backbone)
  np.testing.assert_array_equal(teacher["params"]["backbone"]["conv1"]["kernel"],
                                backbone["params"]["conv1"]["kernel"])
  np.testing.assert_array_equal(teacher["batch_stats"]["backbone"]["layer4_2"]["bn3"]["var"],
                                backbone["batch_stats"]["layer4_2"]["bn3"]["var"])
  # Trained: the BatchNorm running statistics left their initial values (mean 0, var 1).
  stats = backbone["batch_stats"]["bn1"]
  assert np.abs(stats["mean"]).max() > 1e-4 and np.abs(stats["var"] - 1).max() > 1e-4

  # Another workdir reuses it untouched; another recipe is another entry.
  stamp = os.path.getmtime(os.path.join(directory, pretrain.ENTRY_DONE))
  again, same = pretrain.run(config, str(tmp_path / "run_b" / "pretrain"), mesh)
  assert same == directory and again == result
  assert os.path.getmtime(os.path.join(directory, pretrain.ENTRY_DONE)) == stamp
  config.pretrain.optim.lr = 1e-4
  assert pretrain.entry_dir(config, "w/pretrain", "resnet50") != directory
  config.data.cache_dir = ""
  assert pretrain.entry_dir(config, "w/pretrain", "resnet50") == os.path.join("w/pretrain",
                                                                               "weights")


def test_entries_of_older_vtd_are_reused(tmp_path):
  """An entry finished by an older vtd (its marker was the stage's stage.json) is reused."""
  entry = tmp_path / "entry"
  entry.mkdir()
  (entry / "stage.json").write_text('{"result": {"step": 7}}')
  assert pretrain._finished(str(entry)) == {"step": 7}
  (entry / pretrain.ENTRY_DONE).write_text("{broken")
  assert pretrain._finished(str(entry)) == {"step": 7}  # A damaged marker is skipped.


@pytest.mark.slow
def test_pretrained_student_keeps_blocks_1_to_4_only(tmp_path, uts_cache):
  config = tiny_config(uts_cache)
  _, directory = pretrain.run(config, str(tmp_path / "run"), sharding.make_mesh(), arch="vgg16")
  backbone = pretrain.load_backbone(directory)
  fresh = networks.init_student(config, jax.random.key(0))
  student = networks.init_student(config, jax.random.key(0), backbone)
  params = student["params"]["backbone"]
  for name in params:
    if name.startswith("features_"):
      np.testing.assert_array_equal(params[name]["kernel"], backbone["params"][name]["kernel"])
    else:  # The UTS head replaces block 5: it keeps its fresh init.
      jax.tree.map(np.testing.assert_array_equal, params[name],
                   fresh["params"]["backbone"][name])
  assert any(not name.startswith("features_") for name in params)


def test_a_changed_entry_is_refused_by_its_dependants(tmp_path):
  """The teacher loads the pretrained weights its `pretrain` stage recorded, or stops."""
  from etils import epath
  from vtd import artifacts
  from vtd import stages
  from vtd.errors import UserError
  from vtd.uts import trainer
  entry = tmp_path / "cache" / "entry"
  artifacts.save_artifact(str(entry / pretrain.BACKBONE_DIR), {"params": {"w": np.ones(3)}},
                          tiny_config(tmp_path / "cache"), {"method": "uts"})
  recorded = {"directory": str(entry), "weights_digest": pretrain.weights_digest(str(entry))}
  ctx = stages.StageContext(name="teacher", dir=epath.Path(tmp_path / "run" / "teacher"),
                            workdir=epath.Path(tmp_path / "run"), config=tiny_config(tmp_path),
                            inputs={"pretrain": recorded})
  loaded = trainer.load_pretrained(ctx, "pretrain", mesh=None, arch="resnet50")
  np.testing.assert_array_equal(loaded["params"]["w"], np.ones(3))
  artifacts.save_artifact(str(entry / pretrain.BACKBONE_DIR), {"params": {"w": np.zeros(3)}},
                          tiny_config(tmp_path / "cache"), {"method": "uts"})
  with pytest.raises(UserError, match=r"the pretrained resnet50 in .*entry is not the one "
                                      r"stage pretrain recorded .*; remove .*run/pretrain"):
    trainer.load_pretrained(ctx, "pretrain", mesh=None, arch="resnet50")
