import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtd.teachtext import input_pipeline
from vtd.teachtext import models
from vtd.teachtext import teachers as teachers_lib


def _init(model, batch, emb="gpt"):
  return model.init(jax.random.key(0), batch["text"][emb], batch["experts"],
                    batch["available"], train=False)


@pytest.fixture
def batch(tiny_data):
  return next(input_pipeline.train_iterator(tiny_data.train, global_batch_size=8, seed=0,
                                            text_embeddings=["gpt", "w2v"]))


@pytest.mark.parametrize("arch", ["ce", "moee"])
def test_shapes_norms_and_weights(tiny_data, batch, smoke_config, arch):
  smoke_config.model.arch = arch
  model = teachers_lib.build_model(smoke_config.model, tiny_data.train.expert_dims().items())
  variables = _init(model, batch)
  text, weights, video = model.apply(variables, batch["text"]["gpt"], batch["experts"],
                                     batch["available"], train=False)
  assert len(text) == len(video) == 4
  for t, v, d in zip(text, video, model.embedding_dims):
    assert t.shape == (8, d) and v.shape == (8, d)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
  if arch == "moee":  # Raw per-expert dims: appearance 64, audio 24, motion 32, scene 48.
    assert model.embedding_dims == (64, 24, 32, 48)


def test_similarity_matches_loop():
  rng = np.random.default_rng(0)
  q, v, dims = 5, 4, (3, 6)
  text = [rng.normal(size=(q, d)) for d in dims]
  video = [rng.normal(size=(v, d)) for d in dims]
  w = rng.dirichlet(np.ones(2), size=q)
  avail = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], np.float32)
  got = np.asarray(models.similarity(text, jnp.asarray(w), video, jnp.asarray(avail)))
  for i in range(q):
    for j in range(v):
      ws = w[i] * avail[j]
      want = 0.0 if ws.sum() == 0 else sum(
          ws[m] / ws.sum() * text[m][i] @ video[m][j] for m in range(2))
      np.testing.assert_allclose(got[i, j], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["ce", "moee"])
def test_missing_expert_features_do_not_matter(tiny_data, batch, smoke_config, arch):
  """With an expert unavailable, its (zero-filled) input cannot change the similarity."""
  smoke_config.model.arch = arch
  model = teachers_lib.build_model(smoke_config.model, tiny_data.train.expert_dims().items())
  variables = _init(model, batch)
  available = dict(batch["available"], motion=np.zeros(8, np.float32))

  def sims(experts):
    t, w, v = model.apply(variables, batch["text"]["gpt"], experts, available, train=False)
    return np.asarray(models.similarity(t, w, v, models.stack_available(available,
                                                                        model.expert_names)))

  changed = dict(batch["experts"], motion=batch["experts"]["motion"] + 5.0)
  np.testing.assert_allclose(sims(batch["experts"]), sims(changed), atol=1e-6)


def test_torch_default_init_bounds():
  layer = models.TorchDense(7)
  params = layer.init(jax.random.key(0), jnp.zeros((1, 100)))["params"]
  bound = 1 / np.sqrt(100)
  assert np.abs(params["kernel"]).max() <= bound and np.abs(params["bias"]).max() <= bound
  assert np.abs(params["kernel"]).max() > 0.8 * bound  # Uniform, not normal, not tiny.


def test_moee_parameter_count_formula(tiny_data, batch, smoke_config):
  """Counts as the reference's formula: Linear in*out+out, BN 2d, NetVLAD D(K+G)+2(K+G)+DK."""
  smoke_config.model.arch = "moee"
  cfg = smoke_config.model
  model = teachers_lib.build_model(cfg, tiny_data.train.expert_dims().items())
  count = sum(x.size for x in jax.tree.leaves(_init(model, batch)["params"]))
  lin = lambda i, o: i * o + o
  vlad = lambda d, k, g: d * (k + g) + 2 * (k + g) + d * k
  geu = lambda i, o: lin(i, o) + lin(o, o) + 2 * o
  d_text, k, g = 64, cfg.text_clusters, cfg.text_ghost_clusters
  dims = {"appearance": 64, "audio": 24, "motion": 32, "scene": 48}
  text_in = d_text * k
  want = vlad(d_text, k, g) + lin(text_in, 4) + vlad(24, cfg.expert_clusters, 0)
  for name, d in dims.items():
    video_in = d * cfg.expert_clusters if name == "audio" else d
    want += geu(text_in, d) + geu(video_in, d)
  assert count == want
