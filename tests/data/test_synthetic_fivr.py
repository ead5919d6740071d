import dataclasses
import json
import re

import cv2
import numpy as np
import pytest

from vtd.data import synthetic_fivr as sf
from vtd.errors import UserError

SPEC = sf.SMOKE_SPEC
# Graded-difficulty check: the smoke frames, but 12 queries (3 are too few for a stable mAP).
GRADED_SPEC = dataclasses.replace(sf.SMOKE_SPEC, num_events=12, num_distractors=40)


@pytest.fixture(scope="module")
def ds():
  return sf.generate(SPEC)


def _assert_same(a: sf.SyntheticFivr, b: sf.SyntheticFivr):
  assert a.video_ids == b.video_ids and a.query_ids == b.query_ids
  assert a.annotation == b.annotation and a.split == b.split and a.kinds == b.kinds
  np.testing.assert_array_equal(a.offsets, b.offsets)
  np.testing.assert_array_equal(a.events, b.events)
  assert a.frames.dtype == b.frames.dtype and a.frames.tobytes() == b.frames.tobytes()


# ----------------------------------------------------------------------------- baseline

def _thumbnail_gv(ds: sf.SyntheticFivr, size: int = 4) -> np.ndarray:
  """[V, 3 size^2] video vectors: mean of L2-normalised, zero-centred tiny thumbnails."""
  f = np.stack([cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)
                for x in ds.frames]).reshape(len(ds.frames), -1).astype(np.float32)
  f -= f.mean(1, keepdims=True)
  f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-8
  v = np.zeros((len(ds), f.shape[1]), np.float32)
  np.add.at(v, ds.frame_video, f)
  return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-8)


def _average_precision(ranked: list[str], positives: set[str]) -> float:
  """FIVR's AP (reference §B.2): (1/|GT|) sum over positives of (positives so far) / rank."""
  hits, total = 0, 0.0
  for rank, vid in enumerate(ranked, 1):
    if vid in positives:
      hits += 1
      total += hits / rank
  return total / len(positives)


def _baseline_map(ds: sf.SyntheticFivr) -> dict[str, float]:
  vectors = _thumbnail_gv(ds)
  sims = vectors @ vectors.T
  out = {}
  for task in sf.TASKS:
    aps = []
    for q in ds.query_ids:
      qi = ds.index(q)
      order = np.argsort(-sims[qi], kind="stable")
      ranked = [ds.video_ids[i] for i in order if i != qi]  # The query itself is skipped.
      aps.append(_average_precision(ranked, ds.positives(q, task)))
    out[task] = float(np.mean(aps))
  return out


def test_average_precision_reference_values():
  assert _average_precision(["a", "b", "c"], {"a"}) == 1.0
  assert _average_precision(["x", "a", "y", "b"], {"a", "b"}) == pytest.approx((1 / 2 + 2 / 4) / 2)
  assert _average_precision(["x", "a"], {"a", "missing"}) == pytest.approx(0.25)


# ----------------------------------------------------------------------------- tests

def test_deterministic_and_seed_dependent(ds):
  _assert_same(ds, sf.generate(SPEC))
  other = sf.generate(dataclasses.replace(SPEC, seed=1))
  assert not set(other.video_ids) & set(ds.video_ids)
  assert not np.array_equal(other.frames[:100], ds.frames[:100])


def test_events_do_not_depend_on_collection_size():
  small = dataclasses.replace(SPEC, num_events=2, num_distractors=0)
  a, b = sf.generate(small), sf.generate(dataclasses.replace(small, num_events=3))
  assert a.query_ids == b.query_ids[:2]
  for vid in a.video_ids:
    np.testing.assert_array_equal(a.video_frames(vid), b.video_frames(vid))


def test_shapes_dtypes_and_ids(ds):
  n_event = SPEC.num_events * (1 + SPEC.num_nd + SPEC.num_ds + SPEC.num_cs + SPEC.num_is)
  assert len(ds) == n_event + SPEC.num_distractors
  assert ds.frames.dtype == np.uint8 and ds.frames.shape[1:] == (SPEC.height, SPEC.width, 3)
  assert ds.offsets.dtype == np.int64 and ds.offsets.shape == (len(ds) + 1,)
  assert ds.offsets[0] == 0 and ds.offsets[-1] == len(ds.frames)
  lengths = ds.num_frames
  assert lengths.min() >= SPEC.min_frames and lengths.max() <= SPEC.max_frames
  assert len(set(lengths.tolist())) > 1
  np.testing.assert_array_equal(np.bincount(ds.frame_video, minlength=len(ds)), lengths)
  assert ds.video_frames(3).shape == (lengths[3], SPEC.height, SPEC.width, 3)
  np.testing.assert_array_equal(ds.video_frames(ds.video_ids[3]), ds.video_frames(3))
  assert all(re.fullmatch(r"[A-Za-z0-9_-]{11}", v) for v in ds.video_ids)
  assert ds.video_ids == sorted(set(ds.video_ids))
  assert ds.events.shape == (len(ds),) and len(ds.kinds) == len(ds)
  assert set(ds.kinds) <= set(sf.KINDS) and ds.kinds.count("query") == SPEC.num_events
  # Every video shows something (no blank or constant clips).
  for i in range(len(ds)):
    assert ds.video_frames(i).astype(np.float32).std() > 5, ds.video_ids[i]


