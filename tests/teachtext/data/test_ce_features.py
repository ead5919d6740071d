"""Tests for vtd.teachtext.data.ce_features on tiny files written in the official release's format."""

import logging
import math
import os
import sys
import types

import numpy as np
import pytest

from tests import ce_pickles
from vtd.teachtext.data import ce_features, ce_specs
from vtd.teachtext.data.retrieval import load_npz, save_npz
from vtd.errors import UserError

NAN = float("nan")


def _write_list(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def _caption(rng, n_tokens, dim):
  return rng.normal(size=(n_tokens, dim)).astype(np.float32)


@pytest.fixture
def msrvtt(tmp_path):
  """An MSR-VTT Full root: 3 train, 1 val, 2 test videos, 3 experts, 2 text embeddings."""
  rng = np.random.default_rng(0)
  spec = ce_specs.SPECS["msrvtt_full"]
  root = str(tmp_path / "MSRVTT" / "high-quality" / "structured-symlinks")
  os.makedirs(root)
  _write_list(os.path.join(root, "train_list_full.txt"), ["v0", "", "  v1 ", "v2"])
  _write_list(os.path.join(root, "val_list_full.txt"), ["v3"])
  _write_list(os.path.join(root, "test_list_full.txt"), ["v4", "v5"])
  vids = [f"v{i}" for i in range(6)]
  # Fixed expert as a dict: v1 missing (float NaN), v5 absent from the file.
  senet = {v: rng.normal(size=4).astype(np.float32) for v in vids[:5]}
  senet["v1"] = NAN
  ce_pickles.write_pickle(os.path.join(root, spec.expert_paths["imagenet.senet154.0"]), senet)
  # Fixed expert as an old ExpertStore: v2's row NaN, v4 listed as missing.
  store = rng.normal(size=(6, 3))
  store[2] = np.nan
  ce_pickles.write_expert_store(os.path.join(root, spec.expert_paths["scene.densenet161.0"]),
                                vids, store, missing={"v4"})
  # Token expert: T_v = 0, 5, 40 (> 29 max tokens), ...; v3 missing.
  audio = {v: rng.normal(size=(t, 2)).astype(np.float32)
           for v, t in zip(vids, (0, 5, 40, 1, 3, 29))}
  audio["v3"] = NAN
  ce_pickles.write_pickle(os.path.join(root, spec.expert_paths["audio"]), audio)
  counts = {"v0": 3, "v1": 1, "v2": 2, "v3": 3, "v4": 22, "v5": 1}
  tokens = {v: [int(t) for t in rng.integers(1, 45, size=c)] for v, c in counts.items()}
  tokens["v0"][1] = 40  # Longer than the 37 kept.
  text = {}
  for name, dim in (("w2v", 5), ("gpt2-xl", 7)):
    text[name] = {v: [_caption(rng, t, dim) for t in ts] for v, ts in tokens.items()}
    ce_pickles.write_pickle(os.path.join(root, "aggregated_text_feats", f"{name}.pkl"),
                            text[name])
  return types.SimpleNamespace(root=root, senet=senet, store=store, audio=audio, text=text,
                               tokens=tokens)


def _load(m, **kw):
  return ce_features.load_ce_dataset(
      m.root, "msrvtt_full", experts=["imagenet.senet154.0", "scene.densenet161.0", "audio"],
      text_embeddings=["w2v", "gpt2-xl"], dtype=np.float32, **kw)


def test_msrvtt_shapes_values_masks_and_availability(msrvtt, caplog):
  with caplog.at_level(logging.WARNING):
    ds = _load(msrvtt)
  tr, va, te = ds.train, ds.val, ds.test
  assert (tr.video_ids, va.video_ids, te.video_ids) == (["v0", "v1", "v2"], ["v3"], ["v4", "v5"])
  # Fixed dict expert: NaN -> zeros, unavailable; absent key -> unavailable with a warning.
  np.testing.assert_array_equal(tr.expert_available["imagenet.senet154.0"], [True, False, True])
  np.testing.assert_array_equal(tr.experts["imagenet.senet154.0"][1], 0.0)
  np.testing.assert_allclose(tr.experts["imagenet.senet154.0"][2], msrvtt.senet["v2"])
  np.testing.assert_array_equal(te.expert_available["imagenet.senet154.0"], [True, False])
  assert "1 of 2 videos of test_list_full.txt absent" in caplog.text
  # ExpertStore: NaN row and `missing` entry -> unavailable; values are the float16 rows.
  np.testing.assert_array_equal(tr.expert_available["scene.densenet161.0"], [True, True, False])
  np.testing.assert_array_equal(te.expert_available["scene.densenet161.0"], [False, True])
  np.testing.assert_array_equal(tr.experts["scene.densenet161.0"][2], 0.0)
  np.testing.assert_allclose(tr.experts["scene.densenet161.0"][0],
                             msrvtt.store[0].astype(np.float16))
  # Token expert: [N, 29, D], truncated and zero-padded; [0, D] stays available (official).
  audio = tr.experts["audio"]
  assert audio.shape == (3, 29, 2)
  np.testing.assert_array_equal(tr.expert_available["audio"], [True, True, True])
  np.testing.assert_array_equal(audio[0], 0.0)
  np.testing.assert_allclose(audio[1, :5], msrvtt.audio["v1"])
  np.testing.assert_array_equal(audio[1, 5:], 0.0)
  np.testing.assert_allclose(audio[2], msrvtt.audio["v2"][:29])
  assert not va.expert_available["audio"][0]
  # Text: train keeps all captions (K = 3), val the first one, test the first 20 of 22.
  for name, dim in (("w2v", 5), ("gpt2-xl", 7)):
    assert tr.text[name].shape == (3, 3, 37, dim)
    assert va.text[name].shape == (1, 1, 37, dim)
    assert te.text[name].shape == (2, 20, 37, dim)
  np.testing.assert_array_equal(tr.caption_mask, [[1, 1, 1], [1, 0, 0], [1, 1, 0]])
  np.testing.assert_array_equal(te.caption_mask.sum(1), [20, 1])
  w2v = msrvtt.text["w2v"]
  np.testing.assert_allclose(tr.text["w2v"][0, 1], w2v["v0"][1][:37])  # 40 tokens -> 37.
  n = msrvtt.tokens["v1"][0]
  np.testing.assert_allclose(tr.text["w2v"][1, 0, :n], w2v["v1"][0][:37])
  np.testing.assert_array_equal(tr.text["w2v"][1, 0, n:], 0.0)
  np.testing.assert_array_equal(tr.text["w2v"][1, 1:], 0.0)
  np.testing.assert_allclose(te.text["gpt2-xl"][0, 19, :msrvtt.tokens["v4"][19]],
                             msrvtt.text["gpt2-xl"]["v4"][19][:37])
  assert ds.text_embeddings == ["gpt2-xl", "w2v"]


def test_default_dtype_is_float16_and_splits_subset(msrvtt):
  ds = ce_features.load_ce_dataset(msrvtt.root, "msrvtt_full", experts=["audio"],
                                   text_embeddings=["w2v"], splits=("test",))
  assert ds.test.text["w2v"].dtype == np.float16 and ds.test.experts["audio"].dtype == np.float16
  assert ds.train.num_videos == 0 and ds.train.text["w2v"].shape == (0, 20, 37, 5)
  assert ds.val.experts["audio"].shape == (0, 29, 2)


def test_reader_does_not_need_datastructures_module(msrvtt):
  assert "datastructures" not in sys.modules
  path = os.path.join(msrvtt.root, ce_specs.SPECS["msrvtt_full"].expert_paths[
      "scene.densenet161.0"])
  data = ce_features.load_feature_file(path)
  assert "datastructures" not in sys.modules
  assert math.isnan(data["v4"]) and np.isnan(data["v2"]).all() and data["v0"].shape == (3,)


def test_npz_round_trip_and_cli(msrvtt, tmp_path):
  ds = _load(msrvtt)
  path = str(tmp_path / "ce.npz")
  save_npz(ds, path)
  back = load_npz(path)
  for split in ce_specs.SPLITS:
    a, b = ds.split(split), back.split(split)
    assert a.video_ids == b.video_ids
    np.testing.assert_array_equal(a.caption_mask, b.caption_mask)
    for k in a.experts:
      np.testing.assert_array_equal(a.experts[k], b.experts[k])
      np.testing.assert_array_equal(a.expert_available[k], b.expert_available[k])
    for k in a.text:
      np.testing.assert_array_equal(a.text[k], b.text[k])
  cli_out = str(tmp_path / "cli.npz")
  ce_features.main(["--data_dir", str(tmp_path), "--dataset", "msrvtt_full", "--out", cli_out,
                    "--experts", "audio,imagenet.senet154.0", "--text", "w2v",
                    "--dtype", "float32"])
  cli = load_npz(cli_out)
  np.testing.assert_array_equal(cli.test.text["w2v"], ds.test.text["w2v"])
  assert cli.train.expert_names == ["audio", "imagenet.senet154.0"]


def test_errors_name_missing_files_and_ids(msrvtt):
  spec = ce_specs.SPECS["msrvtt_full"]
  with pytest.raises(UserError, match=r"msrvtt_full: expert 'speech' file not found: .*"
                                      r"aggregated_speech/speech-w2v\.pickle"):
    ce_features.load_ce_dataset(msrvtt.root, "msrvtt_full", experts=["speech"],
                                text_embeddings=["w2v"])
  with pytest.raises(UserError, match=r"text embedding 'gpt2-xl-finetune' file not found: "
                                      r".*aggregated_text_feats/gpt2-xl-finetune\.pkl"):
    ce_features.load_ce_dataset(msrvtt.root, "msrvtt_full", experts=["audio"],
                                text_embeddings=["gpt2-xl-finetune"])
  text = dict(msrvtt.text["w2v"])
  del text["v4"], text["v5"]
  ce_pickles.write_pickle(os.path.join(msrvtt.root, "partial.pkl"), text)
  with pytest.raises(UserError, match=r"partial\.pkl \(w2v\): 2 of the split's 2 videos have "
                                      r"no captions, e.g. \['v4', 'v5'\]"):
    ce_features.load_ce_dataset(msrvtt.root, "msrvtt_full", experts=["audio"],
                                text_embeddings=["w2v"], text_paths={"w2v": "partial.pkl"})
  os.remove(os.path.join(msrvtt.root, spec.split_lists["val"]))
  with pytest.raises(UserError, match=r"split list not found: .*val_list_full\.txt"):
    _load(msrvtt)
  with pytest.raises(UserError, match="unknown CE dataset"):
    ce_features.load_ce_dataset(msrvtt.root, "msrvtt")


def test_fused_dataset_with_mp4_ids(tmp_path):
  """DiDeMo: `.mp4` ids, captions fused into one paragraph cut at 48 tokens, K = 1."""
  rng = np.random.default_rng(1)
  root = str(tmp_path)
  for split, lines in (("train", ["a.mp4", "b.mp4"]), ("val", ["c.mp4"]), ("test", ["d.mp4"])):
    _write_list(os.path.join(root, f"{split}_list.txt"), lines)
  counts = {"a": (10, 30, 20), "b": (5,), "c": (7, 8), "d": (50, 3)}
  text = {v: [_caption(rng, t, 4) for t in ts] for v, ts in counts.items()}
  ce_pickles.write_pickle(os.path.join(root, "aggregated_text_feats", "w2v.pkl"), text)
  feats = {v: rng.normal(size=6).astype(np.float32) for v in counts}
  ce_pickles.write_pickle(os.path.join(root, "feats.pkl"), feats)
  ds = ce_features.load_ce_dataset(root, "didemo", experts=["rgb"], text_embeddings=["w2v"],
                                   expert_paths={"rgb": "feats.pkl"}, dtype=np.float32)
  assert ds.train.video_ids == ["a", "b"] and ds.test.video_ids == ["d"]
  assert ds.train.text["w2v"].shape == (2, 1, 48, 4)
  np.testing.assert_allclose(ds.train.text["w2v"][0, 0], np.concatenate(text["a"])[:48])
  np.testing.assert_allclose(ds.train.text["w2v"][1, 0, :5], text["b"][0])
  np.testing.assert_array_equal(ds.train.text["w2v"][1, 0, 5:], 0.0)
  np.testing.assert_allclose(ds.test.text["w2v"][0, 0], text["d"][0][:48])
  assert ds.val.caption_mask.tolist() == [[True]]
  np.testing.assert_allclose(ds.train.experts["rgb"][1], feats["b"])


def test_shared_list_and_caption_index(msrvtt):
  """MSR-VTT 1k-A: val = test from one list (one object), one caption chosen by index file."""
  root = msrvtt.root
  _write_list(os.path.join(root, "train_list_jsfusion.txt"), ["v0", "v1"])
  _write_list(os.path.join(root, "val_list_jsfusion.txt"), ["v4", "v3"])
  ce_pickles.write_pickle(os.path.join(root, "jsfusion_val_caption_idx.pkl"), {"v3": 2, "v4": 7})
  ds = ce_features.load_ce_dataset(root, "msrvtt_1ka", experts=["audio"],
                                   text_embeddings=["w2v"], dtype=np.float32)
  assert ds.val is ds.test and ds.test.captions_per_video == 1
  w2v = msrvtt.text["w2v"]
  np.testing.assert_allclose(ds.test.text["w2v"][0, 0, :msrvtt.tokens["v4"][7]],
                             w2v["v4"][7][:37])
  np.testing.assert_allclose(ds.test.text["w2v"][1, 0, :msrvtt.tokens["v3"][2]],
                             w2v["v3"][2][:37])
  assert ds.train.captions_per_video == 3  # Training keeps every caption.


def test_npy_dict_restricted_unpickler_and_hickle(tmp_path):
  feats = {"x": np.arange(3, dtype=np.float16), "y": NAN}
  path = str(tmp_path / "f.npy")
  np.save(path, np.array(feats, dtype=object), allow_pickle=True)
  data = ce_features.load_feature_file(path)
  np.testing.assert_array_equal(data["x"], feats["x"])
  assert math.isnan(data["y"])
  plain = str(tmp_path / "plain.npy")
  np.save(plain, np.ones((2, 2)))
  np.testing.assert_array_equal(ce_features.load_feature_file(plain), 1.0)

  class Evil:
    def __reduce__(self):
      return (os.system, ("true",))
  ce_pickles.write_pickle(str(tmp_path / "evil.pkl"), {"x": Evil()})
  with pytest.raises(UserError, match=r"evil\.pkl: damaged .*refusing to load global"):
    ce_features.load_feature_file(str(tmp_path / "evil.pkl"))
  with pytest.raises(UserError, match="hickle files are not supported"):
    open(tmp_path / "a.hickle", "wb").close()
    ce_features.load_feature_file(str(tmp_path / "a.hickle"))

@pytest.mark.parametrize("payload,match", [
    # EMPTY_DICT, LONG_BINPUT 10**7, STOP: the C unpickler would grow its memo to 2 x 10**7
    # slots (a 1.5e9 index, seen in fuzzing, zero-fills 24 GB); any index beyond the file's
    # size is damage.
    (b"\x80\x02}r" + (10**7).to_bytes(4, "little") + b".", r"LONG_BINPUT 10000000 at byte 4"),
    (b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"x.", r"BINBYTES8 of 4611686018427387904"),
    (b"\x80\x04\x95" + (2**63 + 5).to_bytes(8, "little") + b"}.", r"FRAME 9223372036854775813"),
    (b"\x80\x04}", r"EOFError: pickle data was truncated"),
    (b"\x80\x04}\xff.", r"invalid opcode 0xff at byte 3"),
])
def test_damaged_pickle_sizes_fail_before_unpickling(tmp_path, payload, match):
  path = tmp_path / "damaged.pkl"
  path.write_bytes(payload)
  with pytest.raises(UserError, match=r"cannot read feature file .*damaged\.pkl: damaged or not "
                                      r"in the expected format \(.*" + match):
    ce_features.load_feature_file(str(path))
  # The same stream behind a .npy header (zsvision's pickled-dict .npy files).
  npy = tmp_path / "damaged.npy"
  header = tmp_path / "header.npy"
  np.save(header, np.array({"v": 1}, dtype=object), allow_pickle=True)
  with open(header, "rb") as f:
    assert np.lib.format.read_magic(f) == (1, 0)
    np.lib.format.read_array_header_1_0(f)
    start = f.tell()  # The pickle follows the header.
  npy.write_bytes(header.read_bytes()[:start] + payload)
  with pytest.raises(UserError, match=r"damaged\.npy: damaged"):
    ce_features.load_feature_file(str(npy))


def test_float16_overflow_and_not_found_values(tmp_path):
  root = str(tmp_path)
  for split in ("train", "val", "test"):
    _write_list(os.path.join(root, f"{split}_list.txt"), ["a"])
  ce_pickles.write_pickle(os.path.join(root, "text.pkl"), {"a": [np.full((2, 3), 1e5, np.float32)]})
  ce_pickles.write_pickle(os.path.join(root, "e.pkl"), {"a": np.ones(2)})
  kw = dict(experts=["e"], expert_paths={"e": "e.pkl"}, text_embeddings=["t"],
            text_paths={"t": "text.pkl"})
  with pytest.raises(UserError, match="beyond float16's range; use float32"):
    ce_features.load_ce_dataset(root, "msvd", **kw)
  assert ce_features.load_ce_dataset(root, "msvd", dtype=np.float32, **kw).test.num_videos == 1
  # A caption without tokens keeps its slot (caption k stays slot k), masked.
  ce_pickles.write_pickle(os.path.join(root, "text.pkl"), {"a": [np.zeros((0, 3)), np.ones((2, 3))]})
  ds = ce_features.load_ce_dataset(root, "msvd", **kw)
  assert ds.train.caption_mask.tolist() == [[False, True]]
  np.testing.assert_array_equal(ds.train.text["t"][0, 1, :2], 1.0)
  with pytest.raises(UserError, match="expert set is NOT FOUND"):
    ce_features.load_ce_dataset(root, "vatex", text_embeddings=["t"])
  with pytest.raises(UserError, match="max text tokens are NOT FOUND"):
    ce_features.load_ce_dataset(root, "vatex", dtype=np.float32, **kw)
  with pytest.raises(UserError, match="hickle"):
    ce_features.load_ce_dataset(root, "queryd", experts=["audio"], text_embeddings=["t"])


def test_teacher_embeddings(tmp_path):
  rng = np.random.default_rng(2)
  teacher = {v: {"vid_embds": {"audio": rng.normal(size=4), "rgb": rng.normal(size=4)},
                 "text_embds": {"audio": rng.normal(size=(n, 4)), "rgb": rng.normal(size=(n, 4))}}
             for v, n in (("a", 3), ("b", 1), ("c", 2))}
  path = str(tmp_path / "teacher.pkl")
  ce_pickles.write_pickle(path, teacher)
  emb = ce_features.load_teacher_embeddings(path, ["b", "a"], [1, 3])
  assert sorted(emb.video) == ["audio", "rgb"] and emb.text["rgb"].shape == (2, 3, 4)
  np.testing.assert_allclose(emb.video["rgb"][0], teacher["b"]["vid_embds"]["rgb"])
  np.testing.assert_allclose(emb.text["audio"][1], teacher["a"]["text_embds"]["audio"])
  np.testing.assert_array_equal(emb.text["audio"][0, 1:], 0.0)
  with pytest.raises(UserError, match=r"teacher\.pkl: 1 of 2 videos missing, e.g. \['z'\]"):
    ce_features.load_teacher_embeddings(path, ["a", "z"], [1, 1])
  with pytest.raises(UserError, match="1 caption embeddings for 2 captions"):
    ce_features.load_teacher_embeddings(path, ["b"], [2])


def test_spec_table_is_consistent():
  for name, spec in ce_specs.SPECS.items():
    assert spec.name == name and set(spec.split_lists) == set(ce_specs.SPLITS)
    assert set(spec.variable_experts) <= set(spec.expert_paths)
    assert set(spec.default_experts or ()) <= set(spec.expert_paths)
    assert not set(spec.default_experts or ()) & set(spec.unsupported)
    assert spec.text_file("w2v") == (f"{spec.text_dir}/w2v.pkl",)
  msrvtt = ce_specs.SPECS["msrvtt_full"]
  assert msrvtt.expert_paths["imagenet.senet154.0"] == (  # Reference §5.1, verbatim.
      "aggregated_imagenet_25fps_256px_stride1_offset0/senet154-avg.pickle")
  assert msrvtt.variable_experts == {"audio": 29, "speech": 32, "ocr": 49}
  assert ce_features.default_roots("data", "lsmdc") == (
      os.path.join("data", "LSMDC", "high-quality", "structured-symlinks"),
      os.path.join("data", "LSMDC", "structured-symlinks"))


def test_teachtext_config_reads_ce_source(msrvtt):
  from configs import teachtext as teachtext_config
  from vtd.teachtext import trainer as tt_train
  assert {d for d, *_ in teachtext_config.CE_PRESETS.values()} <= set(ce_specs.SPECS)
  config = teachtext_config.get_config("msrvtt")
  assert config.data.source == "ce" and config.data.dataset == "msrvtt_full"
  config.data.root = msrvtt.root
  config.data.experts = "imagenet.senet154.0,scene.densenet161.0,audio"
  config.teachers.text_embeddings = "w2v"
  config.student.text_embedding = "gpt2-xl"
  data = tt_train.load_data(config.data, ["w2v", "gpt2-xl"])
  assert (data.train.num_videos, data.val.num_videos, data.test.num_videos) == (3, 1, 2)
  assert sorted(data.train.text) == ["gpt2-xl", "w2v"]
  assert data.train.text["w2v"].dtype == np.float16
  assert tt_train.model_experts("", data.train)[0] == ("audio", (29, 2))
  config.data.root = ""
  with pytest.raises(UserError, match="config.data.root"):
    tt_train.load_data(config.data, ["w2v", "gpt2-xl"])
