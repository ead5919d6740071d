"""Source-domain pretraining of the UTS backbones (vtd/uts/pretrain.py): a cached stage."""

import os

import jax
import numpy as np
import pytest

from configs import uts as uts_config
from vtd import sharding
from vtd.uts import networks
from vtd.uts import pretrain


def tiny_config(tmp_path):
  config = uts_config.get_config("smoke")
  config.data.cache_dir = str(tmp_path / "cache")
  config.pretrain.source.update(num_object_classes=4, num_texture_classes=1, train_per_class=8,
                                val_per_class=2)
  config.pretrain.train.update(num_steps=4, batch_size=8, eval_every_steps=2,
                               checkpoint_every_steps=2, async_checkpointing=False,
                               tensorboard=False)
  config.runtime.compilation_cache_dir = ""
  return config


def _shapes(tree):
  return jax.tree.map(np.shape, tree)


@pytest.mark.slow
def test_pretrained_teacher_is_cached_across_workdirs(tmp_path):
  config = tiny_config(tmp_path)
  mesh = sharding.make_mesh()
  result, directory = pretrain.run(config, str(tmp_path / "run_a"), mesh)
  assert directory.startswith(str(tmp_path / "cache" / "uts_pretrain" / "resnet50-"))
  assert result["step"] in (2, 4) and 0 <= result["val_top1"] <= 1  # Keep-best on val.
  assert result["classes"] == 5 and result["train_images"] == 40
  backbone = pretrain.load_backbone(directory)
  # Exactly the teacher's backbone variables (the classifier's fc is dropped).
  template = networks.init_teacher(config)
  assert _shapes(backbone["params"]) == _shapes(template["params"]["backbone"])
  assert _shapes(backbone["batch_stats"]) == _shapes(template["batch_stats"]["backbone"])
  teacher = networks.init_teacher(config, backbone)
  np.testing.assert_array_equal(teacher["params"]["backbone"]["conv1"]["kernel"],
                                backbone["params"]["conv1"]["kernel"])
  np.testing.assert_array_equal(teacher["batch_stats"]["backbone"]["layer4_2"]["bn3"]["var"],
                                backbone["batch_stats"]["layer4_2"]["bn3"]["var"])
  assert not np.array_equal(template["params"]["backbone"]["conv1"]["kernel"],
                            teacher["params"]["backbone"]["conv1"]["kernel"])

  # Another workdir reuses it untouched; another recipe is another entry.
  stamp = os.path.getmtime(os.path.join(directory, "stage.json"))
  again, same = pretrain.run(config, str(tmp_path / "run_b"), mesh)
  assert same == directory and again == result
  assert os.path.getmtime(os.path.join(directory, "stage.json")) == stamp
  config.pretrain.optim.lr = 1e-4
  assert pretrain.stage_dir(config, "w", "resnet50") != directory
  config.data.cache_dir = ""
  assert pretrain.stage_dir(config, "w", "resnet50") == os.path.join("w", "pretrain_resnet50")


@pytest.mark.slow
def test_pretrained_student_keeps_blocks_1_to_4_only(tmp_path):
  config = tiny_config(tmp_path)
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
