"""vtd's retrieval .npz: validated when loaded (splits must agree), one-line errors for damage."""

import dataclasses
import os
import re

import numpy as np
import pytest

from configs import teachtext as tt_config
from vtd import main as vtd_main
from vtd.teachtext.data import retrieval
from vtd.teachtext.data import synthetic_retrieval as synth
from vtd.errors import UserError

SPEC = synth.SyntheticRetrievalSpec(num_train=24, num_val=8, num_test=10, num_concepts=32)


@pytest.fixture(scope="module")
def ds():
  return synth.generate(SPEC)


def _with_test(ds, **changes):
  return retrieval.RetrievalDataset(ds.train, ds.val, dataclasses.replace(ds.test, **changes))


def _saved(tmp_path, ds_or_arrays, name="d.npz"):
  path = str(tmp_path / name)
  arrays = ds_or_arrays if isinstance(ds_or_arrays, dict) else retrieval.to_arrays(ds_or_arrays)
  np.savez(path, **arrays)  # Written directly: save_npz would not get past validation.
  return path


def _test_split_changed(ds, kind, name, new):
  """Arrays of `ds` with test/<kind>/<name> replaced (bypassing the dataclass checks)."""
  arrays = retrieval.to_arrays(ds)
  arrays[f"test/{kind}/{name}"] = new
  return arrays


@pytest.mark.parametrize("kind,name,cut,what", [
    ("expert", "scene", np.s_[:, :40], "expert dim D"),
    ("expert", "audio", np.s_[:, :5], "token count T"),
    ("text", "w2v", np.s_[..., :30], "text dim D"),
    ("text", "gpt", np.s_[:, :, :6], "token count L"),
])
def test_splits_that_disagree_are_rejected_at_load(tmp_path, ds, kind, name, cut, what):
  arrays = _test_split_changed(ds, kind, name,
                               retrieval.to_arrays(ds)[f"test/{kind}/{name}"][cut])
  path = _saved(tmp_path, arrays)
  test_shape = list(arrays[f"test/{kind}/{name}"].shape)
  train_shape = list(arrays[f"train/{kind}/{name}"].shape)
  with pytest.raises(UserError) as e:
    retrieval.load_npz(path)
  message = str(e.value)
  assert message.startswith(f"{path}: key test/{kind}/{name} has shape {test_shape} but "
                            f"train/{kind}/{name} has {train_shape}; "), (what, message)
  assert "\n" not in message


def test_other_caption_slot_counts_are_fine(tmp_path, ds):
  # val / test keep fewer caption slots K than train: only the dims after K must agree.
  k = ds.test.captions_per_video - 1
  fewer = _with_test(ds, caption_mask=ds.test.caption_mask[:, :k], caption_noise=None,
                     text={n: v[:, :k] for n, v in ds.test.text.items()})
  retrieval.save_npz(fewer, str(tmp_path / "k.npz"))
  assert retrieval.load_npz(str(tmp_path / "k.npz")).test.captions_per_video == k


def test_missing_or_extra_arrays_and_values(tmp_path, ds):
  arrays = retrieval.to_arrays(ds)
  del arrays["val/expert/motion"], arrays["val/available/motion"]
  with pytest.raises(UserError, match=r"split 'val' has expert arrays \['appearance', 'audio', "
                                      r"'scene'\] but split 'train' has \['appearance', 'audio', "
                                      r"'motion', 'scene'\]"):
    retrieval.load_npz(_saved(tmp_path, arrays))
  bad = retrieval.to_arrays(ds)
  bad["test/expert/scene"] = bad["test/expert/scene"].copy()
  bad["test/expert/scene"][3, 1] = np.inf
  with pytest.raises(UserError, match=r"key test/expert/scene holds NaN or infinite values"):
    retrieval.load_npz(_saved(tmp_path, bad, "inf.npz"))
  bad = retrieval.to_arrays(ds)
  bad["train/caption_mask"] = bad["train/caption_mask"].astype(np.int8)
  with pytest.raises(UserError, match=r"array 'train/caption_mask' must be bool, got int8"):
    retrieval.load_npz(_saved(tmp_path, bad, "int.npz"))
  bad = {**retrieval.to_arrays(ds), "train/experts/scene": ds.train.experts["scene"]}
  with pytest.raises(UserError, match=r"unknown array 'train/experts/scene'"):
    retrieval.load_npz(_saved(tmp_path, bad, "typo.npz"))
  bad = retrieval.to_arrays(ds)
  bad["val/video_ids"] = np.asarray(["same"] * ds.val.num_videos)
  with pytest.raises(UserError, match=r"split 'val': video id 'same' occurs twice"):
    retrieval.load_npz(_saved(tmp_path, bad, "dup.npz"))


def test_damaged_files_are_one_line_errors(tmp_path, ds):
  """Three kinds of damage: random bytes, truncated, a zeroed block."""
  good = _saved(tmp_path, ds, "good.npz")
  raw = open(good, "rb").read()
  damaged = {
      "random": (np.random.default_rng(0).bytes(len(raw)), r"not an \.npz archive"),
      "truncated": (raw[:len(raw) // 2], r"damaged or not in the expected format "
                                         r"\(BadZipFile: File is not a zip file\)"),
      "zeroed": (raw[:len(raw) // 3] + bytes(4096) + raw[len(raw) // 3 + 4096:],
                 r"damaged or not in the expected format \((BadZipFile: Bad CRC-32|"
                 r"ValueError: member .* header)"),
  }
  for name, (data, match) in damaged.items():
    path = tmp_path / f"{name}.npz"
    path.write_bytes(data)
    with pytest.raises(UserError, match=match) as e:
      retrieval.load_npz(str(path))
    message = str(e.value)
    assert message.startswith(f"cannot read retrieval data file {path}: ") and "\n" not in message
    assert "allow_pickle" not in message and "re-create it" in message


def test_pickled_members_are_refused(tmp_path, ds):
  arrays = retrieval.to_arrays(ds)
  arrays["train/video_ids"] = np.asarray(ds.train.video_ids, dtype=object)
  path = str(tmp_path / "objects.npz")
  np.savez(path, **arrays)
  with pytest.raises(UserError, match=r"train/video_ids.npy holds pickled Python objects"):
    retrieval.load_npz(path)


def test_run_stops_before_any_stage(tmp_path, ds):
  """An npz whose test split has another text dim: one error, no stage started (before this,
  two teachers trained and the third crashed with ScopeParamShapeError)."""
  narrower = retrieval.to_arrays(ds)["test/text/w2v"][..., :30]
  arrays = _test_split_changed(ds, "text", "w2v", narrower)
  config = tt_config.get_config("smoke")
  config.data.source, config.data.path = "npz", _saved(tmp_path, arrays)
  config.runtime.compilation_cache_dir = ""
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match=re.escape("key test/text/w2v has shape")):
    vtd_main.run(config, str(workdir))
  stages = [d for d in os.listdir(workdir) if os.path.isdir(workdir / d)] \
      if workdir.exists() else []
  assert stages == []
