"""Tests for vtd.search.frame_level against a literal transcription of Algorithm 1."""

import numpy as np
import pytest

from vtd.errors import UserError
from vtd.search import frame_level, hamming


def _algorithm1(query_codes, gallery_codes, gallery_video, nbits, top_n, num_videos,
                exclude_video=None, frame_sim=lambda h, nbits: 1.0 - h / nbits):
  """Algorithm 1 for one query video, line by line (dicts S and X), brute-force search."""
  s = {}  # 1. global initialise
  h = hamming.hamming_distances_numpy(query_codes, gallery_codes)
  for qf in range(query_codes.shape[0]):  # 2.
    order = np.argsort(h[qf], kind="stable")  # 3. sorted list, ties -> lower gallery index
    if exclude_video is not None:
      order = order[gallery_video[order] != exclude_video]
    x = {}  # 4. local initialise
    for gf in order[:top_n]:  # 5.
      v = gallery_video[gf]  # 6.
      if x.get(v, 0) == 0:  # 7.
        s[v] = s.get(v, 0.0) + frame_sim(h[qf, gf], nbits)  # 8.
        x[v] = 1  # 9.
  out = np.zeros(num_videos)
  for v, score in s.items():
    out[v] = score / query_codes.shape[0]  # 13.
  return out


def _collection(seed, nbits=16, num_videos=12, num_queries=4):
  rng = np.random.default_rng(seed)
  cs = nbits // 8
  frames = rng.integers(1, 6, num_videos)
  gallery_video = np.repeat(np.arange(num_videos), frames)
  gallery = rng.integers(0, 256, (gallery_video.size, cs), dtype=np.uint8)
  qframes = rng.integers(1, 5, num_queries)
  query_video = np.repeat(np.arange(num_queries), qframes)
  queries = rng.integers(0, 256, (query_video.size, cs), dtype=np.uint8)
  # Near-duplicates: query q's frames copied (with one flipped bit) into video 2 q.
  for q in range(num_queries):
    src = queries[query_video == q]
    dst = np.flatnonzero(gallery_video == 2 * q)
    n = min(len(src), len(dst))
    gallery[dst[:n]] = src[:n] ^ np.uint8(4)
  return gallery, gallery_video, queries, query_video


def _reference(gallery, gallery_video, queries, query_video, nbits, top_n, num_videos,
               self_video=None, **kw):
  num_queries = query_video.max() + 1
  return np.stack([
      _algorithm1(queries[query_video == q], gallery, gallery_video, nbits, top_n, num_videos,
                  None if self_video is None else self_video[q], **kw)
      for q in range(num_queries)])


def _index(backend, nbits, gallery):
  index = hamming.make_index(backend, nbits, **({"chunk_size": 32} if backend == "jax" else {}))
  index.add(gallery)
  return index


@pytest.mark.parametrize("backend,top_n", [("faiss", 3), ("faiss", 10), ("faiss", 1000),
                                           ("jax", 10)])  # jax: one compilation
def test_matches_algorithm1(backend, top_n):
  nbits, num_videos = 16, 12
  gallery, gv, queries, qv = _collection(0, nbits, num_videos)
  want = _reference(gallery, gv, queries, qv, nbits, top_n, num_videos)
  got = frame_level.frame_level_scores(_index(backend, nbits, gallery), gv, num_videos, queries,
                                       qv, 4, nbits=nbits, top_n=top_n, batch_frames=5)
  np.testing.assert_allclose(got.dense(), want, rtol=1e-12, atol=0)
  assert np.all(got.score > 0)
  # The planted near-duplicate (video 2 q, one bit away) is always retrieved.
  assert np.all(got.dense()[np.arange(4), 2 * np.arange(4)] > 0)


def test_query_order_and_batching_do_not_matter():
  nbits, num_videos = 16, 12
  gallery, gv, queries, qv = _collection(1, nbits, num_videos)
  index = _index("faiss", nbits, gallery)
  one = frame_level.frame_level_scores(index, gv, num_videos, queries, qv, 4, nbits=nbits,
                                       top_n=7)
  perm = np.random.default_rng(0).permutation(len(qv))
  other = frame_level.frame_level_scores(index, gv, num_videos, queries[perm], qv[perm], 4,
                                         nbits=nbits, top_n=7, batch_frames=1)
  np.testing.assert_allclose(other.dense(), one.dense(), rtol=1e-12)


