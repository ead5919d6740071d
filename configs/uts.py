r"""UTS: unsupervised teacher-student frame features for near-duplicate / incident video retrieval.

Run:      python -m vtd.main --config=configs/uts.py --workdir=runs/uts
Smoke:    python -m vtd.main --config=configs/uts.py:smoke --workdir=runs/uts_smoke
Paper:    python -m vtd.main --config=configs/uts.py:reference --workdir=runs/uts_ref  (accelerators)
Real:     python -m vtd.main --config=configs/uts.py --config.data.source=directory \
              --config.data.root=/data/fivr --config.teacher.weights=/w/resnet50.npz
Export:   python -m vtd.export --workdir=runs/uts --model=student --out=exports/uts_student
Evaluate: python -m vtd.evaluate --artifact=exports/uts_student --split=test --output=m.json
Expected: see README.md "UTS" (FIVR mAP table and runtime from real runs).

The embedded default downloads nothing: the teacher's ResNet-50 is pretrained by vtd on
generated source-domain images (config.pretrain, cached under data.cache_dir and shared by all
seeds), the student starts from a seeded random init. Widths and resolutions are CPU-sized
(:reference has the paper's); the paper's values are given in each comment. Defaults were
chosen on the validation events' queries (docs/uts.md).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Which method vtd.main runs (vtd/uts/pipeline.py).
  config.method = "uts"
  # Training seed: student init, data order and augmentation, the LSH rotation and the R-MAC
  # whitening sample (each stage derives its own: vtd/seeds.py).
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # synthetic: the embedded FIVR-like collection | directory: real videos under data.root.
  config.data.source = "synthetic"
  # Real data: a folder with one video file (<id>.mp4/.avi/...) or frame folder (<id>/) per id.
  config.data.root = ""
  # FIVR annotation.json ('' = <root>/annotation.json).
  config.data.annotation = ""
  # Optional FIVR-format annotation of validation queries, disjoint from the test queries
  # ('' = none; the embedded collection always has its own validation events).
  config.data.val_annotation = ""
  # Optional youtube_ids.txt listing the database ('' = every video found under root).
  config.data.video_ids = ""
  # Keyframes from real videos: every frame_stride-th decoded frame, at most max_frames (0 = all).
  config.data.frame_stride = 25
  config.data.max_frames = 64
  # Working (student) resolution in pixels, square (paper: not stated, 224 usual).
  config.data.image_size = 64
  # Where generated data are cached ('' = regenerate every run).
  config.data.cache_dir = "~/.cache/vtd"
  # Generator parameters of the embedded collection (vtd/uts/data/synthetic_fivr.py documents them).
  config.data.synthetic = ml_collections.ConfigDict(dict(
      seed=0,  # Dataset seed (fixed across training seeds).
      num_events=12,  # Test incidents; one test query each.
      num_val_events=8,  # Validation incidents (defaults are chosen on their queries).
      num_distractors=150,  # Videos of no query.
      mean_frames=32.0,  # Keyframes per video: log-normal mean (paper Table 3: ~32 codes)...
      frames_sigma=0.6,  # ...log-std (the long tail), clipped to [min_frames, max_frames].
      min_frames=8,
      max_frames=128,
      height=64,  # Frame size in pixels.
      width=64,
      scene_frames=256,  # Time steps of footage per scene (>= 2 x max_frames).
      num_channels=6,  # Uploaders (intros, watermarks, studio footage).
      num_stock_worlds=8,  # B-roll worlds filling videos of every kind.
  ))

  config.teacher = ml_collections.ConfigDict()
  # Local .npz of torchvision resnet50 state_dict arrays, the real-data path (ImageNet weights;
  # vtd/uts/weights.py shows the 3-line conversion). Set, it overrides teacher.init.
  config.teacher.weights = ""
  # Without weights: 'pretrain' = the ResNet-50 pretrained on the generated source-domain
  # images (config.pretrain, vtd/uts/pretrain.py) | 'random' = a seeded random init.
  config.teacher.init = "pretrain"
  # Seed of the random initialisation (teacher.init='random') and of the PCA frame sample
  # (fixed across training seeds, so a seed sweep varies the student and the LSH only).
  config.teacher.init_seed = 0
  # Also score a randomly initialised teacher (same PCA fit): the "before pretraining" rows
  # (costs one more teacher pass over the frames).
  config.teacher.compare_random_init = False
  # ResNet-50 stem width (paper: 64 -> 2048-d features; CPU: 16 -> 512-d).
  config.teacher.width = 16
  # Teacher input size: frames are resized to it (a 64 px frame gives ResNet a 2 x 2 map).
  config.teacher.image_size = 128
  # Pooling of the feature f that the PCA FC whitens (reference A.1: gap | rmac).
  config.teacher.pool = "gap"
  # D*: output dimension of the PCA-whitening FC = the student's out_dim (paper: 512).
  config.teacher.pca_dim = 128
  # Frames the PCA is fitted on (a random sample of the training frames; 0 = all).
  config.teacher.pca_num_frames = 20000
  # eps added to the eigenvalues (eq. 3 has none).
  config.teacher.pca_eps = 0.0

  # Source-domain pretraining of the teacher's ResNet-50 (the ImageNet stand-in; cached under
  # data.cache_dir keyed by these fields, shared by every seed and workdir).
  config.pretrain = ml_collections.ConfigDict()
  # The labelled source images (vtd/uts/data/synthetic_source_images.py documents them).
  config.pretrain.source = ml_collections.ConfigDict(dict(
      seed=0,  # Image set seed.
      num_object_classes=80,  # Classes of textured objects (shape, aspect, colour, texture).
      num_texture_classes=20,  # Classes of textures (palette and pattern).
      train_per_class=80,  # Training images per class.
      val_per_class=10,  # Held-out images per class (keep-best on their top-1 accuracy).
      size=64,  # Image side, px.
  ))
  # Input size of the classifier (source images are resized to it).
  config.pretrain.image_size = 64
  # Initialisation, data order and augmentation seed (fixed: one teacher for all seeds).
  config.pretrain.seed = 0
  # Adam with a step decay (x 0.5 every 150 steps; the period is in steps: UTS trains by steps).
  config.pretrain.optim = common.optimizer("adam", lr=2e-3, weight_decay=0.0)
  config.pretrain.optim.schedule = "step"
  config.pretrain.optim.decay_rate = 0.5
  del config.pretrain.optim["decay_every_epochs"]
  # Steps between two decays of the learning rate.
  config.pretrain.optim.decay_every_steps = 150
  # Training augmentation (vtd/data/augment.py): crop, flip, small rotation and colour jitter.
  config.pretrain.augment = ml_collections.ConfigDict(dict(
      crop_area=(0.35, 1.0),  # Fraction of the area kept by the random crop.
      crop_ratio=(0.75, 1.3333),  # Aspect-ratio range of the crop.
      rotation_deg=10.0,  # Uniform rotation range, degrees.
      flip=0.5,  # Horizontal flip probability.
      brightness=0.2,  # Colour jitter strengths (factors in [1 - s, 1 + s]).
      contrast=0.2,
      saturation=0.2,
  ))
  # The generic loop: validation (top-1 on the held-out images) every 100 steps, keep-best.
  config.pretrain.train = _steps_loop(batch_size=64)
  config.pretrain.train.update(eval_every_steps=100, checkpoint_every_steps=100,
                               log_every_steps=50, best_metric="top1", best_mode="max")
  # Optimisation steps (500 x 64 = 4 epochs of the 8,000 training images).
  config.pretrain.train.num_steps = 500

  config.student = ml_collections.ConfigDict()
  # Local .npz of torchvision vgg16 state_dict arrays for blocks 1-4 (overrides student.init).
  config.student.weights = ""
  # Without weights: 'pretrain' = VGG16 blocks 1-4 pretrained on the source images (as the
  # paper's ImageNet VGG16; the UTS head is always new) | 'random'. random, chosen on val
  # (docs/uts.md §2: val GV DSVR 72.5 vs 68.2 pretrained; the source VGG16 is no ImageNet).
  config.student.init = "random"
  # VGG16 block-1 width (paper: 64; CPU: 16), the head's widths (paper: 512, 512 = D*).
  config.student.width = 16
  config.student.head_width = 128
  # Head conv kernel, and whether VGG's pool5 follows the head (reference A.2 defaults).
  config.student.head_kernel = 3
  config.student.keep_pool5 = False
  # Pooling in training (gap | rmac; reference A.1).
  config.student.pool = "gap"

  config.loss = ml_collections.ConfigDict()
  # lambda0..3 of eq. 8: (1 - C(s_aug, t), 1 - C(s_clean, t), I(s_aug), I(s_clean)).
  config.loss.lambdas = (2.0, 2.0, 1.0, 1.0)
  # The band of eq. 6: ranks [round(alpha n), round(beta n)) of each row's sorted cosines.
  config.loss.alpha = 0.1
  config.loss.beta = 0.6
  # Sort order of eq. 7 (descending | ascending; reference A.4 ambiguity table).
  config.loss.band_sort = "descending"
  # global: n = the global batch | per_device: bands within each device's rows.
  config.loss.band_scope = "global"

  # On-device augmentation of the student's augmented view (vtd/data/augment.py; paper:
  # "rotation, random cropping, distorted color", magnitudes not stated).
  config.augment = ml_collections.ConfigDict(dict(
      crop_area=(0.5, 1.0),  # Fraction of the area kept by the random crop.
      crop_ratio=(0.75, 1.3333),  # Aspect-ratio range of the crop.
      rotation_deg=10.0,  # Uniform rotation range, degrees.
      flip=0.5,  # Horizontal flip probability.
      brightness=0.4,  # Colour jitter strengths (factors in [1 - s, 1 + s]).
      contrast=0.4,
      saturation=0.4,
  ))

  # Generic loop (vtd/train.py): unsupervised, no validation; the last step is kept.
  config.train = _steps_loop(batch_size=64)
  # Optimisation steps (paper: not stated) and frames sampled for training (0 = all).
  config.train.num_steps = 300
  config.train.max_frames = 0
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 100
  # Adam, lr 1e-4 in the paper (from ImageNet weights). 1e-3, chosen on val (docs/uts.md §2):
  # in 300 steps 1e-4 underfits (source-pretrained student, val GV DSVR 44.5 vs 68.2 at 1e-3).
  config.optim = common.optimizer("adam", lr=1e-3, weight_decay=0.0)
  config.optim.schedule = "constant"

  config.extract = ml_collections.ConfigDict()
  # Videos per resumable extraction shard (the unit hosts split round-robin).
  config.extract.shard_videos = 64
  # Frames per jitted call (a multiple of the local device count).
  config.extract.batch_frames = 128
  # R-MAC levels at retrieval (classic R-MAC: 1, 2, 3), per-region L2, no region whitening
  # (reference A.3 default; vtd/uts/networks.py says why the teacher's FC is not reused).
  config.extract.rmac_levels = (1, 2, 3)

  config.lsh = ml_collections.ConfigDict()
  # Bits per frame code (paper: 512 = 64 bytes).
  config.lsh.nbits = 512
  # Faiss IndexLSH flags (reference A.6): random rotation on, median thresholds off.
  config.lsh.rotate = True
  config.lsh.train_thresholds = False

  config.retrieval = ml_collections.ConfigDict()
  # Hamming k-NN backend of the frame-level pipeline: faiss (CPU) | jax (jitted, sharded).
  config.retrieval.backend = "faiss"
  # faiss index: flat (exact) | ivf<nlist> | hnsw<M> (approximate, large galleries).
  config.retrieval.index = "flat"
  # N of Algorithm 1: Hamming neighbours per query frame.
  config.retrieval.top_n = 1000
  # R-MAC frame descriptors for R-MAC + GV and FRP: none (reference §A.3 default) | pca
  # (PCA-whitening fitted on the database's frames, then L2, as classic R-MAC; chosen on
  # validation, docs/uts.md).
  config.retrieval.rmac_whitening = "pca"
  # Frames the whitening is fitted on (a random sample; 0 = all).
  config.retrieval.rmac_whitening_frames = 20000
  # Leading whitened components kept (0 = all).
  config.retrieval.rmac_whitening_dim = 128
  # Drop the query video's own frames from its neighbour lists (reference A.7: kept).
  config.retrieval.exclude_self = False
  # Query frames per k-NN call (whole query videos; bounds memory: frames x top_n hits).
  config.retrieval.batch_frames = 8192

  # Evaluators by config (vtd/evaluators/common.py), run by the retrieval stage on every
  # "<model>/<method>" row; a change re-evaluates only (nothing is retrained).
  config.evals = ml_collections.ConfigDict()
  # FIVR mAP per task, bytes per video and query time (vtd/evaluators/fivr.py) on the test
  # queries; `tasks` a comma list of DSVR, CSVR, ISVR; `pr_points` recall levels of the
  # precision-recall curves (plots/precision_recall.png).
  config.evals.test = dict(type="fivr", split="test", tasks="DSVR,CSVR,ISVR", pr_points=21)
  # The same on the validation queries (where defaults are chosen; `python -m vtd.results
  # --eval=val`). The embedded collection always has them; real data need data.val_annotation
  # (else set enabled=False).
  config.evals.val = dict(type="fivr", split="val", tasks="DSVR,CSVR,ISVR", pr_points=21,
                          enabled=True)

  config.distributed = common.distributed()
  config.runtime = common.runtime()

  if arg == "smoke":  # Every stage on tiny data; the numbers only show that it runs.
    config.data.synthetic.update(num_events=3, num_val_events=2, num_distractors=30,
                                 mean_frames=10.0, min_frames=6, max_frames=24, height=32,
                                 width=32, scene_frames=48, num_channels=3, num_stock_worlds=3)
    config.data.image_size = 32
    config.teacher.width = 8
    config.teacher.image_size = 64
    config.teacher.pca_dim = 32
    config.pretrain.source.update(num_object_classes=8, num_texture_classes=2,
                                  train_per_class=8, val_per_class=2, size=32)
    config.pretrain.image_size = 32
    config.pretrain.train.update(num_steps=10, batch_size=16, eval_every_steps=10,
                                 checkpoint_every_steps=10, log_every_steps=5)
    config.student.width = 8
    config.student.head_width = 32
    config.train.num_steps = 20
    config.train.batch_size = 32
    config.train.log_every_steps = 10
    config.train.checkpoint_every_steps = 10
    config.lsh.nbits = 128
    config.retrieval.top_n = 100
    config.extract.shard_videos = 16
  elif arg == "reference":  # The paper's widths and 224 px, for accelerators.
    config.data.synthetic.update(height=224, width=224)
    config.data.image_size = 224
    config.teacher.width = 64  # 2048-d ResNet-50 features.
    config.teacher.image_size = 224
    config.teacher.pca_dim = 512  # D* (Table 3: 2048 B per GV = 512 float32).
    config.pretrain.source.update(size=224, train_per_class=260, val_per_class=40)
    config.pretrain.image_size = 224
    config.pretrain.train.update(num_steps=20000, batch_size=256, eval_every_steps=1000,
                                 checkpoint_every_steps=1000, log_every_steps=100)
    config.pretrain.optim.decay_every_steps = 6000
    config.student.width = 64
    config.student.head_width = 512
    config.train.batch_size = 320  # Paper §3.1.
    config.train.num_steps = 5000
    config.train.checkpoint_every_steps = 500
    config.optim.lr = 1e-4  # Paper §3.1 (Adam, 1e-4).
    config.extract.batch_frames = 256
  elif arg:
    raise ValueError(f"unknown preset {arg!r}; expected smoke or reference")
  return config


def _steps_loop(batch_size: int) -> ml_collections.ConfigDict:
  """The generic loop's knobs (configs/common.py), trained by `num_steps` (no epochs)."""
  loop = common.training_loop(batch_size=batch_size, num_epochs=0)
  del loop["num_epochs"]
  return loop


def sweep(add):
  """Three seeds: the mean +- std rows of the README table."""
  common.seed_sweep(add)
