"""Every input reader, fed a few hundred damaged copies of a small valid file in exactly its real
format (random, truncated, bit-flipped, zeroed-block bytes; `fuzzing.variants`), fails only with
a one-line UserError naming the file, or loads (and its consumer then fails only that way too).

Seeds are fixed, so a failure is reproducible: the message lists the variant's index and kind.
"""

import json
import os

import cv2
import numpy as np
import pytest
import scipy.io

from tests import ce_pickles
from tests.data import fuzzing
from vtd.teachtext.data import ce_features
from vtd.uts.data import fivr
from vtd.segmentation.data import object_discovery as od
from vtd.teachtext.data import retrieval
from vtd.data import video_io
from vtd.segmentation.data import youtube_objects as yto

VIDS = ["v0", "v1", "v2"]


# ----------------------------------------------------------------------------- retrieval .npz

def _tiny_retrieval() -> retrieval.RetrievalDataset:
  rng = np.random.default_rng(0)

  def split(prefix, k):
    ids = [f"{prefix}{i}" for i in range(3)]
    mask = np.ones((3, k), bool)
    mask[0, -1] = k == 1  # One video with fewer captions (where K > 1).
    return retrieval.RetrievalSplit(
        video_ids=ids,
        experts={"appearance": rng.normal(size=(3, 4)).astype(np.float32),
                 "audio": rng.normal(size=(3, 2, 3)).astype(np.float16)},
        expert_available={"appearance": np.ones(3, bool),
                          "audio": np.array([True, False, True])},
        text={"w2v": rng.normal(size=(3, k, 2, 4)).astype(np.float32)}, caption_mask=mask)
  return retrieval.RetrievalDataset(split("t", 2), split("v", 1), split("s", 2))


def test_retrieval_npz(tmp_path):
  path = str(tmp_path / "data.npz")
  original = _tiny_retrieval()
  retrieval.save_npz(original, path)
  want = retrieval.to_arrays(original)

  def same_as_written(ds):  # The archive's CRCs leave no undetected change of the arrays.
    got = retrieval.to_arrays(ds)
    assert sorted(got) == sorted(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], k)

  counts = fuzzing.check_reader(retrieval.load_npz, path, 300, seed=1, check=same_as_written)
  assert counts["UserError"] > 250, counts


# ----------------------------------------------------------------------------- CE pickles

def _ce_files(tmp_path):
  """(name, path, consumer) for each CE file format: the consumer turns the loaded object into
  features as `load_ce_dataset` does."""
  rng = np.random.default_rng(0)
  fixed = {v: rng.normal(size=4).astype(np.float32) for v in VIDS}
  fixed["v1"] = float("nan")
  tokens = {v: rng.normal(size=(t, 3)).astype(np.float32) for v, t in zip(VIDS, (0, 2, 5))}
  text = {v: [rng.normal(size=(n, 4)).astype(np.float32) for n in (1, 3)] for v in VIDS}
  teacher = {v: {"vid_embds": {"rgb": rng.normal(size=4)},
                 "text_embds": {"rgb": rng.normal(size=(2, 4))}} for v in VIDS}
  npy = str(tmp_path / "fixed.npy")
  np.save(npy, np.array(fixed, dtype=object), allow_pickle=True)  # zsvision's np_loader.
  # Consumers name the file as load_ce_dataset's do: "<path> (<expert>)".
  fixed_of = lambda path: lambda d: ce_features.expert_features(d, VIDS, max_tokens=None,
                                                                source=f"{path} (rgb)")
  files = {name: str(tmp_path / name) for name in ("fixed.pkl", "audio.pickle", "w2v.pkl",
                                                   "store.pickle", "teacher.pkl")}
  return [
      ("dict", ce_pickles.write_pickle(files["fixed.pkl"], fixed),
       fixed_of(files["fixed.pkl"])),
      ("tokens", ce_pickles.write_pickle(files["audio.pickle"], tokens),
       lambda d: ce_features.expert_features(d, VIDS, max_tokens=4,
                                             source=f"{files['audio.pickle']} (audio)")),
      ("text", ce_pickles.write_pickle(files["w2v.pkl"], text),
       lambda d: ce_features.text_features(d, VIDS, max_tokens=2,
                                           source=f"{files['w2v.pkl']} (w2v)")),
      ("store", ce_pickles.write_expert_store(files["store.pickle"], VIDS,
                                               rng.normal(size=(3, 5)), missing={"v2"}),
       fixed_of(files["store.pickle"])),
      ("npy", npy, fixed_of(npy)),
      ("teacher", ce_pickles.write_pickle(files["teacher.pkl"], teacher), None),
  ]


@pytest.mark.parametrize("index", range(6), ids=["dict", "tokens", "text", "store", "npy",
                                                  "teacher"])
def test_ce_feature_files(tmp_path, index):
  name, path, consume = _ce_files(tmp_path)[index]
  if name == "teacher":
    read = lambda p: ce_features.load_teacher_embeddings(p, VIDS, [2, 1, 2])
  else:
    read = ce_features.load_feature_file
  counts = fuzzing.check_reader(read, path, 200, seed=2 + index, check=consume)
  assert counts["UserError"] > 100, counts


def test_id_lists(tmp_path):
  path = tmp_path / "train_list.txt"
  path.write_text("".join(f"video{i}\n" for i in range(40)))
  counts = fuzzing.check_reader(ce_features.read_split_list, str(path), 300, seed=8)
  assert counts["UserError"] > 50 and counts["loaded"] > 50, counts
  fuzzing.check_reader(fivr.load_dataset_ids, str(path), 100, seed=9)


# ----------------------------------------------------------------------------- FIVR annotation

