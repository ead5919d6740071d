"""What the segmentation evaluators score: mask predictors with one interface, `masks(test)`.

`vtd.evaluators.segmentation.Evaluator` calls `model.masks(test)` on a held-out set
(`input_pipeline.TestSet`) and scores the returned soft masks [N, s, s] (any scale: each is
min-max normalised before thresholding); None means the model cannot segment that set. The
predictors:
  VideoPCAMasks  the teacher: VideoPCA on the set's source videos (None for single images)
  StudentMasks   one trained student net on the set's images (raw outputs / target_scale)
  MultiNetMasks  the students' outputs mapped to [0, 1] masks and combined (pixel product)
  Recorded       masks computed earlier, by split (what the pipeline's stages saved)
`load_for_evaluation` rebuilds a student or a Multi-Net from an exported artifact for
`python -m vtd.evaluate`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vtd.errors import UserError
from vtd.segmentation import frames as frames_lib
from vtd.segmentation import input_pipeline
from vtd.segmentation import selection
from vtd.segmentation import students as students_lib
from vtd.segmentation import teacher as teacher_lib

STUDENT = "student"  # metadata["kind"] of an exported student artifact
MULTINET = "multinet"  # ... and of an exported Multi-Net (all its students' variables)


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
    return selection.multinet([selection.normalise(r, self._rule, s)
                               for r, s in zip(raw, self._scales)], self._combine)


def _student(name: str, variables: Any, config) -> StudentMasks:
  return StudentMasks(students_lib.build_student(name, config.students), variables,
                      size=config.data.image_size,
                      target_scale=config.student_training.target_scale)


def load_for_evaluation(variables: Any, config, metadata: dict[str, Any],
                        data_path: str | None = None) -> tuple[Any, dict[str, Any]]:
  """(predictor, {split: held-out set}) of an exported student or Multi-Net, for
  `python -m vtd.evaluate`.

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
    members = [_student(name, {k: v[name] for k, v in variables.items() if name in v}, config)
               for name in metadata["students"]]
    model = MultiNetMasks(members, normalisation=metadata["normalisation"],
                          combine=metadata["combine"], scales=metadata.get("scales"))
  else:
    raise UserError(f"segmentation artifact of unknown kind {kind!r} (expected {STUDENT} or "
                    f"{MULTINET}); re-export it from a workdir of this vtd")
  return model, input_pipeline.load_eval_sets(config, input_pipeline.HELD_OUT_SPLITS)
