r"""UTS: unsupervised teacher-student frame features for near-duplicate / incident video retrieval.

Run:      python -m vtd.main --config=configs/uts.py --workdir=runs/uts
Smoke:    python -m vtd.main --config=configs/uts.py:smoke --workdir=runs/uts_smoke
Real:     python -m vtd.main --config=configs/uts.py --config.data.source=directory \
              --config.data.root=/data/fivr --config.teacher.weights=/w/resnet50.npz
Expected: see README.md "UTS" (FIVR mAP table and runtime from real runs).

The embedded default has no ImageNet weights (nothing is downloaded): both networks start from
a deterministic random initialisation, which README.md states beside every number. Widths and
resolutions are CPU-sized; the paper's values are given in each comment.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Which method vtd.main runs (vtd/uts/train.py).
  config.method = "uts"
  # Training seed: student init, data order, augmentation and the LSH rotation.
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # synthetic: the embedded FIVR-like collection | directory: real videos under data.root.
  config.data.source = "synthetic"
  # Real data: a folder with one video file (<id>.mp4/.avi/...) or frame folder (<id>/) per id.
  config.data.root = ""
  # FIVR annotation.json ('' = <root>/annotation.json).
  config.data.annotation = ""
  # Optional youtube_ids.txt listing the database ('' = every video found under root).
  config.data.video_ids = ""
  # Keyframes from real videos: every frame_stride-th decoded frame, at most max_frames (0 = all).
  config.data.frame_stride = 25
  config.data.max_frames = 64
  # Working (student) resolution in pixels, square (paper: not stated, 224 usual).
  config.data.image_size = 64
  # Where generated data are cached ('' = regenerate every run).
  config.data.cache_dir = "~/.cache/vtd"
  # Generator parameters of the embedded collection (vtd/data/synthetic_fivr.py documents them).
  config.data.synthetic = ml_collections.ConfigDict(dict(
      seed=0,  # Dataset seed (fixed across training seeds).
      num_events=12,  # Incidents; one query each.
      num_distractors=150,  # Videos of no query.
      min_frames=8,  # Keyframes per video: between min and max.
      max_frames=16,
      height=64,  # Frame size in pixels.
      width=64,
      scene_frames=40,  # Time steps of footage per scene (>= 2 x max_frames).
      num_channels=6,  # Uploaders (intros, watermarks, studio footage).
  ))

  config.teacher = ml_collections.ConfigDict()
  # Local .npz of torchvision resnet50 state_dict arrays ('' = deterministic random init;
  # vtd/uts/weights.py shows the 3-line conversion).
  config.teacher.weights = ""
  # Seed of the random initialisation when no weights are given (fixed across training seeds,
  # so a seed sweep varies the student and the LSH only).
  config.teacher.init_seed = 0
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

  config.student = ml_collections.ConfigDict()
  # Local .npz of torchvision vgg16 state_dict arrays for blocks 1-4 ('' = random init).
  config.student.weights = ""
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
  config.train = common.training_loop(batch_size=64, num_epochs=1)
  # Optimisation steps (paper: not stated) and frames sampled for training (0 = all).
  config.train.num_steps = 300
  config.train.max_frames = 0
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 100
  # Adam, lr 1e-4 in the paper (from ImageNet weights); from scratch on CPU we use 1e-3.
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
  # Drop the query video's own frames from its neighbour lists (reference A.7: kept).
  config.retrieval.exclude_self = False
  # Query frames per k-NN call (whole query videos; bounds memory: frames x top_n hits).
  config.retrieval.batch_frames = 8192

  config.distributed = common.distributed()
  config.runtime = common.runtime()

  if arg == "smoke":
    config.data.synthetic.update(num_events=3, num_distractors=30, min_frames=6, max_frames=8,
                                 height=32, width=32, scene_frames=20, num_channels=3)
    config.data.image_size = 32
    config.teacher.width = 8
    config.teacher.image_size = 64
    config.teacher.pca_dim = 32
    config.student.width = 8
    config.student.head_width = 32
    config.train.num_steps = 20
    config.train.batch_size = 32
    config.train.log_every_steps = 10
    config.train.checkpoint_every_steps = 10
    config.lsh.nbits = 128
    config.retrieval.top_n = 100
    config.extract.shard_videos = 16
  elif arg:
    raise ValueError(f"unknown preset {arg!r}; expected smoke")
  return config


def sweep(add):
  """Three seeds: the mean +- std rows of the README table."""
  common.seed_sweep(add)
