"""Data parallelism: the loss and gradients on 8 (forced CPU) devices equal the 1-device ones.

The B x B similarity matrices, the ranking loss, the distillation loss and BatchNorm statistics
are all computed over the *global* batch, so the only differences are float32 reassociation in
the cross-device reductions (BN statistics, means over B^2 entries). Tolerance: rtol 1e-4,
atol 1e-5 (observed: max abs difference ~1e-6 on gradients of magnitude up to ~1e-2).
"""

import jax
import numpy as np
import pytest

from vtd.errors import UserError

from vtd import sharding
from vtd.teachtext import input_pipeline
from vtd.teachtext import teachers as teachers_lib
from vtd.teachtext import losses as tt_losses


@pytest.mark.parametrize("teacher_mode", ["live", "cached"])
def test_eight_devices_equal_one(tiny_data, smoke_config, teacher_mode):
  smoke_config.distill.teacher_mode = teacher_mode
  assert jax.device_count() == 8, "conftest forces 8 CPU devices"
  split = tiny_data.train
  model = teachers_lib.build_model(smoke_config.model, split.expert_dims().items())
  batch = next(input_pipeline.train_iterator(split, global_batch_size=16, seed=0,
                                             text_embeddings=["gpt", "gpt_xl", "w2v"]))
  init = lambda emb, seed: model.init(jax.random.key(seed), batch["text"][emb],
                                      batch["experts"], batch["available"], train=False)
  student = init("gpt_xl", 0)
  teacher_models = [teachers_lib.Teacher(f"teacher_{e}", e, model, "") for e in ("w2v", "gpt")]
  teacher_vars = [init("w2v", 1), init("gpt", 2)]
  if teacher_mode == "cached":
    teacher_vars = [teachers_lib.cache_embeddings(t, v, split, chunk_size=16)
                    for t, v in zip(teacher_models, teacher_vars)]
  loss_fn = tt_losses.make_loss_fn(model, "gpt_xl", smoke_config.loss, distill_weight=1.0,
                                   teachers=tuple(teacher_models),
                                   distill_cfg=smoke_config.distill)

  def loss_and_grads(mesh):
    batch_g = sharding.shard_batch(batch, mesh)
    frozen = sharding.replicate(teacher_vars, mesh)
    params, stats = sharding.replicate((student["params"], student["batch_stats"]), mesh)

    @jax.jit
    def f(params, stats, batch, frozen):
      (loss, (meas, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, stats, batch, frozen, jax.random.key(0))
      return loss, meas, grads, new_stats

    with jax.set_mesh(mesh):
      return jax.device_get(f(params, stats, batch_g, frozen))

  one = loss_and_grads(sharding.make_mesh(jax.devices()[:1]))
  eight = loss_and_grads(sharding.make_mesh(jax.devices()))
  assert one[1]["distill_loss"] > 0
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batch_not_divisible_is_one_line_error():
  with pytest.raises(UserError, match="batch_size=12 is not divisible by the 8 devices"):
    sharding.check_batch_size(12, sharding.make_mesh(), "batch_size")
