"""The generated-data cache: checksummed entries, and a damaged entry regenerated with a warning
naming its path (for each of the three generators)."""

import dataclasses
import os
import zipfile

import numpy as np
import pytest

from vtd.data import cache
from vtd.uts.data import synthetic_fivr as sf
from vtd.teachtext.data import synthetic_retrieval as sr
from vtd.segmentation.data import synthetic_video as sv
from vtd.errors import UserError

ARRAYS = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "names": np.asarray(["x", "yz"]),
          "scalar": np.asarray(3)}


def test_checksum_covers_names_dtypes_shapes_and_bytes():
  base = cache.checksum(ARRAYS)
  assert base == cache.checksum(dict(reversed(ARRAYS.items())))  # Order does not matter.
  changed = [
      {**ARRAYS, "a": ARRAYS["a"] + np.float32(1e-6)},
      {**ARRAYS, "a": ARRAYS["a"].astype(np.float64)},
      {**ARRAYS, "a": ARRAYS["a"].reshape(3, 2)},
      {"b": ARRAYS["a"], "names": ARRAYS["names"], "scalar": ARRAYS["scalar"]},
      {k: v for k, v in ARRAYS.items() if k != "scalar"},
  ]
  assert len({base, *(cache.checksum(c) for c in changed)}) == 1 + len(changed)


def test_entry_round_trip_and_checksum_mismatch(tmp_path):
  path = str(tmp_path / "entry.npz")
  cache.save_entry(path, ARRAYS)
  back = cache.load_entry(path, "test cache")
  assert sorted(back) == sorted(ARRAYS)
  for k in ARRAYS:
    np.testing.assert_array_equal(back[k], ARRAYS[k])
  # A well-formed archive (valid zip CRCs) whose contents changed after writing.
  stored = dict(np.load(path))
  np.savez(path, **{**stored, "a": stored["a"] * 2})
  with pytest.raises(UserError, match=r"test cache .*entry\.npz fails its checksum"):
    cache.load_entry(path, "test cache")
  np.savez(path, **ARRAYS)  # Written without a checksum (an older vtd).
  with pytest.raises(UserError, match=r"entry\.npz has no checksum"):
    cache.load_entry(path, "test cache")


def _corrupt(path, how):
  data = open(path, "rb").read()
  if how == "truncated":
    data = data[:len(data) // 2]
  elif how == "zeroed":
    data = data[:len(data) // 3] + bytes(4096) + data[len(data) // 3 + 4096:]
  elif how == "foreign":
    data = b"not an npz at all"
  with open(path, "wb") as f:
    f.write(data)


@pytest.fixture
def warnings(monkeypatch):
  seen = []
  monkeypatch.setattr(cache.logging, "warning", lambda msg, *args: seen.append(msg % args))
  return seen


@pytest.mark.parametrize("how", ["truncated", "zeroed", "foreign"])
def test_damaged_entry_is_regenerated_with_a_warning(tmp_path, warnings, how):
  path = str(tmp_path / "entry.npz")
  calls = []

  def generate():
    calls.append(1)
    return dict(ARRAYS)

  load = lambda p: cache.load_entry(p, "test cache")
  cache.load_or_generate(path, generate, load, lambda d, p: cache.save_entry(p, d))
  assert len(calls) == 1 and not warnings
  _corrupt(path, how)
  again = cache.load_or_generate(path, generate, load, lambda d, p: cache.save_entry(p, d))
  assert len(calls) == 2 and len(warnings) == 1
  assert path in warnings[0] and warnings[0].endswith("; vtd regenerates it"), warnings
  np.testing.assert_array_equal(again["a"], ARRAYS["a"])
  # The entry was rewritten: the next call loads it without generating.
  cache.load_or_generate(path, generate, load, lambda d, p: cache.save_entry(p, d))
  assert len(calls) == 2 and len(warnings) == 1
  assert [n for n in os.listdir(tmp_path)] == ["entry.npz"]  # No temporary left behind.


def _damage_largest_member(path):
  """Flips one byte inside the largest array's data (the zip's CRC then fails)."""
  with zipfile.ZipFile(path) as z:
    info = max(z.infolist(), key=lambda i: i.file_size)
  with open(path, "r+b") as f:
    f.seek(info.header_offset + 30 + len(info.filename.encode()) + 200)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


GENERATORS = {
    "retrieval": (sr, sr.SyntheticRetrievalSpec(num_train=12, num_val=4, num_test=4,
                                                num_concepts=32)),
    "video": (sv, sv.SyntheticVideoSpec(num_train_videos=2, num_test_videos=1, min_frames=4,
                                        max_frames=5, height=24, width=32,
                                        test_frames_per_video=2)),
    "fivr": (sf, sf.SMOKE_SPEC),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_regenerate_a_damaged_cache(tmp_path, warnings, monkeypatch, name):
  module, spec = GENERATORS[name]
  first = module.load_or_generate(spec, str(tmp_path))
  (path,) = [str(p) for p in tmp_path.iterdir()]
  with np.load(path) as f:
    assert cache.CHECKSUM_KEY in f.files
  _damage_largest_member(path)
  generated = []
  real_generate = module.generate
  monkeypatch.setattr(module, "generate", lambda s: generated.append(s) or real_generate(s))
  again = module.load_or_generate(spec, str(tmp_path))
  assert generated == [spec] and len(warnings) == 1 and path in warnings[0], warnings
  assert "corrupt" in warnings[0] or "damaged" in warnings[0], warnings
  # Same data as the first generation, and the rewritten entry loads without generating.
  leaves = lambda ds: [np.asarray(x) for x in _arrays(ds)]
  for a, b in zip(leaves(first), leaves(again)):
    np.testing.assert_array_equal(a, b)
  module.load_or_generate(spec, str(tmp_path))
  assert generated == [spec] and len(warnings) == 1


def _arrays(ds):
  """A few arrays that identify a generated dataset of any of the three generators."""
  if isinstance(ds, sr.RetrievalDataset):
    return [ds.train.text["w2v"], ds.test.experts["appearance"]]
  if isinstance(ds, sv.SyntheticVideoDataset):
    return [ds.train[0].frames, ds.test_videos[0].masks]
  return [ds.frames, ds.offsets]


def test_stale_spec_is_regenerated(tmp_path, warnings):
  spec = GENERATORS["video"][1]
  sv.load_or_generate(spec, str(tmp_path))
  other = dataclasses.replace(spec, seed=spec.seed + 1)
  os.replace(sv.cache_path(spec, str(tmp_path)), sv.cache_path(other, str(tmp_path)))
  sv.load_or_generate(other, str(tmp_path))  # A file under the wrong key: regenerated.
  assert warnings == [f"synthetic video cache {sv.cache_path(other, str(tmp_path))} was written "
                      f"for another spec; vtd regenerates it"]