def test_annotation_format_and_relations(ds):
  ids = set(ds.video_ids)
  assert list(ds.annotation) == ds.query_ids and len(set(ds.query_ids)) == SPEC.num_events
  assert set(ds.query_ids) <= ids
  for q, labels in ds.annotation.items():
    assert isinstance(q, str) and set(labels) <= set(sf.LABELS)
    event = ds.events[ds.index(q)]
    for name, vids in labels.items():
      assert vids and all(isinstance(v, str) for v in vids) and len(set(vids)) == len(vids)
      assert set(vids) <= ids and q not in vids
      assert all(ds.events[ds.index(v)] == event for v in vids)  # Never a distractor.
      assert not set(vids) & set(ds.query_ids)
    assert len(labels["ND"]) == SPEC.num_nd and len(labels["DS"]) == SPEC.num_ds
    assert len(labels["IS"]) == SPEC.num_is
    ds_as_cs = [v for v in labels["CS"] if ds.kinds[ds.index(v)] == "DS"]
    assert len(labels["CS"]) == SPEC.num_cs + len(ds_as_cs)
    tasks = {t: ds.positives(q, t) for t in sf.TASKS}
    assert tasks["DSVR"] < tasks["CSVR"] < tasks["ISVR"]
    for v in tasks["ISVR"]:  # The label matches how the video was made.
      kind = ds.kinds[ds.index(v)]
      assert kind in labels and v in labels[kind]
  # The training splits.
  assert ds.split["train"] == ds.split["database"] == ds.video_ids
  assert ds.split["queries"] == ds.query_ids
  positives = set().union(*(ds.positives(q, "ISVR") for q in ds.query_ids))
  disjoint = set(ds.split["train_disjoint"])
  assert len(disjoint) == SPEC.num_distractors
  assert not disjoint & (positives | set(ds.query_ids))


def test_write_annotation_json(ds, tmp_path):
  path = tmp_path / "sub" / "annotation.json"
  sf.write_annotation_json(ds, str(path))
  loaded = json.loads(path.read_text())
  assert loaded == ds.annotation and list(loaded) == ds.query_ids
  # FIVR's structure: {query id: {label: [video ids]}}.
  assert all(isinstance(v, list) and all(isinstance(x, str) for x in v)
             for labels in loaded.values() for v in labels.values())


def test_save_load_round_trip(ds, tmp_path):
  path = str(tmp_path / "fivr.npz")
  sf.save_npz(ds, path)
  loaded = sf.load_npz(path, SPEC)
  _assert_same(ds, loaded)
  assert loaded.positives(ds.query_ids[0], "ISVR") == ds.positives(ds.query_ids[0], "ISVR")
  with pytest.raises(UserError, match="another spec"):
    sf.load_npz(path, dataclasses.replace(SPEC, seed=5))
  broken = tmp_path / "broken.npz"
  broken.write_bytes(b"not a zip file")
  with pytest.raises(UserError, match="cannot read"):
    sf.load_npz(str(broken), SPEC)


def test_load_or_generate_caches(ds, tmp_path, monkeypatch):
  first = sf.load_or_generate(SPEC, str(tmp_path))
  path = sf.cache_path(SPEC, str(tmp_path))
  assert path.startswith(str(tmp_path)) and SPEC.cache_key() in path
  assert [p.name for p in tmp_path.iterdir()] == [path.split("/")[-1]]  # No temporary left.
  _assert_same(ds, first)
  monkeypatch.setattr(sf, "generate", lambda spec: pytest.fail("regenerated"))
  _assert_same(ds, sf.load_or_generate(SPEC, str(tmp_path)))
  assert sf.cache_path(dataclasses.replace(SPEC, seed=1), str(tmp_path)) != path


def test_invalid_spec():
  with pytest.raises(UserError, match="scenes_per_event"):
    sf.generate(dataclasses.replace(SPEC, scenes_per_event=1))
  with pytest.raises(UserError, match="max_frames"):
    sf.generate(dataclasses.replace(SPEC, min_frames=9, max_frames=8))


@pytest.fixture(scope="module")
def graded():
  return {seed: sf.generate(dataclasses.replace(GRADED_SPEC, seed=seed)) for seed in (0, 1, 2)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_graded_difficulty_with_thumbnail_baseline(graded, seed):
  """mAP DSVR > CSVR > ISVR, clearly neither 0 nor 1, for every seed.

  Measured on GRADED_SPEC, seeds 0-9: DSVR 0.61-0.81, CSVR 0.50-0.68, ISVR 0.45-0.61,
  DSVR - CSVR >= 0.06 and CSVR - ISVR >= 0.049.
  """
  maps = _baseline_map(graded[seed])
  assert 0.45 <= maps["DSVR"] <= 0.9, maps
  assert maps["DSVR"] >= maps["CSVR"] + 0.03, maps
  assert maps["CSVR"] >= maps["ISVR"] + 0.02, maps
  assert 0.3 <= maps["ISVR"], maps


def test_graded_similarity_by_relation(graded):
  """Mean baseline similarity to the query: ND > DS > CS > IS > distractors (pooled seeds)."""
  sims = {}
  for ds in graded.values():
    vectors = _thumbnail_gv(ds)
    for q in ds.query_ids:
      qi = ds.index(q)
      for i in range(len(ds)):
        kind = ds.kinds[i] if ds.events[i] in (ds.events[qi], -1) else "other_event"
        sims.setdefault(kind, []).append(float(vectors[qi] @ vectors[i]))
  mean = {k: np.mean(v) for k, v in sims.items()}
  assert mean["ND"] > mean["DS"] > mean["CS"] > mean["IS"], mean
  assert mean["IS"] > max(mean["distractor"], mean["hard_distractor"], mean["other_event"]
                          ) + 0.05, mean
