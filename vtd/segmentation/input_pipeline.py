"""Data of a segmentation run: unlabelled training videos and an optional labelled test set.

Training videos (`config.data.videos`):
  ''      the embedded synthetic videos (vtd/segmentation/data/synthetic_video.py), with ground
          truth that is used only to *report* selection quality.
  <dir>   every video file and frame folder under <dir> (`video_io.scan_videos`), resized to
          `config.data.video_size` on read. Unreadable videos are skipped with a warning and
          counted (`config.data.on_unreadable=raise` stops instead); no ground truth. Files
          that decode fewer frames than their containers report are used, with a warning,
          and listed in the summary (results.json: train_data.incomplete_files).

Test set (`config.data.test_set`), only for the reported metrics:
  auto              synthetic with synthetic training videos, none with real ones
  synthetic         the embedded held-out synthetic videos: P, J, CorLoc on the splits of
                    `config.evals` ("val" to choose defaults, "test" to report);
                    the VideoPCA teacher is scored too (it needs the source videos)
  object_discovery  Object Discovery (`config.data.test_root`): P and J, averaged per class
                    then over classes (Table 1); single images, so no teacher row
  youtube_objects   YouTube-Objects annotated frames: CorLoc per class, then mean (Table 2);
                    the teacher is not scored (shot videos are not read)
  none              no test metrics (students, Multi-Net and EvalSeg-Net still train)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections
import numpy as np
from absl import logging

from vtd import config_lib
from vtd import fingerprint
from vtd.data import video_io
from vtd.errors import UserError
from vtd.segmentation.data import object_discovery
from vtd.segmentation.data import synthetic_video
from vtd.segmentation.data import youtube_objects

TEST_SETS = ("auto", "synthetic", "object_discovery", "youtube_objects", "none")
HELD_OUT_SPLITS = synthetic_video.HELD_OUT_SPLITS  # ("val", "test")


@dataclasses.dataclass
class TrainVideos:
  """Unlabelled training videos.

  Attributes:
    videos: [T_i, H, W, 3] uint8 RGB, one common H, W.
    gt_masks: [T_i, H, W] bool per video where the data have ground truth (synthetic), else
      None; only used to report selection quality.
    names: one id or path per video.
    skipped: (path, reason) for every unreadable video left out.
    incomplete: video files that decoded fewer frames than their containers report (used with
      the frames they have).
  """
  videos: list[np.ndarray]
  gt_masks: list[np.ndarray] | None
  names: list[str]
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  incomplete: list[video_io.IncompleteVideo] = dataclasses.field(default_factory=list)

  def summary(self) -> dict:
    return {"videos": len(self.videos), "frames": int(sum(len(v) for v in self.videos)),
            "skipped": len(self.skipped), "skipped_files": [p for p, _ in self.skipped],
            "incomplete": len(self.incomplete),
            "incomplete_files": [{"path": v.path, "decoded_frames": v.decoded,
                                  "reported_frames": v.reported} for v in self.incomplete]}


@dataclasses.dataclass
class TestSet:
  """Labelled test images at their original sizes.

  Attributes:
    name: which dataset ("synthetic/val", "synthetic/test", "object_discovery",
      "youtube_objects").
    images: N arrays [H_i, W_i, 3] uint8 RGB.
    masks: N bool [H_i, W_i] ground-truth foregrounds (P, J), or None.
    boxes: N float [K_i, 4] ground-truth boxes (x0, y0, x1, y1), K_i >= 1 (CorLoc), or None.
    class_names: N class names.
    average: "images" (mean over images) | "classes" (per class, then mean over classes: the
      Object Discovery / YouTube-Objects tables).
    videos, video_index, frame_index: the videos the images were taken from, for the
      VideoPCA teacher (synthetic only), else None.
    split: the held-out split it is ("val" | "test"; a real test set is "test").
  """
  name: str
  images: list[np.ndarray]
  masks: list[np.ndarray] | None
  boxes: list[np.ndarray] | None
  class_names: list[str]
  average: str
  videos: list[np.ndarray] | None = None
  video_index: np.ndarray | None = None
  frame_index: np.ndarray | None = None
  split: str = "test"

  def __len__(self) -> int:
    return len(self.images)


def _synthetic(config: ml_collections.ConfigDict) -> synthetic_video.SyntheticVideoDataset:
  spec = synthetic_video.SyntheticVideoSpec(**config.data.synthetic.to_dict())
  return synthetic_video.load_or_generate(spec, config.data.cache_dir or None)


def load_train_videos(config: ml_collections.ConfigDict) -> TrainVideos:
  """The training videos named by `config.data` (module docstring)."""
  if not config.data.videos:
    data = _synthetic(config)
    return TrainVideos(videos=[v.frames for v in data.train],
                       gt_masks=[v.masks for v in data.train],
                       names=[v.video_id for v in data.train])
  if config.data.on_unreadable not in ("skip", "raise"):
    raise UserError(f"config.data.on_unreadable must be skip|raise, got "
                    f"{config.data.on_unreadable!r}")
  paths = video_io.scan_videos(config.data.videos)
  if not paths:
    raise UserError(f"no video files or frame folders under config.data.videos="
                    f"{config.data.videos}")
  videos, skipped, incomplete = video_io.load_videos(
      paths, size=tuple(config.data.video_size), max_frames=config.data.video_max_frames or None,
      stride=config.data.video_stride, on_error=config.data.on_unreadable)
  if skipped:
    logging.warning("skipped %d of %d unreadable videos under %s", len(skipped), len(paths),
                    config.data.videos)
  if not videos:
    raise UserError(f"none of the {len(paths)} videos under {config.data.videos} could be "
                    f"read; first error: {skipped[0][1]}")
  bad = {p for p, _ in skipped}
  return TrainVideos(videos=videos, gt_masks=None, names=[p for p in paths if p not in bad],
                     skipped=skipped, incomplete=incomplete)


def _classes(config: ml_collections.ConfigDict, default: tuple[str, ...]) -> tuple[str, ...]:
  return tuple(config_lib.parse_list(config.data.test_classes)) or default


def _synthetic_split(data: synthetic_video.SyntheticVideoDataset, split: str) -> TestSet:
  videos, images = data.held_out(split)
  return TestSet(name=f"synthetic/{split}", images=list(images.images), masks=list(images.masks),
                 boxes=images.gt_boxes(), class_names=list(images.class_names),
                 average="images", videos=[v.frames for v in videos],
                 video_index=images.video_index, frame_index=images.frame_index, split=split)


def load_eval_sets(config: ml_collections.ConfigDict, splits: Sequence[str] = ("val", "test")
                   ) -> dict[str, TestSet]:
  """The held-out image sets of `splits` ("val", "test") that the data have, by split name.

  The synthetic data have both ("val" to choose defaults, "test" to report); a real test set
  (`config.data.test_set`) is "test" and has no validation split; "none" has neither. The
  splits come from the evaluators (`config.evals.<name>.split`).
  """
  bad = [s for s in splits if s not in HELD_OUT_SPLITS]
  if bad:
    raise UserError(f"held-out split(s) {bad} of config.evals are not one of "
                    f"{HELD_OUT_SPLITS}; fix config.evals.<name>.split")
  kind = test_set_kind(config)
  if kind == "none" or not splits:
    return {}
  if kind == "synthetic":
    data = _synthetic(config)
    return {split: _synthetic_split(data, split) for split in dict.fromkeys(splits)}
  if "test" not in splits:
    return {}
  if not config.data.test_root:
    raise UserError(f"config.data.test_set={kind} needs config.data.test_root")
  if kind == "object_discovery":
    items = object_discovery.load_object_discovery(
        config.data.test_root, _classes(config, object_discovery.CLASSES_100))
    if not items:
      raise UserError(f"no Object Discovery images under {config.data.test_root}")
    return {"test": TestSet(name=kind, images=[x.image for x in items],
                            masks=[x.mask for x in items], boxes=None,
                            class_names=[x.class_name for x in items], average="classes")}
  frames = youtube_objects.load_youtube_objects(
      config.data.test_root, classes=_classes(config, youtube_objects.CLASSES),
      split=config.data.test_split)
  if not frames:
    raise UserError(f"no annotated YouTube-Objects frames under {config.data.test_root}")
  return {"test": TestSet(name=kind, images=[x.image for x in frames], masks=None,
                          boxes=[x.boxes for x in frames],
                          class_names=[x.class_name for x in frames], average="classes")}


def test_set_kind(config: ml_collections.ConfigDict) -> str:
  """`config.data.test_set` with "auto" resolved (synthetic | object_discovery |
  youtube_objects | none)."""
  kind = config.data.test_set
  if kind not in TEST_SETS:
    raise UserError(f"config.data.test_set must be one of {', '.join(TEST_SETS)}, got {kind!r}")
  if kind == "auto":
    kind = "none" if config.data.videos else "synthetic"
  return kind


def data_fingerprint(config: ml_collections.ConfigDict) -> dict:
  """What the training videos are, for stage provenance: the generator's identity (spec +
  version) for the embedded videos, file fingerprints (sizes, mtimes, small-file hashes) for
  a folder of real videos."""
  if not config.data.videos:
    spec = synthetic_video.SyntheticVideoSpec(**config.data.synthetic.to_dict())
    return {"generator": "synthetic_video", "key": spec.cache_key()}
  return {"files": fingerprint.paths_fingerprint([config.data.videos])}


def load_test_set(config: ml_collections.ConfigDict) -> TestSet | None:
  """The "test" set of `load_eval_sets`, or None when the run scores none."""
  return load_eval_sets(config, ("test",)).get("test")
