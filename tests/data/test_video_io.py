import os
import re
import struct

import cv2
import numpy as np
import pytest
from absl import logging

from vtd.data import video_io
from vtd.errors import UserError

H, W, T = 48, 64, 12


def _content(t: int) -> np.ndarray:
  """Frame t: smooth RGB gradients plus a bright square moving right (compression-friendly)."""
  yy, xx = np.mgrid[:H, :W]
  rgb = np.stack([4 * xx, 5 * yy, np.full_like(xx, 40 + 10 * t)], -1)
  rgb[16:32, 4 * t:4 * t + 16] = 250
  return np.clip(rgb, 0, 255).astype(np.uint8)


def _write_video(path: str, fourcc: str, frames: np.ndarray) -> None:
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10.0, (W, H))
  if not writer.isOpened():
    pytest.skip(f"this OpenCV build cannot write {fourcc} to {os.path.basename(path)}")
  for rgb in frames:
    writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  writer.release()


@pytest.fixture(scope="module")
def content():
  return np.stack([_content(t) for t in range(T)])


@pytest.fixture(scope="module", params=[("mp4", "mp4v"), ("avi", "MJPG")], ids=["mp4", "avi"])
def video(request, tmp_path_factory, content):
  ext, fourcc = request.param
  path = str(tmp_path_factory.mktemp(ext) / f"clip.{ext}")
  _write_video(path, fourcc, content)
  return path


def test_read_video_shape_and_content(video, content):
  frames = video_io.read_video(video)
  assert frames.shape == (T, H, W, 3) and frames.dtype == np.uint8
  err = np.abs(frames.astype(float) - content.astype(float)).mean()
  assert err < 8, err  # Lossy codecs: close, not equal.


def test_read_video_options(video, content):
  frames = video_io.read_video(video, size=(24, 32), max_frames=4, stride=3)
  assert frames.shape == (4, 24, 32, 3)
  expected = np.stack([cv2.resize(content[t], (32, 24), interpolation=cv2.INTER_AREA)
                       for t in (0, 3, 6, 9)])
  assert np.abs(frames.astype(float) - expected).mean() < 8
  assert video_io.read_video(video, stride=5).shape[0] == 3  # Frames 0, 5, 10.
  with pytest.raises(UserError, match="stride"):
    video_io.read_video(video, stride=0)


@pytest.mark.parametrize("ext,fourcc", [("mp4", "mp4v"), ("avi", "MJPG")])
def test_rgb_order(tmp_path, ext, fourcc):
  red = np.zeros((3, H, W, 3), np.uint8)
  red[..., 0] = 255
  path = str(tmp_path / f"red.{ext}")
  _write_video(path, fourcc, red)
  mean = video_io.open_any(path).reshape(-1, 3).mean(0)
  assert mean[0] > 230 and mean[1] < 25 and mean[2] < 25, mean


