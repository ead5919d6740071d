"""What the segmentation evaluators score: mask predictors with one interface, `masks(test)`.

`vtd.evaluators.segmentation.Evaluator` calls `model.masks(test)` on a held-out set
(`input_pipeline.TestSet`) and scores the returned soft masks [N, s, s] (any scale: each is
min-max normalised before thresholding); None means the model cannot segment that set. The
predictors:
  VideoPCAMasks  the teacher: VideoPCA on the set's source videos (None for single images)
  StudentMasks   one trained student net on the set's images (raw outputs / target_scale)
  MultiNetMasks  the students' outputs mapped to [0, 1] masks and combined (multinet.combine)
  Recorded       masks computed earlier, by split (what the pipeline's stages saved)
EvalSeg-Net does not segment; `EvalSegScorer` has `score_candidates(test)` instead, scored by
`vtd.evaluators.mask_scoring`: it scores every student's mask of every image of the set.
`load_for_evaluation` rebuilds a student, a Multi-Net or an EvalSeg-Net from an exported
artifact for `python -m vtd.evaluate`.

Artifacts that hold several networks (Multi-Net: its students; EvalSeg-Net: itself and its
generation's students) keep them side by side under each variable collection:
{"params": {"lowres_net": ..., "fconv": ..., "evalseg_net": ...}, "batch_stats": {...}}
(`pack_variables` / `unpack_variables`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vtd.errors import UserError
from vtd.evaluators import mask_scoring
from vtd.segmentation import frames as frames_lib
from vtd.segmentation import input_pipeline
from vtd.segmentation import models
from vtd.segmentation import selection
from vtd.segmentation import students as students_lib
from vtd.segmentation import teacher as teacher_lib

STUDENT = "student"  # metadata["kind"] of an exported student artifact
MULTINET = "multinet"  # ... and of an exported Multi-Net (all its students' variables)
EVALSEG = "evalseg"  # ... and of an exported EvalSeg-Net (its and its students' variables)
KINDS = (STUDENT, MULTINET, EVALSEG)
EVALSEG_NET = "evalseg_net"  # EvalSeg-Net's name beside the students' in packed variables


class VideoPCAMasks:
  """The VideoPCA teacher's masks of held-out images, from their source videos."""

  def __init__(self, config, mesh):
    self._vcfg = teacher_lib.videopca_config(config.teacher.videopca)
    self._batch_videos = config.teacher.batch_videos
    self._size = config.data.image_size
    self._mesh = mesh

  def masks(self, test: input_pipeline.TestSet) -> np.ndarray | None:
    return teacher_lib.held_out_masks(test, self._vcfg, self._mesh, self._batch_videos,
                                      self._size)