def test_fivr_annotation(tmp_path):
  path = tmp_path / "annotation.json"
  annotation = {f"q{q}": {"ND": [f"v{q}{i}" for i in range(3)], "DS": [f"v{q}9"],
                          "CS": [], "IS": [f"v{q}8", f"v{q}7"], "DA": [f"v{q}0"]}
                for q in range(4)}
  path.write_text(json.dumps(annotation, indent=1))
  check = lambda a: [fivr.task_positives(a, task, ["v00", "v19"]) for task in fivr.TASKS]
  counts = fuzzing.check_reader(fivr.load_annotation, str(path), 300, seed=10, check=check)
  assert counts["UserError"] > 150, counts


# ----------------------------------------------------------------------------- Object Discovery

@pytest.fixture
def od_root(tmp_path):
  class_dir = tmp_path / "Data" / "Car100"
  os.makedirs(class_dir / "GroundTruth")
  image = np.zeros((12, 16, 3), np.uint8)
  image[:6, :8] = (255, 0, 0)
  image[6:] = (0, 0, 255)
  cv2.imwrite(str(class_dir / "0001.jpg"), image)
  mask = np.zeros((12, 16), np.uint8)
  mask[3:9, 4:12] = 255
  cv2.imwrite(str(class_dir / "GroundTruth" / "0001.png"), mask)
  return tmp_path


@pytest.mark.parametrize("file", ["0001.jpg", "GroundTruth/0001.png"])
def test_object_discovery(od_root, file):
  read = lambda _: od.load_object_discovery(str(od_root), classes=("Car100",))
  counts = fuzzing.check_reader(read, str(od_root / "Data" / "Car100" / file), 200, seed=11)
  assert counts["UserError"] > 50, counts


# ----------------------------------------------------------------------------- YouTube-Objects

def _yto_v22(root, compress):
  """A v2.2 tree; its .mat files as scipy writes them, or zlib-compressed as MATLAB's v7."""
  os.makedirs(root / "car")
  for n in (2, 3):
    cv2.imwrite(str(root / "car" / f"{n:08d}.jpg"), np.full((12, 16, 3), 90, np.uint8))
  gt = root / "GroundTruth" / "car"
  os.makedirs(gt)
  records = np.zeros((1, 2), dtype=[("frame", object), ("bb", object)])
  records[0, 0]["frame"], records[0, 0]["bb"] = "car00000002", np.array([[2., 3, 8, 9]])
  records[0, 1]["frame"] = "car00000003"
  records[0, 1]["bb"] = np.array([[1., 1, 4, 4], [5, 5, 9, 9]])
  scipy.io.savemat(str(gt / "bb_gtTest_car.mat"), {"bb_gtTest": records},
                   do_compression=compress)
  os.makedirs(root / "Ranges")
  scipy.io.savemat(str(root / "Ranges" / "ranges_car.mat"),
                   {"ranges": np.array([[1, 3], [2, 9], [1, 1]], np.float64)},
                   do_compression=compress)


@pytest.mark.parametrize("file,compress", [
    ("GroundTruth/car/bb_gtTest_car.mat", False), ("GroundTruth/car/bb_gtTest_car.mat", True),
    ("Ranges/ranges_car.mat", False), ("Ranges/ranges_car.mat", True),
    ("car/00000002.jpg", False)])
def test_youtube_objects_v22(tmp_path, file, compress):
  _yto_v22(tmp_path, compress)
  read = lambda _: yto.load_youtube_objects(str(tmp_path), "v2.2", ("car",), split="test")
  counts = fuzzing.check_reader(read, str(tmp_path / file), 200, seed=12)
  assert counts["UserError"] > 50, counts


def test_youtube_objects_v1(tmp_path):
  shot = tmp_path / "cat" / "data" / "0001" / "shots" / "001"
  os.makedirs(shot)
  cv2.imwrite(str(shot / "frame0001.jpg"), np.full((12, 16, 3), 90, np.uint8))
  cell = np.empty((1, 2), dtype=object)
  cell[0, 0], cell[0, 1] = np.array([[3., 2, 10, 8]]), np.array([[1., 1, 4, 4]])
  scipy.io.savemat(str(shot / "frame0001.jpg_sticks.mat"), {"coor": cell})
  os.makedirs(tmp_path / "cat" / "sets")
  (tmp_path / "cat" / "sets" / "train.txt").write_text("0001\n")
  read = lambda _: yto.load_youtube_objects(str(tmp_path), "v1", ("cat",))
  counts = fuzzing.check_reader(read, str(shot / "frame0001.jpg_sticks.mat"), 200, seed=13)
  assert counts["UserError"] > 50, counts
  fuzzing.check_reader(read, str(tmp_path / "cat" / "sets" / "train.txt"), 100, seed=14)


# ----------------------------------------------------------------------------- video files

@pytest.mark.parametrize("ext,fourcc", [("mp4", "mp4v"), ("avi", "MJPG")])
def test_video_files(tmp_path, ext, fourcc):
  path = str(tmp_path / f"clip.{ext}")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10.0, (32, 24))
  if not writer.isOpened():
    pytest.skip(f"this OpenCV build cannot write {fourcc}")
  for t in range(12):
    frame = np.zeros((24, 32, 3), np.uint8)
    frame[:, 2 * t:2 * t + 8] = 200
    writer.write(frame)
  writer.release()

  def check(videos):
    (frames,), skipped, _ = videos
    assert not skipped and frames.dtype == np.uint8 and frames.shape[1:] == (24, 32, 3)

  read = lambda p: video_io.load_videos([p], on_error="raise")
  counts = fuzzing.check_reader(read, path, 160, seed=15, check=check)
  assert counts["UserError"] > 30, counts
