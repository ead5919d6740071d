"""Issue-04 extensions: denoising, QB-Norm at evaluation, video cost, RKD / within-modality in
the pipeline, caption-noise ground truth, and the ablation launcher's table."""

import json
import os

import jax
import numpy as np
import pytest

from launch import teachtext_ablation
from vtd import main as vtd_main
from vtd.teachtext.data import retrieval as retrieval_data
from vtd.teachtext.data import synthetic_retrieval
from vtd.errors import UserError
from vtd.evaluators import qbnorm
from vtd.evaluators.retrieval import metrics_from_ranks
from vtd.teachtext import denoise
from vtd.teachtext import evaluate as tt_evaluate
from vtd.teachtext import input_pipeline
from vtd.teachtext import teachers as teachers_lib
from vtd.teachtext.models import similarity
from tests.teachtext.test_pipeline import tiny_config


def _random_model(config, split, experts=None, seed=0):
  shapes = [(n, s) for n, s in split.expert_dims().items() if experts is None or n in experts]
  model = teachers_lib.build_model(config.model, shapes)
  batch = next(input_pipeline.train_iterator(split, global_batch_size=4, seed=0,
                                             text_embeddings=["gpt"]))
  variables = model.init(jax.random.key(seed), batch["text"]["gpt"], batch["experts"],
                         batch["available"], train=False)
  return model, variables


def _full_sims(emb):
  return np.asarray(similarity(emb["text"], emb["weights"], emb["video"], emb["available"]))


def test_caption_noise_is_recorded_and_round_trips(tmp_path):
  spec = synthetic_retrieval.SyntheticRetrievalSpec(num_train=200, num_val=8, num_test=8,
                                                    num_concepts=32,
                                                    wrong_caption_fraction=0.25)
  ds = synthetic_retrieval.generate(spec)
  noise = ds.train.caption_noise
  assert noise.shape == ds.train.caption_mask.shape and not (noise & ~ds.train.caption_mask).any()
  assert 0.18 < noise.sum() / ds.train.caption_mask.sum() < 0.32
  assert not ds.test.caption_noise.any()  # Only training captions are corrupted.
  retrieval_data.save_npz(ds, str(tmp_path / "d.npz"))
  loaded = retrieval_data.load_npz(str(tmp_path / "d.npz"))
  np.testing.assert_array_equal(loaded.train.caption_noise, noise)