@pytest.mark.parametrize("kind", ["simhash_cos", "vote"])
def test_frame_similarity_variants(kind):
  nbits, num_videos = 16, 12
  gallery, gv, queries, qv = _collection(2, nbits, num_videos)
  sim = {"simhash_cos": lambda h, n: np.cos(np.pi * h / n), "vote": lambda h, n: 1.0}[kind]
  want = _reference(gallery, gv, queries, qv, nbits, 8, num_videos, frame_sim=sim)
  got = frame_level.frame_level_scores(_index("faiss", nbits, gallery), gv, num_videos, queries,
                                       qv, 4, nbits=nbits, top_n=8, frame_sim=kind)
  np.testing.assert_allclose(got.dense(), np.where(want > 0, want, 0), rtol=1e-12, atol=1e-15)


def test_exclude_self():
  nbits, num_videos = 16, 12
  gallery, gv, queries, qv = _collection(3, nbits, num_videos)
  # Make query q's own gallery video 2 q an exact copy: it dominates unless excluded.
  self_video = 2 * np.arange(4)
  for q in range(4):
    dst = np.flatnonzero(gv == 2 * q)
    gallery[dst] = queries[qv == q][np.arange(len(dst)) % np.sum(qv == q)]
  index = _index("faiss", nbits, gallery)
  for top_n in (2, 6):
    want = _reference(gallery, gv, queries, qv, nbits, top_n, num_videos, self_video)
    got = frame_level.frame_level_scores(index, gv, num_videos, queries, qv, 4, nbits=nbits,
                                         top_n=top_n, query_self_video=self_video)
    np.testing.assert_allclose(got.dense(), want, rtol=1e-12, atol=0)
    assert np.all(got.dense()[np.arange(4), self_video] == 0)
  # The id-based wrapper: query ids that are gallery ids are excluded, others are not.
  video_ids = [f"v{i}" for i in range(num_videos)]
  query_ids = ["v0", "v2", "v4", "not-in-gallery"]
  res = frame_level.frame_level_similarities(index, gv, video_ids, queries, qv, query_ids,
                                             nbits=nbits, top_n=6, exclude_self=True)
  want = _reference(gallery, gv, queries, qv, nbits, 6, num_videos, np.array([0, 2, 4, -1]))
  assert list(res) == query_ids
  for q, qid in enumerate(query_ids):
    assert list(res[qid]) == [video_ids[v] for v in np.flatnonzero(want[q] > 0)]  # db order
    np.testing.assert_allclose([res[qid][video_ids[v]] for v in np.flatnonzero(want[q] > 0)],
                               want[q][want[q] > 0], rtol=1e-12)


def test_zero_score_videos_are_omitted():
  nbits = 8
  gallery = np.array([[0x00], [0xFF], [0x0F]], np.uint8)  # videos 0, 1, 2
  gv = np.array([0, 1, 2])
  queries = np.array([[0x00]], np.uint8)
  res = frame_level.frame_level_similarities(_index("faiss", nbits, gallery), gv,
                                             ["a", "b", "c"], queries, [0], ["q"], nbits=nbits)
  # b is all bits away: similarity 1 - 8/8 = 0, so it is not retrieved at all.
  assert res == {"q": {"a": 1.0, "c": 0.5}}


def test_empty_gallery():
  res = frame_level.frame_level_similarities(_index("faiss", 8, np.zeros((0, 1), np.uint8)), [],
                                             [], np.zeros((2, 1), np.uint8), [0, 0], ["q"],
                                             nbits=8)
  assert res == {"q": {}}


def test_validation():
  index = _index("faiss", 8, np.zeros((3, 1), np.uint8))
  with pytest.raises(UserError, match="gallery_frame_video"):
    frame_level.frame_level_scores(index, [0, 1], 2, np.zeros((1, 1), np.uint8), [0], 1, nbits=8)
  with pytest.raises(UserError, match="frame_sim"):
    frame_level.frame_level_scores(index, [0, 1, 1], 2, np.zeros((1, 1), np.uint8), [0], 1,
                                   nbits=8, frame_sim="max")


def test_global_vectors():
  rng = np.random.default_rng(4)
  feats = rng.standard_normal((20, 6)).astype(np.float32)
  fv = rng.integers(0, 5, 20)
  fv[0] = 4
  got = frame_level.global_vectors(feats, fv, 6)  # video 5 has no frames
  for v in range(6):
    x = feats[fv == v]
    if not len(x):
      np.testing.assert_array_equal(got[v], 0)
      continue
    m = (x / np.linalg.norm(x, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(got[v], m / np.linalg.norm(m), rtol=1e-5, atol=1e-6)
  q = rng.standard_normal((3, 6))
  sims = frame_level.global_vector_similarities(q, got[:5], chunk_size=2)
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  np.testing.assert_allclose(sims, qn @ got[:5].T, rtol=1e-5, atol=1e-6)
  res = frame_level.similarity_dict(sims, ["x", "y", "z"], list("abcde"))
  for row, qid in enumerate("xyz"):
    assert list(res[qid]) == [c for c, s in zip("abcde", sims[row]) if s > 0]
