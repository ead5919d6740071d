"""The evaluator interface: which evaluators run on a model, on a split, with which keys."""

from vtd.evaluators import common

SEGMENTATION = {
    "val": dict(type="segmentation", split="val", bin_threshold=0.5),
    "test": dict(type="segmentation", split="test", bin_threshold=0.5),
    "scoring_val": dict(type="mask_scoring", split="val", keep_fraction=0.1),
    "scoring_test": dict(type="mask_scoring", split="test", keep_fraction=0.1),
}


def test_on_split_keeps_one_of_entries_that_differ_only_in_split():
  # `val` selects checkpoints (left out); the two mask_scoring copies would repeat numbers.
  assert common.on_split(SEGMENTATION, "test") == {
      "test": dict(type="segmentation", split="test", bin_threshold=0.5),
      "scoring_test": dict(type="mask_scoring", split="test", keep_fraction=0.1)}
  # The copy already on the split keeps its name; others are pointed at the split.
  assert common.on_split(SEGMENTATION, "val") == {
      "test": dict(type="segmentation", split="val", bin_threshold=0.5),
      "scoring_val": dict(type="mask_scoring", split="val", keep_fraction=0.1)}
  # Different settings are different evaluators: both stay.
  teachtext = {"val": dict(type="retrieval", split="val"),
               "test": dict(type="retrieval", split="test"),
               "qbnorm": dict(type="qbnorm", split="test", beta=20.0)}
  assert list(common.on_split(teachtext, "val")) == ["test", "qbnorm"]


def test_config_keys_follow_the_model_interface():
  evals = {**SEGMENTATION, "off": dict(type="segmentation", split="test", enabled=False)}
  assert common.config_keys(evals, "masks") == ("evals.val", "evals.test")
  assert common.config_keys(evals, "score_candidates") == ("evals.scoring_val",
                                                           "evals.scoring_test")
  assert common.config_keys({"test": dict(type="retrieval", split="test")}, "masks") == ()


def test_evaluators_without_an_interface_score_every_model():
  evals = common.from_config({"test": dict(type="retrieval", split="test")})
  assert list(common.for_model(evals, object())) == ["test"]