def _write_folder(folder, content, ext=".png", name="frame{}"):
  os.makedirs(folder, exist_ok=True)
  for t, rgb in enumerate(content):
    cv2.imwrite(os.path.join(folder, name.format(t) + ext), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_frame_folder_natural_order_and_formats(tmp_path, content):
  folder = str(tmp_path / "frames")
  _write_folder(folder, content, ".png")  # frame0 .. frame11: "frame10" sorts after "frame9".
  (tmp_path / "frames" / "notes.txt").write_text("not a frame")
  (tmp_path / "frames" / ".hidden.png").write_bytes(b"")
  frames = video_io.read_frame_folder(folder)
  np.testing.assert_array_equal(frames, content)  # PNG is lossless: exact, in order, RGB.
  assert video_io.open_any(folder, max_frames=3, stride=4).shape == (3, H, W, 3)
  np.testing.assert_array_equal(video_io.open_any(folder, stride=4), content[::4])
  jpg = str(tmp_path / "jpg")
  _write_folder(jpg, content[:3], ".JPG", "{}")
  _write_folder(jpg, content[3:5], ".bmp", "1{}")  # 10.bmp, 11.bmp after 2.JPG.
  frames = video_io.read_frame_folder(jpg, size=(24, 32))
  assert frames.shape == (5, 24, 32, 3)
  assert np.abs(frames[4].astype(float) - cv2.resize(content[4], (32, 24),
                                                     interpolation=cv2.INTER_AREA)).mean() < 1


def test_natural_key():
  names = ["f10.jpg", "f9.jpg", "f1.jpg", "f100.jpg", "a.jpg"]
  assert sorted(names, key=video_io.natural_key) == ["a.jpg", "f1.jpg", "f9.jpg", "f10.jpg",
                                                      "f100.jpg"]


def test_unreadable_inputs_name_the_file(tmp_path):
  corrupt = tmp_path / "corrupt.mp4"
  corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
  empty = tmp_path / "empty.avi"
  empty.write_bytes(b"")
  no_frames = tmp_path / "no_frames.avi"  # A valid container with zero frames.
  _write_video(str(no_frames), "MJPG", np.zeros((0, H, W, 3), np.uint8))
  with pytest.raises(UserError, match="no frames could be decoded"):
    video_io.read_video(str(no_frames))
  for path in (corrupt, empty, no_frames, tmp_path / "missing.mp4"):
    with pytest.raises(UserError, match=re.escape(str(path))):
      video_io.open_any(str(path))
  folder = tmp_path / "bad_frames"
  _write_folder(str(folder), [_content(0)], ".png")
  (folder / "frame1.png").write_bytes(b"garbage")
  with pytest.raises(UserError, match=re.escape(str(folder / "frame1.png"))):
    video_io.read_frame_folder(str(folder))
  (tmp_path / "no_frames").mkdir()
  with pytest.raises(UserError, match="no frame images"):
    video_io.open_any(str(tmp_path / "no_frames"))


def test_scan_and_load_skip_unreadable(tmp_path, content, monkeypatch):
  root = tmp_path / "data"
  (root / "b").mkdir(parents=True)
  _write_video(str(root / "b" / "clip10.avi"), "MJPG", content)
  _write_video(str(root / "b" / "clip9.mp4"), "mp4v", content[:5])
  _write_folder(str(root / "a" / "shot1"), content[:4])
  (root / "b" / "broken.MP4").write_bytes(np.random.default_rng(1).bytes(2048))
  (root / "b" / "readme.txt").write_text("ignored")
  (root / ".cache").mkdir()
  (root / ".cache" / "x.mp4").write_bytes(b"")
  paths = video_io.scan_videos(str(root))
  rel = [os.path.relpath(p, root) for p in paths]
  assert rel == ["a/shot1", "b/broken.MP4", "b/clip9.mp4", "b/clip10.avi"]
  assert video_io.scan_videos(str(root), recursive=False) == []

  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  videos, skipped, incomplete = video_io.load_videos(paths, size=(24, 32))
  assert [v.shape for v in videos] == [(4, 24, 32, 3), (5, 24, 32, 3), (T, 24, 32, 3)]
  assert [p for p, _ in skipped] == [paths[1]] and "broken.MP4" in skipped[0][1]
  assert incomplete == []  # Complete files decode every frame their containers report.
  assert len(warnings) == 1 and "broken.MP4" in warnings[0]
  with pytest.raises(UserError, match="broken.MP4"):
    video_io.load_videos(paths, on_error="raise")
  with pytest.raises(UserError, match="on_error"):
    video_io.load_videos(paths, on_error="ignore")


def _mp4_boxes(data, start, end):
  """(type, offset, header size, size) of the ISO-BMFF boxes in data[start:end]."""
  pos = start
  while pos + 8 <= end:
    size, kind = struct.unpack(">I4s", data[pos:pos + 8])
    header = 8
    if size == 1:
      size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
    elif size == 0:
      size = end - pos
    yield kind, pos, header, size
    pos += size


def _faststart(data: bytes) -> bytes:
  """The mp4 with its `moov` box moved before `mdat` and every chunk offset (stco / co64)
  shifted by moov's size, as `ffmpeg -movflags faststart` does: the layout of streamed and
  most downloaded mp4 files. OpenCV's writer puts moov last, and a file cut before its moov
  does not open at all; cut after a leading moov, its first part decodes."""
  top = list(_mp4_boxes(data, 0, len(data)))
  _, moov_at, _, moov_size = next(b for b in top if b[0] == b"moov")
  moov = bytearray(data[moov_at:moov_at + moov_size])

  def shift(start, end):
    for kind, pos, header, size in _mp4_boxes(moov, start, end):
      if kind in (b"trak", b"mdia", b"minf", b"stbl"):
        shift(pos + header, pos + size)
      elif kind in (b"stco", b"co64"):
        fmt, width = (">I", 4) if kind == b"stco" else (">Q", 8)
        (count,) = struct.unpack(">I", moov[pos + header + 4:pos + header + 8])
        for i in range(count):
          at = pos + header + 8 + i * width
          (offset,) = struct.unpack(fmt, moov[at:at + width])
          moov[at:at + width] = struct.pack(fmt, offset + moov_size)

  shift(8, moov_size)
  out = b""
  for kind, pos, _, size in top:
    if kind == b"mdat":
      out += bytes(moov)
    if kind != b"moov":
      out += data[pos:pos + size]
  return out


@pytest.mark.parametrize("ext,fourcc", [("mp4", "mp4v"), ("avi", "MJPG")])
def test_truncated_video_warns_with_both_counts(tmp_path, monkeypatch, ext, fourcc):
  count = 60
  path = tmp_path / f"clip.{ext}"
  _write_video(str(path), fourcc, np.stack([_content(t % T) for t in range(count)]))
  data = path.read_bytes()
  if ext == "mp4":
    data = _faststart(data)
    path.write_bytes(data)
  cut = tmp_path / f"half.{ext}"
  cut.write_bytes(data[:len(data) // 2])
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))

  assert len(video_io.read_video(str(path))) == count and not warnings  # Complete: silent.
  decoded = len(video_io.read_video(str(cut)))
  assert 5 <= decoded < count
  assert warnings == [f"video file {cut}: decoded {decoded} of the {count} frames its "
                      f"container reports (truncated or damaged?); using the {decoded} decoded "
                      f"ones"]
  videos, skipped, incomplete = video_io.load_videos([str(path), str(cut)], stride=2)
  assert not skipped and [len(v) for v in videos] == [count // 2, (decoded + 1) // 2]
  assert incomplete == [video_io.IncompleteVideo(str(cut), decoded, count)]
  assert len(warnings) == 2 and str(cut) in warnings[1]
  video_io.read_video(str(cut), max_frames=3)  # Stopped by max_frames: nothing to report.
  assert len(warnings) == 2
