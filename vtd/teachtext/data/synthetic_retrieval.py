r"""Embedded text-video retrieval dataset, generated deterministically (no downloads).

Generative model
----------------
* **Concepts.** A vocabulary of `num_concepts` concepts split evenly into four types:
  object, action, scene, sound. Within a type, concept frequency follows Zipf(1): a few
  concepts are common, so many videos share them (hard negatives, graded similarity).
* **Videos.** Video v draws a concept set C_v: 2 objects, 1 action, 1 scene, 1 sound
  (by frequency, without replacement within a type).
* **Video experts** (different dimensions, like RGB / motion / scene / audio extractors).
  Expert m sees the concepts of some types with fixed weights, through its own random
  "extractor": x_m = relu(A_m (sum_{c in C_v} w_m[type c] * U_m[c]) / sqrt(|C_v|)) + n, with
  U_m a random code book, A_m a random projection and n Gaussian noise:

  =========== ===== ============================== ====================================
  expert      dim   sees (weight)                  notes
  =========== ===== ============================== ====================================
  appearance   64   object 1.0, scene 0.5          always present
  motion       32   action 1.0, object 0.3         missing for 10 % of videos
  scene        48   scene 1.0, object 0.2          always present
  audio        24   sound                          token sequence [T <= 8, 24], one token
                                                   per sound event (2-8, mostly the video's
                                                   sound concept, some background noise
                                                   tokens); missing for 30 % ("silent")
  =========== ===== ============================== ====================================

  Missing experts are zero-filled and flagged unavailable, as CE expects.
* **Captions.** Each caption mentions a random subset of C_v (each concept kept with p=0.6,
  at least one), plus 0-2 function words shared by all captions, in random order. Training
  videos have `train_captions` captions; val/test videos have between `test_captions_min`
  and `test_captions_max` (padded slots masked), every caption an independent query.
  A fraction `wrong_caption_fraction` of *training* captions is replaced by a caption of
  another random video (label noise, as in crowd-sourced captions; 0 by default). Which ones
  is kept in `caption_noise`, to report the precision of denoising (never used to train).
* **Text embeddings** (K = 3, different dimensions): each is a word-level encoder
  E_k: word -> R^{D_k} with its own random code book, per-token Gaussian noise sigma_k, and
  its own *blind spots*: a random fraction `confusion` of each type's concepts is mapped
  (almost) onto one of the other, unconfused concepts of that type, so encoder k cannot tell
  the two apart. Each encoder's blind spots are drawn independently, so the encoders differ
  in quality and make *different* mistakes: their retrieval rankings are complementary, the
  property TeachText exploits.

  ========= ===== ======= ========= ===========================
  name      dim   noise   confusion  role (default configs)
  ========= ===== ======= ========= ===========================
  w2v         32   0.45    0.35      teacher
  gpt         64   0.35    0.25      teacher
  gpt_xl      96   0.30    0.20      teacher and student
  ========= ===== ======= ========= ===========================

Generation takes well under a second for the default sizes; the result is cached as .npz
under `cache_dir`, keyed by a hash of every generator parameter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from vtd.data import cache
from vtd.teachtext.data import retrieval
from vtd.teachtext.data.retrieval import RetrievalDataset, RetrievalSplit

TYPES = ("object", "action", "scene", "sound")
# expert -> (dim, {type: weight}, probability missing)
EXPERTS = {
    "appearance": (64, {"object": 1.0, "scene": 0.5}, 0.0),
    "motion": (32, {"action": 1.0, "object": 0.3}, 0.10),
    "scene": (48, {"scene": 1.0, "object": 0.2}, 0.0),
}
AUDIO_DIM, AUDIO_MAX_TOKENS, AUDIO_MISSING = 24, 8, 0.30
# embedding -> (dim, token noise, confusion fraction)
TEXT_EMBEDDINGS = {
    "w2v": (32, 0.45, 0.35),
    "gpt": (64, 0.35, 0.25),
    "gpt_xl": (96, 0.30, 0.20),
}
NUM_FUNCTION_WORDS = 8
MAX_CAPTION_TOKENS = 8


@dataclasses.dataclass(frozen=True)
class SyntheticRetrievalSpec:
  """Every parameter of the generator (the cache key)."""
  seed: int = 0
  num_train: int = 1200
  num_val: int = 200
  num_test: int = 600
  num_concepts: int = 240
  train_captions: int = 5
  test_captions_min: int = 3
  test_captions_max: int = 5
  expert_noise: float = 0.15
  wrong_caption_fraction: float = 0.0

  def cache_key(self) -> str:
    payload = json.dumps({**dataclasses.asdict(self), "experts": EXPERTS,
                          "text": TEXT_EMBEDDINGS, "version": 3}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class _World:
  """The fixed random objects shared by all splits: concepts, extractors, encoders."""

  def __init__(self, spec: SyntheticRetrievalSpec, rng: np.random.Generator):
    if spec.num_concepts % len(TYPES) or spec.num_concepts < 4 * len(TYPES):
      raise ValueError(f"num_concepts must be a multiple of {len(TYPES)} and >= "
                       f"{4 * len(TYPES)}, got {spec.num_concepts}")
    self.per_type = spec.num_concepts // len(TYPES)
    self.concept_type = np.repeat(np.arange(len(TYPES)), self.per_type)
    zipf = 1.0 / np.arange(1, self.per_type + 1)
    self.type_probs = zipf / zipf.sum()
    n_words = spec.num_concepts + NUM_FUNCTION_WORDS
    self.expert_codebooks = {}
    for name, (dim, _, _) in EXPERTS.items():
      self.expert_codebooks[name] = (rng.normal(size=(spec.num_concepts, dim)),
                                     rng.normal(size=(dim, dim)) / np.sqrt(dim))
    self.audio_codebook = rng.normal(size=(self.per_type + 1, AUDIO_DIM))  # +1: background
    self.encoders = {}
    for name, (dim, _, confusion) in TEXT_EMBEDDINGS.items():
      table = rng.normal(size=(n_words, dim))
      # Blind spots: a `confusion` fraction of each type's concepts is mapped next to a
      # partner drawn among the *unconfused* concepts of that type, so every blind spot is a
      # real conflation (no chains that would undo one another).
      for t in range(len(TYPES)):
        ids = t * self.per_type + rng.permutation(self.per_type)
        n_conf = int(round(confusion * self.per_type))
        confused, clean = ids[:n_conf], ids[n_conf:]
        partners = rng.choice(clean, size=n_conf)
        table[confused] = table[partners] + 0.1 * rng.normal(size=(n_conf, dim))
      self.encoders[name] = table / np.linalg.norm(table, axis=1, keepdims=True)

  def sample_concepts(self, rng: np.random.Generator) -> list[int]:
    counts = {"object": 2, "action": 1, "scene": 1, "sound": 1}
    concepts = []
    for t, name in enumerate(TYPES):
      picks = rng.choice(self.per_type, size=counts[name], replace=False, p=self.type_probs)
      concepts.extend(int(t * self.per_type + p) for p in picks)
    return concepts


def _make_split(world: _World, spec: SyntheticRetrievalSpec, rng: np.random.Generator,
                num_videos: int, name: str, caption_range: tuple[int, int],
                wrong_fraction: float) -> RetrievalSplit:
  concept_sets = [world.sample_concepts(rng) for _ in range(num_videos)]
  experts, available = {}, {}
  for ename, (dim, weights, p_missing) in EXPERTS.items():
    codebook, proj = world.expert_codebooks[ename]
    feats = np.zeros((num_videos, dim), np.float32)
    avail = rng.random(num_videos) >= p_missing
    for v, cs in enumerate(concept_sets):
      w = np.array([weights.get(TYPES[world.concept_type[c]], 0.0) for c in cs])
      z = (w[:, None] * codebook[cs]).sum(0) / np.sqrt(len(cs))
      feats[v] = np.maximum(proj @ z, 0.0) + spec.expert_noise * rng.normal(size=dim)
    feats[~avail] = 0.0
    experts[ename], available[ename] = feats, avail
  audio = np.zeros((num_videos, AUDIO_MAX_TOKENS, AUDIO_DIM), np.float32)
  audio_avail = rng.random(num_videos) >= AUDIO_MISSING
  sound_base = TYPES.index("sound") * world.per_type
  for v, cs in enumerate(concept_sets):
    if not audio_avail[v]:
      continue
    sound = [c - sound_base for c in cs if world.concept_type[c] == TYPES.index("sound")][0]
    n_tok = rng.integers(2, AUDIO_MAX_TOKENS + 1)
    ids = np.where(rng.random(n_tok) < 0.75, sound, world.per_type)  # else background
    audio[v, :n_tok] = world.audio_codebook[ids] + spec.expert_noise * rng.normal(
        size=(n_tok, AUDIO_DIM))
  experts["audio"], available["audio"] = audio, audio_avail

  k_min, k_max = caption_range
  caption_mask = np.zeros((num_videos, k_max), bool)
  for v in range(num_videos):
    caption_mask[v, :rng.integers(k_min, k_max + 1)] = True
  words = np.full((num_videos, k_max, MAX_CAPTION_TOKENS), -1, np.int64)
  wrong = np.zeros((num_videos, k_max), bool)
  for v in range(num_videos):
    for k in np.flatnonzero(caption_mask[v]):
      source = v
      if wrong_fraction > 0 and rng.random() < wrong_fraction:
        source = (v + 1 + rng.integers(num_videos - 1)) % num_videos
        wrong[v, k] = True
      cs = np.array(concept_sets[source])
      kept = cs[rng.random(len(cs)) < 0.6]
      if kept.size == 0:
        kept = cs[rng.integers(len(cs)):][:1]
      fillers = spec.num_concepts + rng.integers(NUM_FUNCTION_WORDS, size=rng.integers(3))
      tokens = rng.permutation(np.concatenate([kept, fillers]))[:MAX_CAPTION_TOKENS]
      words[v, k, :len(tokens)] = tokens
  text = {}
  for tname, (dim, noise, _) in TEXT_EMBEDDINGS.items():
    table = world.encoders[tname]
    feats = table[np.maximum(words, 0)] + noise / np.sqrt(dim) * rng.normal(size=words.shape +
                                                                              (dim,))
    feats[words < 0] = 0.0
    text[tname] = feats.astype(np.float32)
  ids = [f"{name}{v:05d}" for v in range(num_videos)]
  return RetrievalSplit(video_ids=ids, experts=experts, expert_available=available, text=text,
                        caption_mask=caption_mask, caption_noise=wrong)


def generate(spec: SyntheticRetrievalSpec) -> RetrievalDataset:
  """Generates the dataset for `spec` (deterministic in `spec`)."""
  rng = np.random.default_rng(spec.seed)
  world = _World(spec, rng)
  test_range = (spec.test_captions_min, spec.test_captions_max)
  if not 1 <= spec.test_captions_min <= spec.test_captions_max:
    raise ValueError(f"need 1 <= test_captions_min <= test_captions_max, got {test_range}")
  train = _make_split(world, spec, rng, spec.num_train, "train",
                      (spec.train_captions, spec.train_captions), spec.wrong_caption_fraction)
  val = _make_split(world, spec, rng, spec.num_val, "val", test_range, 0.0)
  test = _make_split(world, spec, rng, spec.num_test, "test", test_range, 0.0)
  return RetrievalDataset(train, val, test, description=f"synthetic retrieval {spec}")


def load_or_generate(spec: SyntheticRetrievalSpec, cache_dir: str | None) -> RetrievalDataset:
  """Loads the cached dataset for `spec`, generating (and caching) it on first use."""
  path = cache_dir and cache.cache_file(cache_dir, "synthetic_retrieval", spec.cache_key())
  what = "synthetic retrieval cache"
  return cache.load_or_generate(
      path, lambda: generate(spec),
      lambda p: retrieval.from_arrays(cache.load_entry(p, what), f"{what} {p}",
                                      description=f"synthetic retrieval {spec}"),
      lambda ds, p: cache.save_entry(p, retrieval.to_arrays(ds)))