def test_caption_ranks_match_brute_force(tiny_data, smoke_config):
  split = tiny_data.train
  embs = [tt_evaluate.embed_split(*_random_model(smoke_config, split, seed=s), split, "gpt",
                                  chunk_size=16) for s in (0, 1)]
  got = denoise.caption_ranks(embs, split.caption_mask, query_chunk=7)
  sims = (_full_sims(embs[0]) + _full_sims(embs[1])) / 2
  k = split.caption_mask.shape[1]
  for row in np.flatnonzero(split.caption_mask.reshape(-1)):
    s, gt = sims[row], sims[row, row // k]
    want = np.sum(s > gt) + (np.sum(s == gt) - 1) / 2
    assert got.reshape(-1)[row] == pytest.approx(want, abs=1e-6)
  assert np.isinf(got[~split.caption_mask]).all()


def test_select_captions_rules():
  mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
  ranks = np.array([[0.0, 9.0, 5.0], [7.0, 8.0, np.inf], [50.0, np.inf, np.inf]])
  # The worst 3 of 6 captions are 50, 9, 8, but video 2's only caption (50) and video 1's best
  # (7) are protected: the drop goes to 9, 8 and then 5.
  kept = denoise.select_captions(ranks, mask, fraction=0.5)
  np.testing.assert_array_equal(kept, [[1, 0, 0], [1, 0, 0], [1, 0, 0]])
  kept = denoise.select_captions(ranks, mask, max_rank=8)
  np.testing.assert_array_equal(kept, [[1, 0, 1], [1, 0, 0], [1, 0, 0]])
  with pytest.raises(UserError, match="exactly one"):
    denoise.select_captions(ranks, mask, fraction=0.2, max_rank=3)
  quality = denoise.removal_quality(kept, mask, np.array([[0, 1, 0], [0, 1, 0], [0, 0, 0]], bool))
  assert quality == {"captions": 6, "removed": 2, "noisy": 2, "precision": 1.0, "recall": 1.0,
                     "noise_rate_before": 2 / 6, "noise_rate_after": 0.0}


def _official_dis(test, bank, beta, k):
  """qb-norm's dynamic_inverted_softmax.py, literally (float64)."""
  retrieved = np.unique(np.argsort(-bank, axis=1)[:, :k])
  normalizing_sum = np.sum(np.exp(beta * bank), axis=0)
  out = test.astype(np.float64).copy()
  for q in range(len(out)):
    if np.argsort(-test[q])[0] in retrieved:
      out[q] = np.exp(beta * test[q]) / normalizing_sum
  return out


def test_qbnorm_evaluator_matches_official_procedure(tiny_data, smoke_config):
  model, variables = _random_model(smoke_config, tiny_data.train)
  beta, k = 5.0, 2
  scorer = tt_evaluate.Scorer.single(model, variables, "gpt", chunk_size=16)
  got = qbnorm.Evaluator(split="test", bank="train", beta=beta, k=k, bank_chunk=7,
                         query_chunk=5).run(scorer, tiny_data)
  test_emb = tt_evaluate.embed_split(model, variables, tiny_data.test, "gpt")
  bank_emb = tt_evaluate.embed_split(model, variables, tiny_data.train, "gpt")
  rows = np.flatnonzero(tiny_data.train.caption_mask.reshape(-1))
  bank = np.asarray(similarity(tuple(t[rows] for t in bank_emb["text"]),
                               bank_emb["weights"][rows], test_emb["video"],
                               test_emb["available"]))
  scores = _official_dis(_full_sims(test_emb), bank, beta, k)
  n_k = tiny_data.test.caption_mask.shape[1]
  valid = np.flatnonzero(tiny_data.test.caption_mask.reshape(-1))
  ranks = [np.sum(scores[q] > scores[q, q // n_k]) for q in valid]  # No ties here.
  want = metrics_from_ranks(np.array(ranks))
  for key in ("R1", "R5", "R10", "MdR", "MnR"):
    assert got.metrics[f"t2v/{key}"] == pytest.approx(want[key])
  # DIS rows are on different scales: no column ranking.
  assert not any(c.startswith("v2t") for c in got.metrics)
  assert got.info["querybank_size"] == len(rows)
  assert got.curves["recall_at_k"]["t2v"][0] == pytest.approx(want["R1"], abs=1e-3)


def test_video_cost_counts_only_the_models_experts(tiny_data, smoke_config):
  full = tt_evaluate.video_cost(*_random_model(smoke_config, tiny_data.train), tiny_data.test)
  one = tt_evaluate.video_cost(*_random_model(smoke_config, tiny_data.train, ["appearance"]),
                               tiny_data.test)
  assert one["experts"] == ["appearance"] and len(full["experts"]) == 4
  assert one["video_input_dims"] == 64 < full["video_input_dims"]
  assert 0 < one["video_params"] < full["video_params"]
  assert one["video_encode_ms_per_1k"] > 0


@pytest.mark.slow
def test_pipeline_with_every_extension(tmp_path):
  """RKD + within-modality (both terms) + denoising + QB-Norm + a 1-expert student under
  a 2-expert teacher, on noisy tiny data."""
  config = tiny_config(tmp_path)
  config.data.synthetic.wrong_caption_fraction = 0.3
  config.teachers.text_embeddings = "gpt"
  config.student.experts = "appearance"
  config.student.name = "student_rkd"
  config.distill.method = "rkd"
  config.distill.rkd_on = "both"
  config.within.caption_weight = 1.0
  config.within.video_weight = 0.5
  config.denoise.fraction = 0.2
  config.evals.qbnorm.enabled = True
  results = vtd_main.run(config, str(tmp_path / "run"))
  removal = results["denoise"]["removal"]
  assert removal["removed"] == round(0.2 * removal["captions"]) and removal["noisy"] > 0
  student = results["student_rkd"]
  assert student["distill_method"] == "rkd" and student["within"]
  assert student["train_captions"] == removal["captions"] - removal["removed"]
  assert student["test_cost"]["experts"] == ["appearance"]
  assert results["teacher_gpt"]["test_cost"]["experts"] == ["appearance", "audio"]
  assert all(c.startswith("t2v/") for c in student["evals"]["qbnorm"])
  assert student["eval_info"]["qbnorm"]["querybank_size"] == 320
  records = [json.loads(line) for line in open(tmp_path / "run" / "student_rkd" /
                                                "metrics.jsonl")]
  logged = set().union(*records)
  assert {"train/distill_loss", "train/caption_distill", "train/video_distill"} <= logged
  assert not results["student_baseline"]["within"]
  # The ablation table reads these files.
  os.makedirs(tmp_path / "abl" / "seed=0")
  os.symlink(tmp_path / "run", tmp_path / "abl" / "seed=0" / "rkd")
  table = teachtext_ablation.table(str(tmp_path / "abl"), [0])
  row = [l for l in table.splitlines() if l.startswith("| RKD instead")][0]
  assert row.endswith("| 64 | 1 |")
  assert f"{student['evals']['test']['t2v/R1']:.1f}" in row


def test_ablation_commands_reuse_the_base_teachers():
  cmds = teachtext_ablation.commands("runs/x", 1, ["--config.train.num_epochs=2"], "py")
  assert [c[4] for c in cmds] == [f"--workdir=runs/x/seed=1/{n}" for n in teachtext_ablation.RUNS]
  assert not any("artifact_dirs" in a for a in cmds[0])
  for cmd in cmds[1:]:
    assert "--config.teachers.artifact_dirs=runs/x/seed=1/base/teacher_w2v/model," \
           "runs/x/seed=1/base/teacher_gpt/model,runs/x/seed=1/base/teacher_gpt_xl/model" in cmd
    assert cmd[-1] == "--config.train.num_epochs=2" and "--config.seed=1" in cmd


def test_student_name_must_not_clash(tmp_path):
  config = tiny_config(tmp_path)
  config.student.name = "teacher_w2v"
  with pytest.raises(UserError, match="clashes"):
    vtd_main.run(config, str(tmp_path / "run"))
