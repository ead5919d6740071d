"""Reading real videos, video files or folders of frames, as [T, H, W, 3] uint8 RGB arrays.

The segmentation teacher (VideoPCA, `segmentation.md` §1) runs on whole videos or chunks of
them, so every reader returns all (or the first `max_frames`, every `stride`-th) frames of one
video in memory.

* **Video files** (`VIDEO_EXTENSIONS`, any case) are decoded with OpenCV's `VideoCapture`
  (FFmpeg backend), BGR -> RGB.
* **Frame folders**: a folder directly holding images (`FRAME_EXTENSIONS`, any case; hidden
  files ignored) is one video, frames in natural order of the numbers in their names
  ("f2.jpg" before "f10.jpg"; names without numbers sort by text).
* **Resizing**: `size=(H, W)` resizes every frame with `cv2.INTER_AREA` (the right filter when
  shrinking, the usual case); None keeps the native size, which must then be the same for all
  frames of a video.
* **Errors**: a missing, empty, corrupt or unsupported file, or one from which no frame can be
  decoded, is a `UserError` naming the file. In a dataset run `load_videos(on_error="skip")`
  logs a warning per unreadable video and returns them, so the caller can report the count.
* **Completeness**: a truncated or damaged file often decodes only its first part (a half mp4:
  223 of 456 frames) without any decoder error. When decoding stops before the frame count
  the container reports (`cv2.CAP_PROP_FRAME_COUNT`), a warning names the file and both
  numbers, and `load_videos` returns it as an `IncompleteVideo` (the caller records it). The
  decoded frames are still used. Not checked when `max_frames` stopped the decoding, or when
  the container reports no count.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import cv2
import numpy as np
from absl import logging

from vtd.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ogv", ".3gp")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
Size = tuple[int, int] | None


@dataclasses.dataclass(frozen=True)
class IncompleteVideo:
  """A video file whose decoding stopped early (module docstring: completeness).

  Attributes:
    path: the file.
    decoded: frames decoded (before any stride), fewer than `reported`.
    reported: frames the container reports (`cv2.CAP_PROP_FRAME_COUNT`).
  """
  path: str
  decoded: int
  reported: int

  def warning(self) -> str:
    return (f"video file {self.path}: decoded {self.decoded} of the {self.reported} frames its "
            f"container reports (truncated or damaged?); using the {self.decoded} decoded ones")


def natural_key(name: str) -> tuple:
  """Sort key ordering digit runs by value: "f2" < "f10" (ties broken by the raw text)."""
  parts = re.split(r"(\d+)", name)
  return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts), name


def _check_args(size: Size, max_frames: int | None, stride: int) -> tuple[int, int] | None:
  if stride < 1:
    raise UserError(f"stride must be >= 1, got {stride}")
  if max_frames is not None and max_frames < 1:
    raise UserError(f"max_frames must be >= 1 or None, got {max_frames}")
  if size is None:
    return None
  h, w = (int(v) for v in size)
  if h <= 0 or w <= 0:
    raise UserError(f"size must be a positive (H, W), got {size}")
  return h, w


def _finish(frames: list[np.ndarray], size: tuple[int, int] | None, path: str) -> np.ndarray:
  """BGR frames -> [T, H, W, 3] RGB uint8, resized to `size` if given."""
  out = []
  for bgr in frames:
    if bgr.ndim == 2:  # Grey images (some frame folders).
      bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    rgb = cv2.cvtColor(bgr[..., :3], cv2.COLOR_BGR2RGB)
    if size is not None and rgb.shape[:2] != size:
      rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    out.append(rgb)
  shapes = sorted({f.shape for f in out})
  if len(shapes) > 1:
    raise UserError(f"frames of {path} have different sizes {shapes[:3]}; pass size=(H, W)")
  return np.stack(out).astype(np.uint8, copy=False)


def read_video(path: str, size: Size = None, max_frames: int | None = None,
               stride: int = 1) -> np.ndarray:
  """Decodes a video file (a warning if it decodes fewer frames than its container reports).

  Args:
    path: a video file (any format the installed OpenCV/FFmpeg decodes).
    size: optional (H, W) to resize every frame to (INTER_AREA).
    max_frames: keep at most this many frames (after striding); None: all.
    stride: keep frames 0, stride, 2 * stride, ...

  Returns:
    [T, H, W, 3] uint8 RGB, T >= 1.

  Raises:
    UserError: the file is missing, empty, corrupt or unsupported, or no frame decodes.
  """
  frames, incomplete = _decode_video(path, size, max_frames, stride)
  if incomplete is not None:
    logging.warning("%s", incomplete.warning())
  return frames


def _decode_video(path: str, size: Size, max_frames: int | None, stride: int
                  ) -> tuple[np.ndarray, IncompleteVideo | None]:
  """`read_video`'s frames, and an IncompleteVideo if decoding stopped before the reported end."""
  size = _check_args(size, max_frames, stride)
  if not os.path.isfile(path):
    raise UserError(f"video file not found: {path}")
  if os.path.getsize(path) == 0:
    raise UserError(f"empty video file (0 bytes): {path}")
  frames, reported = [], 0
  capture = cv2.VideoCapture(path)
  try:
    if not capture.isOpened():
      raise UserError(f"cannot open video file (corrupt or unsupported format): {path}")
    reported = int(max(capture.get(cv2.CAP_PROP_FRAME_COUNT), 0))  # 0 or -1: unknown.
    index, ended = 0, False
    while max_frames is None or len(frames) < max_frames:
      if index % stride:
        ok = capture.grab()  # Skipped frames: no colour conversion or copy.
      else:
        ok, frame = capture.read()
        if ok and frame is not None and frame.size:
          frames.append(frame)
      if not ok:
        ended = True  # The end of the stream, or the first frame that does not decode.
        break
      index += 1
  except cv2.error as e:  # Decoder failures inside OpenCV surface as cv2.error.
    raise UserError(f"cannot decode video file {path}: {str(e).strip()}") from None
  finally:
    capture.release()
  if not frames:
    count = f" (its container reports {reported} frames)" if reported else ""
    raise UserError(f"no frames could be decoded from video file{count} (corrupt, truncated or "
                    f"unsupported codec): {path}")
  incomplete = IncompleteVideo(path, index, reported) if ended and index < reported else None
  return _finish(frames, size, path), incomplete


