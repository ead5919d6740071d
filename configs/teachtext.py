r"""TeachText on the embedded synthetic retrieval data: 3 teachers, a baseline and a TT student.

Run:      python -m vtd.main --config=configs/teachtext.py --workdir=runs/tt
Smoke:    python -m vtd.main --config=configs/teachtext.py:smoke --workdir=runs/tt_smoke
Sweep:    python launch/sweep.py --config=configs/teachtext.py --workdir-root=runs/tt_sweep
Expected: see README.md "TeachText results" (numbers and runtime from real runs).

Presets (`--config=configs/teachtext.py:<preset>`):
  (none)  the default embedded run (CE, 3 teachers, <= 10 min on a 2-core CPU).
  smoke   the same pipeline on tiny data and models (~70 s cold on a 2-core CPU).
  moee    MoEE instead of CE for teachers and student.
  msrvtt, msrvtt_1ka, msvd, didemo, activitynet, lsmdc
          the released features of the official code (TT-CE+ recipe), e.g.
          --config=configs/teachtext.py:msrvtt
          --config.data.root=data/MSRVTT/high-quality/structured-symlinks
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Which method vtd.main runs (vtd/teachtext/pipeline.py).
  config.method = "teachtext"
  # Master seed; every stage derives its own from it (students share one).
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # synthetic: the embedded generated dataset; npz: a file in vtd's retrieval format; ce: the
  # released feature archives of the official TeachText / CE code (vtd/teachtext/data/ce_features.py).
  config.data.source = "synthetic"
  # The .npz file for source=npz.
  config.data.path = ""
  # source=ce: the feature root (e.g. data/MSRVTT/high-quality/structured-symlinks), the
  # dataset key (msrvtt_full, msrvtt_1ka, msrvtt_1kb, msvd, didemo, activitynet, lsmdc, queryd,
  # vatex), its video experts ('' = the dataset's default set), the folder of the split lists
  # ('' = root) and the feature dtype in memory (float16 halves it; README "Real datasets").
  config.data.root = ""
  config.data.dataset = ""
  config.data.experts = ""
  config.data.split_dir = ""
  config.data.dtype = "float16"
  # Where the generated dataset is cached ('' = regenerate every run).
  config.data.cache_dir = "~/.cache/vtd"
  # Generator parameters (vtd/teachtext/data/synthetic_retrieval.py documents the model).
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
  # Comma-separated video experts of the teachers ('' = model.experts). More experts than
  # student.experts = video-modality distillation.
  config.teachers.experts = ""

  config.student = ml_collections.ConfigDict()
  # The student's own (single) text embedding, the only one it needs at test time.
  config.student.text_embedding = "gpt_xl"
  # Also train the same student without distillation (student_baseline).
  config.student.train_baseline = True
  # Stage / results name of the distilled student.
  config.student.name = "student_teachtext"
  # Comma-separated video experts of both students ('' = model.experts): fewer than the
  # teachers' gives video-modality distillation (cheaper at test time).
  config.student.experts = ""

  config.distill = ml_collections.ConfigDict()
  # lambda in L_r + lambda * L_d (official: 1); 0 = no distillation from the teachers.
  config.distill.weight = 1.0
  # teachtext: L_d on the B x B similarity matrices (below) | rkd: relational KD (Park et al.
  # 2019) of the student's joint-space embeddings towards each teacher's (vtd/losses/
  # relational.py), averaged over teachers; the RKD baseline of the ablation.
  config.distill.method = "teachtext"
  # RKD: distance- and angle-wise weights (RKD README: 1 and 2) and which embeddings are
  # related: text | video | both (not fixed by either paper).
  config.distill.rkd_distance_weight = 1.0
  config.distill.rkd_angle_weight = 2.0
  config.distill.rkd_on = "text"
  # Phi, aggregating the teachers' B x B matrices: mean | median | max | min.
  config.distill.aggregation = "mean"
  # L_d: smooth_l1 (official) | l2 | l1 | kl (row-softmax KL).
  config.distill.criterion = "smooth_l1"
  # Softmax temperature for criterion=kl.
  config.distill.temperature = 1.0
  # cached: precompute teacher embeddings once; live: run the teachers every step.
  config.distill.teacher_mode = "cached"

  # "From Within to Between" (Tran et al. 2022; vtd/losses/within_modality.py), on the
  # distilled student only: KL(row-softmax(S_tt / t) || row-softmax(S_tv / t)) for captions,
  # the same with S_vv and S_tv^T for videos. Released configs: caption 1.0 at t = 5, video 0.
  config.within = ml_collections.ConfigDict()
  config.within.caption_weight = 0.0
  config.within.caption_temperature = 5.0
  config.within.video_weight = 0.0
  config.within.video_temperature = 5.0
  # Stop gradients through S_tt / S_vv (the official code does not).
  config.within.stop_gradient = False

  # Caption denoising (vtd/teachtext/denoise.py): the teachers rank each training caption's
  # own video; the students train without the noisiest. Set one of the two (0 = off):
  config.denoise = ml_collections.ConfigDict()
  # Drop this fraction of the training captions (worst teacher rank first).
  config.denoise.fraction = 0.0
  # Or drop every caption whose own video ranks at or below this (0-based rank >= max_rank).
  config.denoise.max_rank = 0.0

  # Evaluators (vtd/evaluators/<type>.py), run on every trained model; `val` selects the
  # checkpoint (train.best_metric is one of its columns), the others are reported in
  # results.json and the printed tables. Changing them re-evaluates, never retrains.
  config.evals = ml_collections.ConfigDict()
  # Validation split, during training (every train.eval_every_steps).
  config.evals.val = dict(type="retrieval", split="val")
  # The official t2v / v2t metrics on the test split.
  config.evals.test = dict(type="retrieval", split="test")
  # QB-Norm with Dynamic Inverted Softmax (vtd/evaluators/qbnorm.py), t2v only: querybank =
  # the captions of `bank` (official default: train), inverse temperature beta and top-k of
  # the activation set (official defaults 20 and 1); bank_chunk rows per streamed chunk
  # (512 was the fastest on a 2-core CPU, bench/qbnorm_dis.py).
  config.evals.qbnorm = dict(type="qbnorm", enabled=False, split="test", bank="train",
                             beta=20.0, k=1, bank_chunk=512)

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
  # Rows per jitted embedding call at evaluation (speed only; results are identical).
  config.eval.chunk_size = 1024

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
  elif arg in CE_PRESETS:
    _ce_preset(config, arg)
  elif arg:
    raise ValueError(f"unknown preset {arg!r}; expected smoke, moee or one of "
                     f"{sorted(CE_PRESETS)}")
  return config


# Real-data presets: dataset key, margin, batch size, epochs (reference teachtext.md §2.1, §3;
# TT-CE+ recipe: CE with the 7 refined experts, RAdam 1e-3 / 1e-5, teachers w2v, gpt2-xl,
# gpt2-xl-finetune, student gpt2-xl-finetune; text NetVLAD 28 + 1 ghost clusters as MSR-VTT).
CE_PRESETS = {
    "msrvtt": ("msrvtt_full", 0.093812, 64, 100),
    "msrvtt_1ka": ("msrvtt_1ka", 0.093812, 64, 100),
    "msvd": ("msvd", 0.307647, 16, 300),
    "didemo": ("didemo", 0.166428, 64, 30),
    "activitynet": ("activitynet", 0.060497, 32, 150),
    "lsmdc": ("lsmdc", 0.121330, 256, 15),
}


def _ce_preset(config: ml_collections.ConfigDict, name: str) -> None:
  dataset, margin, batch_size, epochs = CE_PRESETS[name]
  config.data.source = "ce"
  config.data.dataset = dataset
  config.teachers.text_embeddings = "w2v,gpt2-xl,gpt2-xl-finetune"
  config.student.text_embedding = "gpt2-xl-finetune"
  config.model.shared_dim = 768
  config.model.text_clusters = 28
  config.model.text_ghost_clusters = 1
  config.loss.margin = margin
  config.train.batch_size = batch_size
  config.train.num_epochs = epochs
  # Validate and checkpoint once per epoch (-1), as the official trainer.
  config.train.eval_every_steps = -1
  config.train.checkpoint_every_steps = -1


def sweep(add):
  """Three seeds: the mean +- std rows of the README table."""
  common.seed_sweep(add)
