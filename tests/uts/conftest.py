"""UTS test fixtures: one tiny config, one generated-data cache and one finished run per session.

Every UTS test that pretrains or runs the pipeline uses `tiny_config` with the session's cache
dir, so the generated collection, the source images and the pretrained ResNet-50 are built
once, and the compiled step functions have the same shapes (the session's persistent
compilation cache, tests/conftest.py, then serves them).
"""

import pytest

from configs import uts as uts_config
from vtd import main as vtd_main


def tiny_config(cache_dir):
  config = uts_config.get_config("smoke")
  config.data.cache_dir = str(cache_dir)
  config.data.synthetic.update(num_events=2, num_distractors=8, mean_frames=4.5, min_frames=4,
                               max_frames=5, num_stock_worlds=2)
  config.pretrain.source.update(num_object_classes=3, num_texture_classes=1, train_per_class=4,
                                val_per_class=1)
  config.pretrain.train.update(num_steps=2, batch_size=8, eval_every_steps=2,
                               checkpoint_every_steps=2, async_checkpointing=False,
                               tensorboard=False)
  config.train.num_steps = 3
  config.train.batch_size = 16
  config.train.async_checkpointing = False
  config.train.tensorboard = False
  config.extract.shard_videos = 7
  config.extract.batch_frames = 16
  config.retrieval.top_n = 20
  config.runtime.compilation_cache_dir = ""
  return config


@pytest.fixture(scope="session")
def uts_cache(tmp_path_factory):
  """The generated-data (and pretraining) cache shared by the session's UTS tests."""
  return tmp_path_factory.mktemp("uts-cache")


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, uts_cache):
  """(config, workdir, results) of one finished tiny pipeline run (read-only: copy it to
  change it)."""
  workdir = tmp_path_factory.mktemp("uts") / "run"
  config = tiny_config(uts_cache)
  results = vtd_main.run(config, str(workdir))
  return config, workdir, results