class StudentMasks:
  """One student's raw outputs [N, s, s] (1.0 = the top of the teacher's target range)."""

  def __init__(self, model, variables: Any, *, size: int, target_scale: float):
    self.model, self.variables = model, variables
    self._size, self._scale = size, target_scale

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Raw outputs of frames [N, S, S, 3] uint8 at the working size S."""
    return students_lib.predict(self.model, self.variables, images, size=self._size,
                                scale=self._scale)

  def masks(self, test: input_pipeline.TestSet) -> np.ndarray:
    return self.predict(frames_lib.resize_images(test.images, self._size))


class Recorded:
  """Masks computed earlier: {split: [N, s, s]} (a split not in it gives None)."""

  def __init__(self, by_split: dict[str, np.ndarray]):
    self.by_split = by_split

  def masks(self, test: input_pipeline.TestSet) -> np.ndarray | None:
    return self.by_split.get(test.split)


class Recording:
  """Wraps a predictor and keeps what it returned, by split (for the overlays)."""

  def __init__(self, model):
    self._model = model
    self.by_split: dict[str, np.ndarray] = {}

  def masks(self, test: input_pipeline.TestSet) -> np.ndarray | None:
    if test.split not in self.by_split:
      out = self._model.masks(test)
      if out is None:
        return None
      self.by_split[test.split] = out
    return self.by_split[test.split]


class MultiNetMasks:
  """Multi-Net: every student's output -> [0, 1] mask (`selection.normalise`), combined
  pixel-wise (`selection.multinet`)."""

  def __init__(self, members: Sequence[Any], *, normalisation: str, combine: str,
               scales: Sequence[float] | None = None):
    self._members = list(members)
    self._rule, self._combine = normalisation, combine
    self._scales = list(scales) if scales is not None else [None] * len(self._members)

  def masks(self, test: input_pipeline.TestSet) -> np.ndarray | None:
    raw = [m.masks(test) for m in self._members]
    if any(r is None for r in raw):
      return None
    return selection.multinet(selection.normalise_all(raw, self._rule, self._scales),
                              self._combine)


class EvalSegScorer:
  """EvalSeg-Net scoring its generation's student masks (`vtd.evaluators.mask_scoring`).

  The candidates of a set are every student's output on every image, mapped to [0, 1] as the
  generation's Multi-Net stage recorded (rule, per-student scales): what EvalSeg-Net scores
  on the training frames for the next selection (`trainer.run_evalseg`), here on held-out
  images with ground truth. Their targets are cos(candidate, the image's masks combined as
  EvalSeg-Net's label was: `combine`, from evalseg.label_combine).
  """

  def __init__(self, model, variables: Any, members: Sequence[Any], *, size: int,
               input_size: int, label_scale: float, normalisation: str, combine: str,
               scales: Sequence[float] | None = None):
    """model / variables: EvalSeg-Net; members: the students' predictors (`masks(test)`, raw
    outputs [N, size, size]); input_size: EvalSeg-Net's input side (0 = `size`)."""
    self.model, self.variables = model, variables
    self._members = list(members)
    self._size, self.input_size = size, input_size or size
    self._label_scale = label_scale
    self._rule, self._combine = normalisation, combine
    self._scales = list(scales) if scales is not None else [None] * len(self._members)

  def input_images(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Frames (any sizes) -> [N, e, e, 3] uint8 at EvalSeg-Net's input size e, via the
    students' working size (as the students saw them)."""
    return frames_lib.resize_images(frames_lib.resize_images(images, self._size),
                                    self.input_size)

  def score(self, images: np.ndarray, cand: selection.Candidates) -> np.ndarray:
    """Scores [C] (cos units) of candidates `cand` of frames `images` [F, e, e, 3] (from
    `input_images`; `cand.frame_of` indexes them)."""
    e = self.input_size
    return students_lib.evalseg_scores(self.model, self.variables, images[cand.frame_of],
                                       frames_lib.resize_masks(cand.masks, (e, e)),
                                       label_scale=self._label_scale)

  def score_candidates(self, test: input_pipeline.TestSet
                       ) -> mask_scoring.ScoredCandidates | None:
    raw = [m.masks(test) for m in self._members]
    if any(r is None for r in raw):
      return None
    masks = selection.normalise_all(raw, self._rule, self._scales)
    cand = selection.candidates(np.stack(masks), np.arange(len(test)))
    multi = selection.multinet(masks, self._combine)
    return mask_scoring.ScoredCandidates(
        masks=cand.masks, image_of=cand.frame_of,
        scores=self.score(self.input_images(test.images), cand),
        targets=selection.cosine_labels(cand, multi))


def pack_variables(networks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """{network: {collection: tree}} -> {collection: {network: tree}} (not every network has
  every collection: EvalSeg-Net and LowRes-Net have no batch_stats)."""
  collections = dict.fromkeys(k for v in networks.values() for k in v)
  return {key: {name: v[key] for name, v in networks.items() if key in v} for key in collections}


def unpack_variables(variables: Mapping[str, Any], name: str) -> dict[str, Any]:
  """One network's {collection: tree} of packed `variables`; a UserError if it has none."""
  have = sorted(variables.get("params", {}))
  if name not in have:
    raise UserError(f"the artifact has no variables of {name!r} (it has "
                    f"{', '.join(have) or 'none'}); re-export it with python -m vtd.export "
                    "from the workdir that trained it")
  return {k: v[name] for k, v in variables.items() if name in v}


def _check_fits(what: str, init, variables: Any) -> None:
  """A UserError naming the first parameter whose shape differs from what the artifact's
  config builds (`init(rng)` is traced only, never run)."""
  want = traverse_util.flatten_dict(jax.eval_shape(init, jax.random.key(0)), sep="/")
  got = traverse_util.flatten_dict(dict(variables), sep="/")
  for path in sorted(set(want) | set(got)):
    w = tuple(want[path].shape) if path in want else None
    g = tuple(np.shape(got[path])) if path in got else None
    if w != g:
      raise UserError(f"{what}: the artifact's variable {path} is "
                      f"{'missing' if g is None else g} where its config builds "
                      f"{'nothing' if w is None else w}; re-export it from the workdir "
                      "that trained it")


def _student(name: str, variables: Any, config) -> StudentMasks:
  model = students_lib.build_student(name, config.students)
  size = config.data.image_size
  _check_fits(f"student {name}", lambda rng: model.init(
      rng, jnp.zeros((1, size, size, 3)), train=False), variables)
  return StudentMasks(model, variables, size=size,
                      target_scale=config.student_training.target_scale)


def _evalseg(variables: Any, config, metadata: dict[str, Any]) -> EvalSegScorer:
  missing = [k for k in ("students", "normalisation", "combine") if k not in metadata]
  if missing:
    raise UserError(f"EvalSeg-Net artifact without {', '.join(missing)} in its metadata; "
                    "re-export it with python -m vtd.export from the workdir that trained it")
  ecfg = config.evalseg
  model = models.EvalSegNet(**ecfg.model.to_dict())
  net = unpack_variables(variables, EVALSEG_NET)
  e = ecfg.image_size or config.data.image_size
  _check_fits("EvalSeg-Net", lambda rng: model.init(
      rng, jnp.zeros((1, e, e, 3)), jnp.zeros((1, e, e)), train=False), net)
  members = [_student(n, unpack_variables(variables, n), config) for n in metadata["students"]]
  return EvalSegScorer(model, net, members, size=config.data.image_size, input_size=e,
                       label_scale=ecfg.label_scale, normalisation=metadata["normalisation"],
                       combine=metadata["combine"], scales=metadata.get("scales"))


def load_for_evaluation(variables: Any, config, metadata: dict[str, Any],
                        data_path: str | None = None) -> tuple[Any, dict[str, Any]]:
  """(predictor or scorer, {split: held-out set}) of an exported student, Multi-Net or
  EvalSeg-Net, for `python -m vtd.evaluate`.

  The held-out sets are those of the artifact's config: the embedded synthetic val / test
  videos (regenerated deterministically), or its real test set; `data_path` points a real
  test set (`config.data.test_root`) at another copy.
  """
  if data_path:
    if input_pipeline.test_set_kind(config) == "synthetic":
      raise UserError("--data_path is for a real test set (Object Discovery / YouTube-Objects); "
                      "this model was scored on the embedded synthetic videos")
    config.data.test_root = data_path
  kind = metadata.get("kind")
  if kind == STUDENT:
    model = _student(metadata["student"], variables, config)
  elif kind == MULTINET:
    members = [_student(name, unpack_variables(variables, name), config)
               for name in metadata["students"]]
    model = MultiNetMasks(members, normalisation=metadata["normalisation"],
                          combine=metadata["combine"], scales=metadata.get("scales"))
  elif kind == EVALSEG:
    model = _evalseg(variables, config, metadata)
  else:
    raise UserError(f"segmentation artifact of unknown kind {kind!r} (expected one of "
                    f"{', '.join(KINDS)}); re-export it from a workdir of this vtd")
  return model, input_pipeline.load_eval_sets(config, input_pipeline.HELD_OUT_SPLITS)
