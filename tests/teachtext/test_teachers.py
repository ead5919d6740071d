import jax
import numpy as np

from vtd import artifacts
from vtd.teachtext import input_pipeline
from vtd.teachtext import teachers as teachers_lib
from vtd.teachtext import trainer as tt_train


def test_cached_equals_live(tiny_data, smoke_config, tmp_path):
  split = tiny_data.train
  model = teachers_lib.build_model(smoke_config.model, split.expert_dims().items())
  batch = next(input_pipeline.train_iterator(split, global_batch_size=8, seed=1,
                                             text_embeddings=["w2v"]))
  variables = model.init(jax.random.key(2), batch["text"]["w2v"], batch["experts"],
                         batch["available"], train=False)
  # Perturb BN statistics so inference mode is really exercised.
  variables = jax.tree.map(lambda x: x + 0.1, variables)
  artifacts.save_artifact(str(tmp_path / "t"), variables, smoke_config, {
      "model_name": "teacher_w2v", "text_embedding": "w2v",
      "expert_shapes": [list(s) for s in model.expert_shapes]})
  teacher, loaded = teachers_lib.load_teacher(str(tmp_path / "t"))
  tt_train.check_teacher(teacher, loaded, tiny_data)
  cache = teachers_lib.cache_embeddings(teacher, loaded, split, chunk_size=16)
  live = teachers_lib.teacher_similarities([teacher], [loaded], batch, "live")
  cached = teachers_lib.teacher_similarities([teacher], [cache], batch, "cached")
  assert live.shape == (1, 8, 8)
  np.testing.assert_allclose(live, cached, atol=2e-6)
