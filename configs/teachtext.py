r"""TeachText on the embedded synthetic retrieval data: 3 teachers, a baseline and a TT student.

Run:      python -m vtd.main --config=configs/teachtext.py --workdir=runs/tt
Smoke:    python -m vtd.main --config=configs/teachtext.py:smoke --workdir=runs/tt_smoke
Sweep:    python launch/sweep.py --config=configs/teachtext.py --workdir-root=runs/tt_sweep
Expected: see README.md "TeachText results" (numbers and runtime from real runs).

Presets (`--config=configs/teachtext.py:<preset>`):
  (none)  the default embedded run (CE, 3 teachers, <= 10 min on a 2-core CPU).
  smoke   the same pipeline on tiny data and models (~70 s cold on a 2-core CPU).
  moee    MoEE instead of CE for teachers and student.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Which method vtd.main runs (vtd/teachtext/train.py).
  config.method = "teachtext"
  # Master seed; every stage derives its own from it (students share one).
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # synthetic: the embedded generated dataset; npz: a file in vtd's retrieval format.
  config.data.source = "synthetic"
  # The .npz file for source=npz.
  config.data.path = ""
  # Where the generated dataset is cached ('' = regenerate every run).
  config.data.cache_dir = "~/.cache/vtd"
  # Generator parameters (vtd/data/synthetic_retrieval.py documents the model).
  config.data.synthetic = ml_collections.ConfigDict(dict(
      seed=0,  # Dataset seed (fixed across training seeds).
      num_train=1200,  # Training videos.
      num_val=200,  # Validation videos (model selection).
      num_test=600,  # Test videos.
      num_concepts=240,  # Concept vocabulary (multiple of 4).
      train_captions=5,  # Captions per training video.
      test_captions_min=3,  # Captions per val/test video: between min and max.
      test_captions_max=5,
      expert_noise=0.15,  # Gaussian noise std on video expert features.
      wrong_caption_fraction=0.0,  # Training captions replaced by another video's caption.
  ))

  config.model = ml_collections.ConfigDict()
  # ce (Collaborative Experts) | moee (Mixture of Embedding Experts).
  config.model.arch = "ce"
  # CE's shared embedding dimension d (ce_shared_dim); unused by MoEE.
  config.model.shared_dim = 128
  # NetVLAD clusters (and ghost clusters) pooling the word features of a caption.
  config.model.text_clusters = 8
  config.model.text_ghost_clusters = 1
  # NetVLAD clusters pooling token-sequence video experts (audio).
  config.model.expert_clusters = 4
  # Uniform mixture weights instead of text-predicted ones (the CE - MW ablation).
  config.model.freeze_moe_weights = False
  # Mish (else ReLU) in CE's pair module.
  config.model.use_mish = True
  # Linear layers in CE's pair module g.
  config.model.pair_layers = 3
  # Comma-separated video experts the models use ('' = all experts of the data).
  config.model.experts = ""

  config.loss = ml_collections.ConfigDict()
  # Max-margin ranking loss margin.
  config.loss.margin = 0.1
  # Average over the 2B(B-1) off-diagonal terms only (official fix_norm).
  config.loss.fix_norm = True

  config.teachers = ml_collections.ConfigDict()
  # One teacher is trained per text embedding listed here (comma-separated).
  config.teachers.text_embeddings = "w2v,gpt,gpt_xl"
  # Use already trained teacher artifacts instead (comma-separated `<stage>/model` dirs).
  config.teachers.artifact_dirs = ""

  config.student = ml_collections.ConfigDict()
  # The student's own (single) text embedding, the only one it needs at test time.
  config.student.text_embedding = "gpt_xl"
  # Also train the same student without distillation (student_baseline).
  config.student.train_baseline = True

  config.distill = ml_collections.ConfigDict()
  # lambda in L_r + lambda * L_d (official: 1).
  config.distill.weight = 1.0
  # Phi, aggregating the teachers' B x B matrices: mean | median | max | min.
  config.distill.aggregation = "mean"
  # L_d: smooth_l1 (official) | l2 | l1 | kl (row-softmax KL).
  config.distill.criterion = "smooth_l1"
  # Softmax temperature for criterion=kl.
  config.distill.temperature = 1.0
  # cached: precompute teacher embeddings once; live: run the teachers every step.
  config.distill.teacher_mode = "cached"

  # Training loop (vtd/train.py); an epoch is one pass over the training videos.
  # 100 epochs, as the official MSR-VTT recipe.
  config.train = common.training_loop(batch_size=64, num_epochs=100)
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 95  # Every 5 epochs (19 steps per epoch).
  config.train.checkpoint_every_steps = 95
  # Checkpoint selection as the official code: best validation t2v geometric mean R@1/5/10.
  config.train.best_metric = "t2v/geometric_mean_R1-R5-R10"
  # RAdam, lr 1e-3, wd 1e-5, lr x 0.95 per epoch: the CE+ / TT-CE+ recipe.
  config.optim = common.optimizer("radam", lr=1e-3, weight_decay=1e-5)

  config.eval = ml_collections.ConfigDict()
  # Rows per jitted embedding call at evaluation.
  config.eval.chunk_size = 1024
  # Queries per similarity chunk when ranking (bounds evaluation memory).
  config.eval.query_chunk = 2048

  config.distributed = common.distributed()
  config.runtime = common.runtime()

  if arg == "smoke":
    config.data.synthetic.update(num_train=128, num_val=32, num_test=48, num_concepts=64)
    # Two experts (one fixed, one NetVLAD-pooled with missing values): CE's M^2 pair calls
    # dominate compile time, and smoke runs are compile-bound.
    config.model.experts = "appearance,audio"
    config.model.shared_dim = 16
    config.model.text_clusters = 2
    config.model.expert_clusters = 2
    config.train.batch_size = 16
    config.train.num_epochs = 6
    config.train.log_every_steps = 8
    config.train.eval_every_steps = 16
    config.train.checkpoint_every_steps = 8
  elif arg == "moee":
    config.model.arch = "moee"
  elif arg:
    raise ValueError(f"unknown preset {arg!r}; expected smoke or moee")
  return config


def sweep(add):
  """Three seeds: the mean +- std rows of the README table."""
  common.seed_sweep(add)
