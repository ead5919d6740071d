"""Exported segmentation models as `python -m vtd.evaluate` rebuilds them: EvalSeg-Net's
candidates and scores, and one-line errors for artifacts that do not fit their config."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import segmentation as seg_config
from vtd.errors import UserError
from vtd.segmentation import evaluate as seg_eval
from vtd.segmentation import input_pipeline
from vtd.segmentation import models
from vtd.segmentation import selection
from vtd.segmentation import students as students_lib

NAMES = ("lowres_net", "fconv")


def _as_exported(config):
  """The config as an artifact stores it: through JSON (tuples come back as lists)."""
  return ml_collections.ConfigDict(json.loads(config.to_json()))


def _config(tmp_path):
  config = seg_config.get_config("smoke")
  config.students.names = ",".join(NAMES)
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.synthetic.update(num_train_videos=1, num_val_videos=1, num_test_videos=1,
                               test_frames_per_video=3)
  config.evalseg.image_size = 16  # Half the students' 32: the reference's 128 vs 256.
  return _as_exported(config)


@pytest.mark.parametrize("name", sorted(models.STUDENTS))
def test_students_of_an_exported_config_can_be_jitted(name):
  """U-Net widths are tuples; from an artifact's JSON config they are lists, which would make
  the module unhashable (no static argument of the jitted inference)."""
  exported = _as_exported(seg_config.get_config())
  model = students_lib.build_student(name, exported.students)
  hash(model)
  assert model == students_lib.build_student(name, seg_config.get_config().students)


def _random_like(init, seed):
  """Variables of `init`'s shapes with random values (tracing `init` only: running an
  un-jitted init op by op takes ~30 s on a loaded CPU)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32),
                      jax.eval_shape(init, jax.random.key(0)))


def _variables(config):
  """Random students and EvalSeg-Net, packed as run_evalseg exports them."""
  size, e = config.data.image_size, config.evalseg.image_size
  nets = {name: _random_like(lambda rng, name=name: students_lib.build_student(
      name, config.students).init(rng, jnp.zeros((1, size, size, 3)), train=False), i)
      for i, name in enumerate(NAMES)}
  nets[seg_eval.EVALSEG_NET] = _random_like(lambda rng: models.EvalSegNet(
      **config.evalseg.model).init(rng, jnp.zeros((1, e, e, 3)), jnp.zeros((1, e, e)),
                                   train=False), 7)
  return seg_eval.pack_variables(nets)


META = {"kind": seg_eval.EVALSEG, "students": list(NAMES), "normalisation": "minmax",
        "combine": "product", "scales": None}


def test_evalseg_scores_every_students_mask_of_every_image(tmp_path):
  config = _config(tmp_path)
  variables = _variables(config)
  scorer, sets = seg_eval.load_for_evaluation(variables, config, dict(META))
  test = sets["test"]
  scored = scorer.score_candidates(test)
  n = len(test)
  assert scored.masks.shape == (len(NAMES) * n, 32, 32)
  np.testing.assert_array_equal(scored.image_of, np.tile(np.arange(n), len(NAMES)))
  # Candidates are the students' outputs min–max normalised; targets their cos to the product.
  raw = [students_lib.predict(students_lib.build_student(name, config.students),
                              seg_eval.unpack_variables(variables, name),
                              seg_eval.frames_lib.resize_images(test.images, 32), size=32,
                              scale=config.student_training.target_scale) for name in NAMES]
  masks = [selection.normalise(r, "minmax") for r in raw]
  np.testing.assert_allclose(scored.masks, np.concatenate(masks), atol=1e-6)
  np.testing.assert_allclose(scored.targets, selection.cosine(
      np.concatenate(masks), np.concatenate([masks[0] * masks[1]] * 2)), atol=1e-6)
  # One candidate scored directly: image and mask at EvalSeg-Net's 16 x 16 input.
  i = n + 1  # fconv on image 1
  image = seg_eval.frames_lib.resize_images(
      seg_eval.frames_lib.resize_images([test.images[1]], 32), 16)
  mask = seg_eval.frames_lib.resize_masks(scored.masks[i:i + 1], (16, 16))
  want = models.EvalSegNet(**config.evalseg.model).apply(
      seg_eval.unpack_variables(variables, seg_eval.EVALSEG_NET),
      jnp.asarray(image, jnp.float32) / 255.0, jnp.asarray(mask), train=False)
  np.testing.assert_allclose(scored.scores[i], np.asarray(want)[0], rtol=1e-5, atol=1e-6)


def _without(variables, name):
  return {k: {n: v for n, v in tree.items() if n != name} for k, tree in variables.items()}


@pytest.mark.parametrize("change, message", [
    (lambda v, c, m: (_without(v, "fconv"), c, m),
     "the artifact has no variables of 'fconv' \\(it has evalseg_net, lowres_net\\)"),
    (lambda v, c, m: (_without(v, seg_eval.EVALSEG_NET), c, m),
     "the artifact has no variables of 'evalseg_net'"),
    (lambda v, c, m: (v, c, {k: x for k, x in m.items() if k != "students"}),
     "EvalSeg-Net artifact without students in its metadata"),
    (lambda v, c, m: (v, c.update_from_flattened_dict({"evalseg.model.hidden": 32}) or c, m),
     "EvalSeg-Net: the artifact's variable params/fc1/bias is \\(64,\\) where its config "
     "builds \\(32,\\)"),
    (lambda v, c, m: (v, c.update_from_flattened_dict({"students.fconv.features": 8}) or c, m),
     "student fconv: the artifact's variable params/"),
    (lambda v, c, m: (v, c, {**m, "kind": "scorer"}),
     "segmentation artifact of unknown kind 'scorer' \\(expected one of student, multinet, "
     "evalseg\\)"),
])
def test_bad_artifacts_are_one_line_errors(tmp_path, change, message):
  config = _config(tmp_path)
  variables, config, meta = change(_variables(config), config, dict(META))
  with pytest.raises(UserError, match=message):
    seg_eval.load_for_evaluation(variables, config, meta)


def test_scorer_needs_every_students_masks():
  class Missing:
    def masks(self, test):
      return None

  scorer = seg_eval.EvalSegScorer(None, None, [Missing()], size=8, input_size=0,
                                  label_scale=1.0, normalisation="minmax", combine="product")
  assert scorer.input_size == 8  # 0 = the students' size.
  test = input_pipeline.TestSet(name="t", images=[np.zeros((8, 8, 3), np.uint8)],
                                masks=None, boxes=None, class_names=["a"], average="images")
  assert scorer.score_candidates(test) is None