def list_frames(path: str) -> list[str]:
  """The frame image files directly in a folder, in natural order (may be empty)."""
  names = [n for n in os.listdir(path)
           if not n.startswith(".") and os.path.splitext(n)[1].lower() in FRAME_EXTENSIONS
           and os.path.isfile(os.path.join(path, n))]
  return [os.path.join(path, n) for n in sorted(names, key=natural_key)]


def read_frame_folder(path: str, size: Size = None, max_frames: int | None = None,
                      stride: int = 1) -> np.ndarray:
  """Reads a folder of frame images as one video (same arguments and result as `read_video`).

  Raises:
    UserError: the folder is missing or holds no frame images, or a frame is unreadable (the
      message names the frame file).
  """
  size = _check_args(size, max_frames, stride)
  if not os.path.isdir(path):
    raise UserError(f"frame folder not found: {path}")
  files = list_frames(path)[::stride][:max_frames]
  if not files:
    raise UserError(f"no frame images ({', '.join(FRAME_EXTENSIONS)}) in folder: {path}")
  frames = []
  for file in files:
    image = cv2.imread(file, cv2.IMREAD_COLOR) if os.path.getsize(file) else None
    if image is None or image.size == 0:
      raise UserError(f"cannot read frame image (empty, corrupt or unsupported): {file}")
    frames.append(image)
  return _finish(frames, size, path)


def open_any(path: str, size: Size = None, max_frames: int | None = None,
             stride: int = 1) -> np.ndarray:
  """`read_frame_folder` for a directory, `read_video` for a file; UserError if neither."""
  if os.path.isdir(path):
    return read_frame_folder(path, size, max_frames, stride)
  if os.path.isfile(path):
    return read_video(path, size, max_frames, stride)
  raise UserError(f"video not found (neither a file nor a frame folder): {path}")


def scan_videos(root: str, recursive: bool = True,
                extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[str]:
  """Lists the videos under `root`: video files and frame folders.

  Args:
    root: a directory.
    recursive: also look in sub-directories (hidden ones are skipped).
    extensions: video file extensions (compared case-insensitively).

  Returns:
    Paths in natural order of their path relative to `root`. A folder directly holding frame
    images is one video (`root` itself included); video files are listed wherever they are.

  Raises:
    UserError: `root` is not a directory.
  """
  if not os.path.isdir(root):
    raise UserError(f"video folder not found: {root}")
  exts = tuple(e.lower() for e in extensions)
  found = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = [d for d in subdirs if not d.startswith(".")] if recursive else []
    visible = [f for f in files if not f.startswith(".")]
    if any(os.path.splitext(f)[1].lower() in FRAME_EXTENSIONS for f in visible):
      found.append(directory)
    found += [os.path.join(directory, f) for f in visible if os.path.splitext(f)[1].lower() in exts]
  parts = lambda p: [natural_key(x) for x in os.path.relpath(p, root).split(os.sep)]
  return sorted(found, key=parts)


def load_videos(paths: Sequence[str], size: Size = None, max_frames: int | None = None,
                stride: int = 1, on_error: str = "skip"
                ) -> tuple[list[np.ndarray], list[tuple[str, str]], list[IncompleteVideo]]:
  """Reads several videos with `open_any`, skipping (or raising on) unreadable ones.

  Args:
    paths: video files and/or frame folders (e.g. from `scan_videos`).
    size, max_frames, stride: as for `read_video`.
    on_error: "skip": log a warning naming the file and the reason and go on; "raise":
      re-raise the `UserError`.

  Returns:
    (videos, skipped, incomplete): the [T, H, W, 3] uint8 arrays of the readable paths, in
    input order; (path, reason) for each skipped one; and the video files among the readable
    ones that decoded fewer frames than their containers report (each also logged).
  """
  if on_error not in ("skip", "raise"):
    raise UserError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
  _check_args(size, max_frames, stride)  # Bad arguments are not a property of one video.
  videos, skipped, incomplete = [], [], []
  for path in paths:
    try:
      if os.path.isfile(path):
        frames, short = _decode_video(path, size, max_frames, stride)
        if short is not None:
          logging.warning("%s", short.warning())
          incomplete.append(short)
      else:
        frames = open_any(path, size, max_frames, stride)
      videos.append(frames)
    except UserError as e:
      if on_error == "raise":
        raise
      logging.warning("skipping unreadable video %s: %s", path, e)
      skipped.append((path, str(e)))
  return videos, skipped, incomplete
