import numpy as np
import pytest

from vtd.teachtext.data import retrieval
from vtd.teachtext.data import synthetic_retrieval as synth
from vtd.errors import UserError

SPEC = synth.SyntheticRetrievalSpec(num_train=40, num_val=10, num_test=12, num_concepts=32)


def test_deterministic_and_shaped():
  a, b = synth.generate(SPEC), synth.generate(SPEC)
  for split in ("train", "val", "test"):
    sa, sb = a.split(split), b.split(split)
    for k in sa.text:
      np.testing.assert_array_equal(sa.text[k], sb.text[k])
    for k in sa.experts:
      np.testing.assert_array_equal(sa.experts[k], sb.experts[k])
  assert a.train.expert_dims() == {"appearance": (64,), "audio": (8, 24), "motion": (32,),
                                   "scene": (48,)}
  assert {k: a.train.text_dim(k) for k in a.text_embeddings} == {"gpt": 64, "gpt_xl": 96,
                                                                  "w2v": 32}
  assert a.train.caption_mask.all() and a.train.captions_per_video == 5
  counts = a.test.caption_mask.sum(1)
  assert counts.min() >= 3 and counts.max() <= 5
  c = synth.generate(synth.SyntheticRetrievalSpec(**{**SPEC.__dict__, "seed": 1}))
  assert not np.array_equal(a.train.text["w2v"], c.train.text["w2v"])


def test_missing_experts_are_zero_and_flagged():
  ds = synth.generate(synth.SyntheticRetrievalSpec(num_train=400, num_val=10, num_test=12,
                                                   num_concepts=32))
  for name in ("audio", "motion"):
    avail = ds.train.expert_available[name]
    assert 0.5 < avail.mean() < 0.99
    assert not ds.train.experts[name][~avail].any()
    assert ds.train.experts[name][avail].any(axis=tuple(range(1, ds.train.experts[name].ndim))
                                             ).all()
  assert ds.train.expert_available["appearance"].all()


def test_text_encoders_have_different_blind_spots():
  """Each encoder conflates its own random concept pairs: complementary mistakes."""
  world = synth._World(synth.SyntheticRetrievalSpec(num_concepts=240),
                       np.random.default_rng(0))

  def conflated(name):
    table = world.encoders[name][:240]
    cos = table @ table.T
    np.fill_diagonal(cos, 0)
    return {tuple(sorted(p)) for p in zip(*np.nonzero(cos > 0.95))}

  sets = {n: conflated(n) for n in synth.TEXT_EMBEDDINGS}
  # Each confused concept is conflated with its partner (and with others sharing it).
  conflated_concepts = {n: len({c for p in s for c in p}) for n, s in sets.items()}
  for name, (_, _, confusion) in synth.TEXT_EMBEDDINGS.items():
    assert conflated_concepts[name] >= confusion * 240  # Quality differs as documented...
  for a in sets:
    for b in sets:
      if a < b:  # ...and the mistakes mostly differ.
        assert len(sets[a] & sets[b]) < 0.2 * min(len(sets[a]), len(sets[b]))


def test_wrong_captions_are_injected_only_in_train():
  clean = synth.generate(SPEC)
  noisy = synth.generate(synth.SyntheticRetrievalSpec(**{**SPEC.__dict__,
                                                         "wrong_caption_fraction": 0.5}))
  assert not np.array_equal(clean.train.text["gpt"], noisy.train.text["gpt"])


def test_cache_and_npz_round_trip(tmp_path):
  ds = synth.load_or_generate(SPEC, str(tmp_path))
  files = list(tmp_path.glob("synthetic_retrieval_*.npz"))
  assert len(files) == 1
  again = synth.load_or_generate(SPEC, str(tmp_path))
  np.testing.assert_array_equal(ds.test.text["w2v"], again.test.text["w2v"])
  assert again.test.video_ids == ds.test.video_ids
  np.testing.assert_array_equal(ds.val.expert_available["audio"],
                                again.val.expert_available["audio"])


def test_npz_errors(tmp_path):
  with pytest.raises(UserError, match="not found"):
    retrieval.load_npz(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "bad.npz", **{"train/video_ids": np.array(["a"])})
  with pytest.raises(UserError, match="missing array 'train/caption_mask'"):
    retrieval.load_npz(str(tmp_path / "bad.npz"))
