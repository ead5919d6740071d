"""Object Discovery and YouTube-Objects readers on small files written in the released layouts."""

import os

import cv2
import numpy as np
import pytest
import scipy.io

from vtd.segmentation.data import object_discovery as od
from vtd.segmentation.data import youtube_objects as yto
from vtd.errors import UserError

RED_BGR = (0, 0, 255)


def _write_image(path, h=12, w=16, colour=RED_BGR):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = np.zeros((h, w, 3), np.uint8)
  image[:] = colour
  image[: h // 2, : w // 2] = (255, 0, 0)  # Blue block (BGR) in the top-left quarter.
  assert cv2.imwrite(path, image)


def _mask(h=12, w=16, seed=0):
  mask = np.zeros((h, w), bool)
  rng = np.random.default_rng(seed)
  y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
  mask[y:y + 4, x:x + 5] = True
  return mask


# ----------------------------------------------------------------------------- Object Discovery

@pytest.fixture
def od_root(tmp_path):
  """ObjectDiscovery-data/Data/{Airplane100,Car100} with .jpg images and GroundTruth masks."""
  data = tmp_path / "ObjectDiscovery-data" / "Data"
  masks = {}
  for folder, names in (("Airplane100", ["0001", "0002", "0003"]), ("Car100", ["0007"])):
    for i, name in enumerate(names):
      _write_image(str(data / folder / f"{name}.jpg"))
      masks[f"{folder}/{name}"] = _mask(seed=i)
    gt = data / folder / "GroundTruth"
    os.makedirs(gt)
  m = masks
  cv2.imwrite(str(data / "Airplane100/GroundTruth/0001.png"), m["Airplane100/0001"] * 255)
  cv2.imwrite(str(data / "Airplane100/GroundTruth/0002.bmp"),  # 0/1 values, .bmp.
              m["Airplane100/0002"].astype(np.uint8))
  m["Airplane100/0003"][:] = False  # Noise image: all background.
  cv2.imwrite(str(data / "Airplane100/GroundTruth/0003.png"), np.zeros((12, 16), np.uint8))
  cv2.imwrite(str(data / "Car100/GroundTruth/0007.jpg"),  # Lossy 0/255 mask.
              np.repeat(m["Car100/0007"][..., None] * 255, 3, axis=2).astype(np.uint8))
  (data / "Airplane100" / "notes.txt").write_text("not an image")
  os.makedirs(data / "Airplane100" / "extra")
  return tmp_path / "ObjectDiscovery-data", masks


def test_object_discovery_reads_released_layout(od_root):
  root, masks = od_root
  items = od.load_object_discovery(str(root), classes=("Airplane100", "Car100"))
  assert [x.image_id for x in items] == ["Airplane100/0001", "Airplane100/0002",
                                         "Airplane100/0003", "Car100/0007"]
  assert [x.class_name for x in items] == ["Airplane"] * 3 + ["Car"]
  for x in items:
    assert x.image.dtype == np.uint8 and x.image.shape == (12, 16, 3)
    assert x.mask.dtype == np.bool_ and x.mask.shape == (12, 16)
    np.testing.assert_array_equal(x.mask, masks[x.image_id])
    # RGB: red outside the top-left quarter, blue inside (JPEG: approximately).
    np.testing.assert_allclose(x.image[-1, -1], (255, 0, 0), atol=12)
    np.testing.assert_allclose(x.image[0, 0], (0, 0, 255), atol=12)
  assert items[1].mask_path.endswith(os.path.join("GroundTruth", "0002.bmp"))
  # The Data folder itself works as root too, and resize applies to image and mask.
  small = od.load_object_discovery(str(root / "Data"), classes=("Car100",), resize=(6, 8))
  assert small[0].image.shape == (6, 8, 3) and small[0].mask.shape == (6, 8)
  np.testing.assert_array_equal(small[0].mask, masks["Car100/0007"][::2, ::2])


def test_object_discovery_errors_name_the_file(od_root):
  root, _ = od_root
  data = root / "Data"
  with pytest.raises(UserError, match="Horse100"):
    od.list_object_discovery(str(root), classes=("Horse100",))
  with pytest.raises(UserError, match="root folder not found"):
    od.list_object_discovery(str(root / "nope"))
  os.remove(data / "Airplane100/GroundTruth/0002.bmp")
  with pytest.raises(UserError, match=r"0002\.jpg.*GroundTruth.0002\.png"):
    od.list_object_discovery(str(root), classes=("Airplane100",))
  (data / "Car100/0007.jpg").write_bytes(b"not a jpeg")
  entry, = od.list_object_discovery(str(root), classes=("Car100",))
  with pytest.raises(UserError, match=r"cannot read image.*0007\.jpg"):
    od.load_entry(entry)
  _write_image(str(data / "Car100/0007.jpg"), h=10)
  with pytest.raises(UserError, match=r"mask .*GroundTruth.0007\.jpg is 16x12 but image "
                     r".*0007\.jpg is 16x10"):
    od.load_entry(entry)
  (data / "Car100/GroundTruth/0007.jpg").write_bytes(b"")
  with pytest.raises(UserError, match=r"cannot read mask.*0007\.jpg"):
    od.load_entry(entry)
  os.rename(data / "Car100/GroundTruth", data / "Car100/gt")
  with pytest.raises(UserError, match=r"ground-truth folder not found.*GroundTruth"):
    od.list_object_discovery(str(root), classes=("Car100",))


# ----------------------------------------------------------------------------- YouTube-Objects v1

def _cell(*boxes):
  cell = np.empty((1, len(boxes)), dtype=object)
  for i, b in enumerate(boxes):
    cell[0, i] = np.array([b], np.float64)
  return cell


@pytest.fixture
def v1_root(tmp_path):
  root = tmp_path / "youtube-objects"
  shot = root / "aeroplane" / "data" / "0001" / "shots" / "001"
  _write_image(str(shot / "frame0001.jpg"))
  _write_image(str(shot / "frame0002.jpg"))  # Not annotated.
  scipy.io.savemat(str(shot / "frame0001.jpg_sticks.mat"),
                   {"coor": _cell([3, 2, 10, 8], [1, 1, 4, 4])})
  shot = root / "aeroplane" / "data" / "0002" / "shots" / "004"
  _write_image(str(shot / "frame0031.jpg"))
  # Reversed x corners, negative y, and x beyond the 16-pixel frame (all seen in v1).
  scipy.io.savemat(str(shot / "frame0031.jpg_sticks.mat"), {"coor": _cell([12, -3, 5, 6])})
  sets = root / "aeroplane" / "sets"
  os.makedirs(sets)
  (sets / "train.txt").write_text("0001\n")
  (sets / "test.txt").write_text("0002\n\n")
  shot = root / "cat" / "data" / "0003" / "shots" / "001"
  _write_image(str(shot / "frame0005.jpg"))
  scipy.io.savemat(str(shot / "frame0005.jpg_sticks.mat"), {"coor": _cell([1, 1, 20, 12])})
  return root


def test_youtube_objects_v1(v1_root):
  anns = yto.list_youtube_objects(str(v1_root), classes=("aeroplane", "cat"))
  assert [a.frame_id for a in anns] == ["aeroplane/0001/001/frame0001",
                                        "aeroplane/0002/004/frame0031", "cat/0003/001/frame0005"]
  assert [a.split for a in anns] == ["train", "test", None]
  assert {a.version for a in anns} == {"v1"}
  # MATLAB 1-based inclusive -> 0-based exclusive: x0 - 1, y0 - 1.
  np.testing.assert_array_equal(anns[0].boxes, [[2, 1, 10, 8], [0, 0, 4, 4]])
  np.testing.assert_array_equal(anns[1].boxes, [[4, 0, 12, 6]])
  raw = yto.list_youtube_objects(str(v1_root), "v1", ("aeroplane",), box_convention="raw",
                                 sanitize=False)
  np.testing.assert_array_equal(raw[1].boxes, [[12, -3, 5, 6]])
  test = yto.list_youtube_objects(str(v1_root), "v1", ("aeroplane",), split="test")
  assert [a.video for a in test] == ["0002"]
  frames = yto.load_youtube_objects(str(v1_root), classes=("cat",))
  assert frames[0].image.shape == (12, 16, 3) and frames[0].class_name == "cat"
  np.testing.assert_allclose(frames[0].image[-1, -1], (255, 0, 0), atol=12)
  np.testing.assert_array_equal(frames[0].boxes, [[0, 0, 16, 12]])  # Clipped to the frame.
  half = yto.load_annotation(anns[0], resize=(6, 8))
  assert half.image.shape == (6, 8, 3)
  np.testing.assert_allclose(half.boxes, [[1, 0.5, 5, 4], [0, 0, 2, 2]])


def test_youtube_objects_v1_errors(v1_root):
  with pytest.raises(UserError, match=r"bird.data"):
    yto.list_youtube_objects(str(v1_root), "v1", classes=("bird",))
  os.remove(v1_root / "aeroplane/sets/train.txt")
  with pytest.raises(UserError, match=r"split file not found.*train\.txt"):
    yto.list_youtube_objects(str(v1_root), "v1", ("aeroplane",), split="train")
  mat = v1_root / "aeroplane/data/0002/shots/004/frame0031.jpg_sticks.mat"
  mat.write_bytes(b"garbage")
  with pytest.raises(UserError, match=r"frame0031\.jpg_sticks\.mat"):
    yto.list_youtube_objects(str(v1_root), "v1", ("aeroplane",))
  os.remove(mat)
  os.remove(v1_root / "cat/data/0003/shots/001/frame0005.jpg")
  with pytest.raises(UserError, match=r"frame .*frame0005\.jpg .*not found"):
    yto.list_youtube_objects(str(v1_root), "v1", ("cat",))
  with pytest.raises(UserError, match="cannot tell the YouTube-Objects version"):
    yto.list_youtube_objects(str(v1_root / "aeroplane"))


# ----------------------------------------------------------------------------- YouTube-Objects v2.2

def _bb_gt(records):
  """A MATLAB struct array, one element per annotated frame: (frame id, [K, 4] boxes)."""
  arr = np.zeros((1, len(records)), dtype=[("frame", object), ("bb", object)])
  for i, (frame, boxes) in enumerate(records):
    arr[0, i]["frame"] = frame
    arr[0, i]["bb"] = np.array(boxes, np.float64)
  return arr


@pytest.fixture
def v22_root(tmp_path):
  root = tmp_path / "YouTube-Objects-2.2"
  for n in (1, 2, 3, 40, 41):
    _write_image(str(root / "car" / f"{n:08d}.jpg"))
  gt = root / "GroundTruth" / "car"
  os.makedirs(gt)
  scipy.io.savemat(str(gt / "bb_gtTraining_car.mat"), {"bb_gtTraining": _bb_gt(
      [("car00000002", [[2, 3, 8, 9]]), ("car00000003", [[1, 1, 4, 4], [5, 5, 9, 9]])])})
  scipy.io.savemat(str(gt / "bb_gtTest_car.mat"), {"bb_gtTest": _bb_gt(
      [("car00000041", [[10, 2, 16, 12]])])})
  os.makedirs(root / "Ranges")
  # Shots: frames 1-3 (video 1), 4-39 (video 1), 40-41 (video 2).
  scipy.io.savemat(str(root / "Ranges/ranges_car.mat"),
                   {"ranges": np.array([[1, 4, 40], [3, 39, 41], [1, 1, 2]], np.float64)})
  return root


def test_youtube_objects_v22(v22_root):
  anns = yto.list_youtube_objects(str(v22_root), classes=("car",))
  assert [a.frame_id for a in anns] == ["car/00000002", "car/00000003", "car/00000041"]
  assert [a.split for a in anns] == ["train", "train", "test"]
  assert [(a.video, a.shot) for a in anns] == [("0001", "001"), ("0001", "001"),
                                               ("0002", "001")]
  assert {a.version for a in anns} == {"v2.2"}
  np.testing.assert_array_equal(anns[1].boxes, [[0, 0, 4, 4], [4, 4, 9, 9]])
  test, = yto.list_youtube_objects(str(v22_root), "v2.2", ("car",), split="test")
  assert test.image_path == str(v22_root / "car" / "00000041.jpg")
  frame = yto.load_annotation(test)
  assert frame.image.shape == (12, 16, 3)
  np.testing.assert_array_equal(frame.boxes, [[9, 1, 16, 12]])
  # Without Ranges there are no video/shot ids; nested GroundTruth/GroundTruth and an N x 2
  # cell array (instead of a struct array) are read as well.
  os.remove(v22_root / "Ranges/ranges_car.mat")
  nested = v22_root / "GroundTruth" / "GroundTruth"
  os.makedirs(nested)
  os.rename(v22_root / "GroundTruth/car", nested / "car")
  cell = np.empty((1, 2), dtype=object)
  cell[0, 0], cell[0, 1] = "car00000040", np.array([[1, 2, 3, 4]], np.float64)
  scipy.io.savemat(str(nested / "car/bb_gtTest_car.mat"), {"bb_gtTest": cell})
  test, = yto.list_youtube_objects(str(v22_root), classes=("car",), split="test")
  assert (test.frame_id, test.video, test.shot) == ("car/00000040", None, None)
  np.testing.assert_array_equal(test.boxes, [[0, 1, 3, 4]])


def test_youtube_objects_v22_errors(v22_root):
  with pytest.raises(UserError, match=r"GroundTruth.dog"):
    yto.list_youtube_objects(str(v22_root), classes=("dog",))
  os.remove(v22_root / "car/00000041.jpg")
  with pytest.raises(UserError, match=r"00000041\.jpg.*car00000041.*bb_gtTest_car\.mat"):
    yto.list_youtube_objects(str(v22_root), classes=("car",))
  os.remove(v22_root / "GroundTruth/car/bb_gtTest_car.mat")
  with pytest.raises(UserError, match=r"annotation file not found.*bb_gtTest_car\.mat"):
    yto.list_youtube_objects(str(v22_root), classes=("car",), split="test")
  scipy.io.savemat(str(v22_root / "GroundTruth/car/bb_gtTest_car.mat"), {"other": 1.0})
  with pytest.raises(UserError, match=r"bb_gtTest_car\.mat has no variable 'bb_gtTest'"):
    yto.list_youtube_objects(str(v22_root), classes=("car",), split="test")
  (v22_root / "car/00000002.jpg").write_bytes(b"\x00" * 10)
  ann = yto.list_youtube_objects(str(v22_root), classes=("car",), split="train")[0]
  with pytest.raises(UserError, match=r"cannot read image.*00000002\.jpg"):
    yto.load_annotation(ann)
