"""Reader for YouTube-Objects frames and their ground-truth boxes (v1.0 and v2.2).

The reference (`segmentation.md` §5.2) fixes the two versions (v1: Prest et al. 2012; v2.2:
Kalogeiton et al. 2016), the 10 classes and the CorLoc protocol; their on-disk formats are NOT
FOUND there. This reader follows the released layouts as public code reads them:

  v1.0:  <root>/<class>/data/<video>/shots/<shot>/frame<NNNN>.jpg
         <root>/<class>/data/<video>/shots/<shot>/frame<NNNN>.jpg_sticks.mat
             variable `coor`: a cell array with one [x0 y0 x1 y1] box per cell
         <root>/<class>/sets/train.txt, test.txt: video folder names, one a line
  v2.2:  <root>/<class>/<NNNNNNNN>.jpg             frames numbered per class (8 digits)
         <root>/GroundTruth/<class>/bb_gtTraining_<class>.mat  variable `bb_gtTraining`
         <root>/GroundTruth/<class>/bb_gtTest_<class>.mat      variable `bb_gtTest`
             a struct array, one element per annotated frame: the frame id
             "<class><NNNNNNNN>" and a [K, 4] array of [x0 y0 x1 y1] boxes
         <root>/Ranges/ranges_<class>.mat   variable `ranges` [3, S]: first frame, last
             frame and video number of each shot (optional here: gives video and shot ids)

Decisions (not from the papers; each is a knob or documented):
* Version: `version="auto"` picks v2.2 when `<root>/GroundTruth` exists, else v1 when a
  `<root>/<class>/data` folder exists. `GroundTruth/GroundTruth/<class>` (an unzip artefact
  seen in the wild) is accepted.
* Records are parsed by position, not by field name: the first string of a v2.2 element is
  the frame id and the first numeric array its boxes; both struct arrays and N x 2 cell
  arrays work. Box arrays of any shape with a multiple of 4 values are read as [K, 4].
* Split: "all" (default) reads every annotated frame, both v2.2 files / all v1 videos; this
  matches the annotation counts the reference recalls (v1 ~1.4 k, v2.2 ~7 k boxes, §5.2).
  "train" / "test" read one v2.2 file or the videos listed in the v1 `sets/<split>.txt`.
* Box convention: boxes are returned as (x0, y0, x1, y1) in 0-based pixel-edge coordinates
  with exclusive ends, the convention of `vtd.evaluators.segmentation`. The files are read as
  MATLAB 1-based inclusive pixel boxes (`box_convention="matlab"`, default [inferred]), so
  (x0, y0, x1, y1) -> (x0 - 1, y0 - 1, x1, y1); `box_convention="raw"` keeps the numbers.
* Sanitising (`sanitize=True`): reversed corners are swapped (v1 has at least one) and
  negative coordinates clipped to 0; when the frame is loaded, boxes are also clipped to its
  size (v1 has a box wider than its frame). A file without any box contributes no frame.
* Frames are RGB uint8. `resize=(H, W)` rescales the frame and its boxes together; CorLoc is
  meant at the original frame size (§8 #17), so keep None for evaluation.
* v2.2 video and shot ids come from `Ranges` (video "%04d", shot "%03d" counted from 1 within
  its video, in file order); without the file they are None.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from vtd.data import file_errors
from vtd.data import mat_files
from vtd.segmentation.data.object_discovery import read_image_rgb, resize_image
from vtd.errors import UserError

CLASSES = ("aeroplane", "bird", "boat", "car", "cat", "cow", "dog", "horse", "motorbike",
           "train")
_V1_SUFFIX = "_sticks.mat"
_V22_VARS = {"train": "bb_gtTraining", "test": "bb_gtTest"}


@dataclasses.dataclass(frozen=True)
class YTOAnnotation:
  """One annotated frame, before reading pixels.

  Attributes:
    class_name: one of CLASSES (the label of every box of the frame).
    frame_id: "<class>/<video>/<shot>/<frame>" (v1) or "<class>/<NNNNNNNN>" (v2.2).
    image_path: absolute path of the frame.
    boxes: [K, 4] float64 ground-truth boxes (x0, y0, x1, y1), exclusive ends, K >= 1.
    video, shot: ids, None where unknown.
    split: "train" / "test", None where unknown.
    version: "v1" or "v2.2".
  """
  class_name: str
  frame_id: str
  image_path: str
  boxes: np.ndarray
  video: str | None
  shot: str | None
  split: str | None
  version: str


@dataclasses.dataclass
class YTOFrame:
  """A loaded annotated frame: `image` [H, W, 3] uint8 RGB plus the `YTOAnnotation` fields,
  with `boxes` clipped to the frame (if sanitising) and scaled with any resize."""
  image: np.ndarray
  boxes: np.ndarray
  class_name: str
  frame_id: str
  image_path: str
  video: str | None
  shot: str | None
  split: str | None
  version: str


def detect_version(root: str, classes: Sequence[str] = CLASSES) -> str:
  """"v2.2" if `<root>/GroundTruth` exists, "v1" if some `<root>/<class>/data` does."""
  if os.path.isdir(os.path.join(root, "GroundTruth")):
    return "v2.2"
  if any(os.path.isdir(os.path.join(root, c, "data")) for c in classes):
    return "v1"
  raise UserError(f"cannot tell the YouTube-Objects version of {root}: expected GroundTruth/ "
                  "(v2.2) or <class>/data/ (v1)")


def _loadmat(path: str, variable: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise UserError(f"annotation file not found: {path}")
  # Structure-checked first: scipy's reader crashes the process on some damaged files.
  contents = mat_files.load_mat(path, "MATLAB annotation file", "copy it again from the "
                                "YouTube-Objects release")
  if variable not in contents:
    names = sorted(k for k in contents if not k.startswith("__"))
    raise UserError(f"annotation file {path} has no variable {variable!r} (has {names})")
  return contents[variable]


def _is_string(x) -> bool:
  return isinstance(x, str) or (isinstance(x, np.ndarray) and x.dtype.kind in "US"
                                and x.size > 0)


def _as_string(x) -> str:
  return x if isinstance(x, str) else str(np.asarray(x).ravel()[0]).strip()


def _numeric_leaves(x) -> list[np.ndarray]:
  """Numeric arrays inside (nested) MATLAB cells or lists, in order."""
  if isinstance(x, (list, tuple)):
    return [leaf for item in x for leaf in _numeric_leaves(item)]
  if isinstance(x, (int, float, np.number)) and not isinstance(x, bool):
    return [np.asarray(x)]
  if isinstance(x, np.ndarray) and x.dtype == object:
    return [leaf for item in x.ravel() for leaf in _numeric_leaves(item)]
  if isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
    return [x]
  return []


def _boxes_from(value, path: str) -> np.ndarray:
  leaves = [np.asarray(v, np.float64).ravel() for v in _numeric_leaves(value)]
  flat = np.concatenate(leaves) if leaves else np.zeros(0)
  if flat.size % 4:
    raise UserError(f"boxes in {path} do not come in groups of 4 numbers ({flat.size} values)")
  boxes = flat.reshape(-1, 4)
  if not np.isfinite(boxes).all():
    raise UserError(f"non-finite box coordinates in {path}")
  return boxes


def _convert_boxes(boxes: np.ndarray, convention: str, sanitize: bool) -> np.ndarray:
  boxes = boxes.copy()
  if sanitize:  # Order the corners first: the 1-based shift applies to the left/top edges.
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                            np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
  if convention == "matlab":
    boxes[:, :2] -= 1.0
  return np.maximum(boxes, 0.0) if sanitize else boxes


def _records(array: np.ndarray, path: str) -> list[tuple[str, object]]:
  """(frame id, raw boxes) for each element of a v2.2 bb_gt struct or cell array."""
  if array.dtype.names:
    elements = [[rec[name] for name in array.dtype.names] for rec in array.ravel()]
  elif array.dtype == object and array.ndim == 2 and array.shape[1] == 2 and array.size and \
      _is_string(array[0, 0]):
    elements = [list(row) for row in array]  # N x 2 cell: {id, boxes} per row.
  elif array.dtype == object:
    elements = [list(np.asarray(e, dtype=object).ravel()) for e in array.ravel()]
  else:
    raise UserError(f"unexpected annotation layout in {path}: {array.dtype} {array.shape}")
  out = []
  for i, fields in enumerate(elements):
    ids = [f for f in fields if _is_string(f)]
    values = [f for f in fields if not _is_string(f)]
    if not ids:
      raise UserError(f"annotation {i} in {path} has no frame id")
    out.append((_as_string(ids[0]), values))
  return out


def _read_split_file(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise UserError(f"split file not found: {path}")
  try:
    with open(path, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"cannot read split file {path} ({file_errors.describe(e)}); it must list "
                    f"one video folder name per line") from e


def _list_v1(root: str, cls: str, split: str, convention: str, sanitize: bool):
  class_dir = os.path.join(root, cls)
  data_dir = os.path.join(class_dir, "data")
  if not os.path.isdir(data_dir):
    raise UserError(f"YouTube-Objects v1 folder not found: {data_dir}")
  split_of = {}
  for name in ("train", "test"):
    path = os.path.join(class_dir, "sets", f"{name}.txt")
    if split == name or (split == "all" and os.path.isfile(path)):
      split_of.update({v: name for v in _read_split_file(path)})
  if split == "all":
    videos = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)))
  else:
    videos = [v for v, s in split_of.items() if s == split]
  out = []
  for video in videos:
    shots_dir = os.path.join(data_dir, video, "shots")
    if not os.path.isdir(shots_dir):
      raise UserError(f"YouTube-Objects v1 shots folder not found: {shots_dir}")
    for shot in sorted(os.listdir(shots_dir)):
      shot_dir = os.path.join(shots_dir, shot)
      if not os.path.isdir(shot_dir):
        continue
      for name in sorted(os.listdir(shot_dir)):
        if not name.endswith(_V1_SUFFIX):
          continue
        ann_path = os.path.join(shot_dir, name)
        image_path = ann_path[:-len(_V1_SUFFIX)]
        if not os.path.isfile(image_path):
          raise UserError(f"frame {image_path} of annotation {ann_path} not found")
        boxes = _boxes_from(_loadmat(ann_path, "coor"), ann_path)
        if not len(boxes):
          continue
        frame = os.path.splitext(os.path.basename(image_path))[0]
        out.append(YTOAnnotation(
            class_name=cls, frame_id=f"{cls}/{video}/{shot}/{frame}", image_path=image_path,
            boxes=_convert_boxes(boxes, convention, sanitize), video=video, shot=shot,
            split=split_of.get(video), version="v1"))
  return out


def _gt_dir(root: str, cls: str) -> str:
  for base in (os.path.join(root, "GroundTruth"), os.path.join(root, "GroundTruth",
                                                               "GroundTruth")):
    if os.path.isdir(os.path.join(base, cls)):
      return os.path.join(base, cls)
  raise UserError(f"YouTube-Objects v2.2 ground-truth folder not found: "
                  f"{os.path.join(root, 'GroundTruth', cls)}")


def _shot_lookup(root: str, cls: str):
  """frame number -> (video, shot) from Ranges/ranges_<cls>.mat, or None without the file."""
  path = os.path.join(root, "Ranges", f"ranges_{cls}.mat")
  if not os.path.isfile(path):
    return None
  ranges = _loadmat(path, "ranges")
  if ranges.dtype.kind not in "biuf" or ranges.ndim != 2 or ranges.shape[0] != 3 or \
      not (np.abs(ranges) < 2**53).all():  # Frame numbers: finite integers.
    raise UserError(f"{path}: `ranges` must be a numeric [3, S] array of frame numbers (first "
                    f"frame, last frame, video), got {ranges.dtype} {ranges.shape}")
  starts, ends, videos = ranges.astype(np.int64)
  shot_numbers, seen = [], {}
  for v in videos:
    seen[v] = seen.get(v, 0) + 1
    shot_numbers.append(seen[v])

  def lookup(frame: int):
    hits = np.flatnonzero((starts <= frame) & (frame <= ends))
    if not hits.size:
      return None, None
    s = int(hits[0])
    return f"{int(videos[s]):04d}", f"{shot_numbers[s]:03d}"
  return lookup


def _list_v22(root: str, cls: str, split: str, convention: str, sanitize: bool):
  gt_dir = _gt_dir(root, cls)
  lookup = _shot_lookup(root, cls)
  out = []
  for name in ("train", "test"):
    if split not in ("all", name):
      continue
    var = _V22_VARS[name]
    path = os.path.join(gt_dir, f"{var}_{cls}.mat")
    for frame_key, values in _records(_loadmat(path, var), path):
      if not frame_key.startswith(cls):
        raise UserError(f"frame id {frame_key!r} in {path} does not start with {cls!r}")
      stem = frame_key[len(cls):].lstrip("/\\")
      file_name = stem if os.path.splitext(stem)[1] else f"{stem}.jpg"
      image_path = os.path.join(root, cls, file_name)
      if not os.path.isfile(image_path):
        raise UserError(f"frame {image_path} (id {frame_key!r} in {path}) not found")
      boxes = _boxes_from(values, path)
      if not len(boxes):
        continue
      video = shot = None
      digits = os.path.splitext(os.path.basename(stem))[0]
      if lookup is not None and digits.isdigit():
        video, shot = lookup(int(digits))
      out.append(YTOAnnotation(
          class_name=cls, frame_id=f"{cls}/{os.path.splitext(stem)[0]}", image_path=image_path,
          boxes=_convert_boxes(boxes, convention, sanitize), video=video, shot=shot,
          split=name, version="v2.2"))
  return out


def list_youtube_objects(root: str, version: str = "auto", classes: Sequence[str] = CLASSES,
                         split: str = "all", box_convention: str = "matlab",
                         sanitize: bool = True) -> list[YTOAnnotation]:
  """Lists the annotated frames with their boxes (frames are checked to exist, not read).

  Args:
    root: dataset root (module docstring).
    version: "auto", "v1" or "v2.2".
    classes: class folder names, default all 10.
    split: "all", "train" or "test".
    box_convention: "matlab" (1-based inclusive in the files) or "raw".
    sanitize: swap reversed corners and clip negative coordinates.

  Returns:
    Annotations in class order, then file order.

  Raises:
    UserError: a missing folder, annotation, split file or frame, or an unreadable
      annotation file (the message names the path).
  """
  if version not in ("auto", "v1", "v2.2"):
    raise UserError(f"version must be 'auto', 'v1' or 'v2.2', got {version!r}")
  if split not in ("all", "train", "test"):  # config.data.test_split in a segmentation run.
    raise UserError(f"YouTube-Objects split must be 'all', 'train' or 'test', got {split!r}")
  if box_convention not in ("matlab", "raw"):
    raise UserError(f"box_convention must be 'matlab' or 'raw', got {box_convention!r}")
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise UserError(f"YouTube-Objects root folder not found: {root}")
  if version == "auto":
    version = detect_version(root, classes)
  reader = _list_v1 if version == "v1" else _list_v22
  return [a for cls in classes for a in reader(root, cls, split, box_convention, sanitize)]


def load_annotation(ann: YTOAnnotation, resize: tuple[int, int] | None = None,
                    sanitize: bool = True) -> YTOFrame:
  """Reads the frame of `ann`; boxes are clipped to it (if `sanitize`) and follow `resize`."""
  image = read_image_rgb(ann.image_path)
  h, w = image.shape[:2]
  boxes = np.asarray(ann.boxes, np.float64).copy()
  if sanitize:
    boxes = np.minimum(boxes, np.array([w, h, w, h], np.float64))
  if resize is not None:
    image = resize_image(image, resize)
    new_h, new_w = image.shape[:2]
    boxes = boxes * np.array([new_w / w, new_h / h, new_w / w, new_h / h])
  return YTOFrame(image=image, boxes=boxes, class_name=ann.class_name, frame_id=ann.frame_id,
                  image_path=ann.image_path, video=ann.video, shot=ann.shot, split=ann.split,
                  version=ann.version)


def load_youtube_objects(root: str, version: str = "auto", classes: Sequence[str] = CLASSES,
                         split: str = "all", box_convention: str = "matlab",
                         sanitize: bool = True, resize: tuple[int, int] | None = None
                         ) -> list[YTOFrame]:
  """`list_youtube_objects` then `load_annotation` for every frame (all frames in memory)."""
  return [load_annotation(a, resize, sanitize)
          for a in list_youtube_objects(root, version, classes, split, box_convention, sanitize)]
