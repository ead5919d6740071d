r"""Unsupervised foreground segmentation over generations, on the embedded synthetic videos.

Run:      python -m vtd.main --config=configs/segmentation.py --workdir=runs/seg
Smoke:    python -m vtd.main --config=configs/segmentation.py:smoke --workdir=runs/seg_smoke
Expected: see README.md "Segmentation" (numbers and runtime from real runs).

Widths and step counts are CPU-sized (the reference nets have 3-78 M parameters and train for
10 k-1 M steps); every knob not fixed by the papers is marked as such
(../shared/reference/segmentation.md §8).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Which method vtd.main runs (vtd/segmentation/pipeline.py: the stage graph).
  config.method = "segmentation"
  # Master seed: every network's is vtd.seeds.derive_seed(seed, <name>), <name> its stage
  # ("gen1/evalseg") or, for students, as student_training.seed_scope says (the teacher and
  # the embedded data do not depend on it).
  config.seed = 0
  # Teacher -> students -> (EvalSeg-Net -> students) ... : number of student generations.
  config.generations = 2

  config.data = ml_collections.ConfigDict()
  # Training videos: '' = the embedded synthetic videos
  # (vtd/segmentation/data/synthetic_video.py); a folder = every video file (mp4, avi, ...)
  # and frame folder under it, read with OpenCV (vtd/segmentation/input_pipeline.py).
  config.data.videos = ""
  # Real videos are resized to (H, W) on read (VideoPCA works at this size).
  config.data.video_size = (64, 80)
  # Keep at most this many frames per real video (0 = all), every video_stride-th frame.
  config.data.video_max_frames = 0
  config.data.video_stride = 1
  # An unreadable real video: skip (warn, count in results.json) | raise.
  config.data.on_unreadable = "skip"
  # Test set for the reported metrics: auto (synthetic with synthetic videos, none with real
  # ones) | synthetic | object_discovery (P, J) | youtube_objects (CorLoc) | none.
  config.data.test_set = "auto"
  # Root folder of the Object Discovery / YouTube-Objects test set.
  config.data.test_root = ""
  # Comma-separated class folders of the test set ('' = the reader's defaults: Airplane100,
  # Car100, Horse100 / the 10 YouTube-Objects classes).
  config.data.test_classes = ""
  # YouTube-Objects annotated frames: all | train | test
  # (vtd/segmentation/data/youtube_objects.py).
  config.data.test_split = "all"
  # Where generated data are cached ('' = regenerate every run).
  config.data.cache_dir = "~/.cache/vtd"
  # Working size S of the students (square); frames and masks are resized to it.
  config.data.image_size = 64
  # Frames are stored at round(S * augment_scale) and randomly cropped to S (the public code:
  # resize 256 -> 310, crop 256, i.e. 1.21; not from the paper).
  config.data.augment_scale = 1.21
  # Generator parameters (vtd/segmentation/data/synthetic_video.py documents the model).
  config.data.synthetic = ml_collections.ConfigDict(dict(
      seed=0,  # Dataset seed (fixed across training seeds).
      num_train_videos=96,  # Unlabelled training videos.
      num_val_videos=32,  # Held-out videos for choosing defaults (val images).
      num_test_videos=32,  # Held-out videos the test images come from.
      min_frames=24,  # Frames per video: between min and max.
      max_frames=40,
      height=64,  # Frame size in pixels.
      width=80,
      test_frames_per_video=6,  # Held-out images sampled per val / test video.
      size_scale=1.0,  # Object box areas x this (1: YouTube-Objects-like; docs/segmentation.md).
  ))

  config.teacher = ml_collections.ConfigDict()
  # Videos per jitted VideoPCA call (rounded up to a multiple of the device count).
  config.teacher.batch_videos = 8
  # VideoPCA constants (vtd/segmentation/videopca.py; reference §1.2 unless noted).
  config.teacher.videopca = ml_collections.ConfigDict(dict(
      size=0,  # Working resolution (square); 0 = the frames' own (not from the paper).
      max_frames=256,  # Longest chunk given to one PCA (not from the paper).
      num_directions=3,  # k principal directions.
      blur_size=15,  # Gaussian blur kernel side (px) and sigma.
      blur_sigma=5.0,
      hyst_high=0.8,  # Hysteresis thresholds T1, T2.
      hyst_low=0.5,
      connectivity=8,  # Hysteresis connectivity.
      bg_laplace=True,  # +1 smoothing of the background colour histogram (MATLAB code).
  ))

  config.selection = ml_collections.ConfigDict()
  # Generation 1 keeps this fraction of frames, ranked globally by the mean of the non-zero
  # teacher values (10 %: the paper's Table 1).
  config.selection.keep_fraction = 0.10
  # Ranking scope: global (one ranking over all frames) | per_video (the top keep_fraction of
  # each video). Not in the papers (reference §8 #5).
  config.selection.scope = "global"

  config.students = ml_collections.ConfigDict()
  # Comma-separated students trained at every generation (Multi-Net multiplies all of them).
  config.students.names = "lowres_net,fconv,basic_unet,dilate_unet,dense_unet"
  # Per-student constructor arguments (CPU-sized widths; reference widths in models.py).
  config.students.lowres_net = ml_collections.ConfigDict(dict(features=16, bottleneck=8))
  config.students.fconv = ml_collections.ConfigDict(dict(features=16, bottleneck=8))
  config.students.basic_unet = ml_collections.ConfigDict(dict(
      features=(8, 16, 32, 64, 128), center_features=128))
  config.students.dilate_unet = ml_collections.ConfigDict(dict(features=(8, 16, 32, 64, 128)))
  config.students.dense_unet = ml_collections.ConfigDict(dict(
      growth_rates=(4, 8, 12, 16), transition_features=(8, 16, 32, 64), center_growth=16,
      center_transition=64, block_layers=2))

  config.student_training = ml_collections.ConfigDict()
  # Steps and batch size per student (public code: 10 k-1 M steps, batch 16/32). CPU-sized,
  # chosen on val (docs/segmentation.md §3, §5): at this length the ReLU heads stay far below
  # the 0-255 targets, so the number of updates matters more than the batch: the same 4,800
  # samples as 1,200 x 4 instead of 600 x 8 give BasicU-Net val J 53.8 / CorLoc 59.4 instead
  # of 47.5 / 49.5 (seed 0); a 3x larger lr fits the targets 10x better and scores worse
  # (48.9 / 48.4), so the public lr stays.
  config.student_training.num_steps = 1200
  # Per-student step counts (0 = num_steps); the public code trains each architecture for its
  # own number of steps (LowRes-Net 1 M, DilateU-Net / DenseU-Net 100 k, BasicU-Net 10 k).
  config.student_training.steps_per_student = ml_collections.ConfigDict(dict(
      lowres_net=0, fconv=0, basic_unet=0, dilate_unet=0, dense_unet=0))
  config.student_training.batch_size = 4
  # Targets are soft masks x target_scale (public code: 0..255 with ReLU heads).
  config.student_training.target_scale = 255.0
  # mse (the reference) | bce.
  config.student_training.loss = "mse"
  # What a student's seed (initial weights, batch order) is derived from: stage = its stage
  # ("gen2/basic_unet"), a new initialisation per generation | student = its architecture, so
  # each generation retrains it from the same initial weights and the generations differ only
  # in their labels. Not from the papers. stage: student gave no better generation 2 on three
  # seeds (val best-student J gen 2 - gen 1 -1.7, test -3.9) and repeats a dead
  # initialisation in every generation (seed 3: DenseU-Net's ReLU head output 0 everywhere
  # at generations 1 and 2); docs/segmentation.md §9.
  config.student_training.seed_scope = "stage"

  config.multinet = ml_collections.ConfigDict()
  # Student output -> [0, 1] for Multi-Net, EvalSeg-Net and the next generation's targets:
  # minmax per image (what the public inference script does; not from the paper) |
  # div_scale_clip = clip(out / target_scale, 0, 1). minmax by default: the students' raw
  # outputs rarely approach 255, so clipped masks are faint (mean 0.04) and generation-2
  # students trained on them over-segment (seed 0, J of gen-2 DilateU-Net 36.4 vs 60.4 with
  # minmax; measured with the earlier 600 x 8 students and a global EvalSeg ranking).
  config.multinet.normalisation = "minmax"
  # student_scale: a student's scale is this quantile of its per-image output maxima over the
  # training frames (not from the paper).
  config.multinet.scale_quantile = 0.9
  # Multi-Net = the pixel-wise product of the students' masks (the paper) | geometric_mean, its
  # S-th root: the same pixel order, but min-max + 0.5 then cuts the product at ~0.5^S of its
  # peak instead of at half of it. geometric_mean, chosen on val (docs/segmentation.md §8): gen-1
  # Multi-Net val CorLoc 63.4 vs 12.3 for the product (seeds 0-2). Not EvalSeg-Net's label
  # (evalseg.label_combine).
  config.multinet.combine = "geometric_mean"

  config.evalseg = ml_collections.ConfigDict()
  # EvalSeg-Net widths (reference: 256/64/512) and head (sigmoid: regress cos in [0, 1]).
  config.evalseg.model = ml_collections.ConfigDict(dict(features=16, bottleneck=8, hidden=64,
                                                        head="sigmoid"))
  # Input size (square) of EvalSeg-Net; 0 = the students' size. The reference feeds it 128 x 128
  # while the U-Nets work at 256, i.e. half the students' size.
  config.evalseg.image_size = 0
  # Labels are label_scale x cos(student mask, combined mask) (1 with the sigmoid head)...
  config.evalseg.label_scale = 1.0
  # ...where the combined mask is the students' masks combined as multinet.combine describes:
  # product (the paper's Multi-Net mask) | geometric_mean. product, chosen on val
  # (docs/segmentation.md §8: the geometric-mean label gave gen-2 BasicU-Net val J 43.0 vs 48.0,
  # seed 0). Independent of multinet.combine, which only shapes the Multi-Net's own masks.
  config.evalseg.label_combine = "product"
  # Fraction of training frames whose student masks train EvalSeg-Net (not from the paper);
  # the other frames are scored.
  config.evalseg.train_fraction = 0.10
  config.evalseg.num_steps = 300
  config.evalseg.batch_size = 16
  # Adam, lr 1e-4 (public code).
  config.evalseg.optim = common.optimizer("adam", lr=1e-4, weight_decay=0.0)
  config.evalseg.optim.schedule = "constant"
  # threshold: keep masks scoring >= threshold (README of the public code: 80 of 100, i.e.
  # 0.8 in cos units) | top_fraction: keep the best keep_fraction of all scored masks.
  # top_fraction by default: the CPU-sized EvalSeg-Net on the embedded data scores at most
  # ~0.75 (measured, gen 1, seed 0, 600 x 8 students), so the reference threshold would keep
  # nothing.
  config.evalseg.selection = "top_fraction"
  config.evalseg.threshold = 0.8
  config.evalseg.keep_fraction = 0.10
  # Ranking scope of top_fraction: global | per_video (not in the papers). per_video, chosen on
  # val (docs/segmentation.md §5): a global ranking keeps the masks of a few videos with large
  # objects, a fifth of them low-resolution blobs, and generation 2 collapses (seed 0, gen-2
  # BasicU-Net val J 24.8 / CorLoc 27.1 global vs 46.4 / 56.2 per video, gen 1: 47.5 / 49.5).
  config.evalseg.scope = "per_video"
  # A kept mask (normalised as multinet.normalisation) -> the next generation's target:
  # soft (as it is: the public code's byte-scaled PNG) | gated (values <= target_threshold
  # set to 0, the shape of VideoPCA's masks) | binary (> target_threshold). Not from the
  # papers; chosen on val (docs/segmentation.md §5).
  config.evalseg.target_rule = "soft"
  config.evalseg.target_threshold = 0.5

  # Generic loop (vtd/train.py) of every network: unsupervised, so no validation during
  # training and the last step is kept. Batch sizes and step counts are per network
  # (student_training, evalseg).
  config.train = common.training_loop(batch_size=0, num_epochs=0)
  for unused in ("batch_size", "num_epochs", "num_steps", "eval_every_steps"):
    del config.train[unused]
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 200
  # Students: Adam lr 1e-3, no weight decay, no schedule (public code).
  config.optim = common.optimizer("adam", lr=1e-3, weight_decay=0.0)
  config.optim.schedule = "constant"

  # Evaluators (vtd/evaluators/segmentation.py, type "segmentation"): P, J (where the set has
  # masks) and CorLoc (where it has boxes) of the teacher, every student and Multi-Net on a
  # held-out split. Fields: split = val (held-out synthetic videos on which every default not
  # fixed by the papers was chosen) | test (the reported numbers; never used to choose
  # anything; a real test set, data.test_set, is "test" and has no val); bin_threshold: soft
  # mask -> binary by per-image min-max to [0, 1], then > bin_threshold (§8 #16); box_rule:
  # box from mask for CorLoc, largest_cc | all_fg (§8 #17); grabcut: refine each binary mask
  # with OpenCV GrabCut first (§5.3; off in the tables); enabled=False skips the evaluator.
  # Nothing is selected on them: changing them only re-evaluates.
  config.evals = ml_collections.ConfigDict()
  config.evals.val = dict(type="segmentation", split="val", bin_threshold=0.5,
                          box_rule="largest_cc", grabcut=False)
  config.evals.test = dict(type="segmentation", split="test", bin_threshold=0.5,
                           box_rule="largest_cc", grabcut=False)
  # Mask-scoring quality of every EvalSeg-Net (vtd/evaluators/mask_scoring.py, type
  # "mask_scoring"): it scores every student's mask of the held-out images of `split`; reported
  # are the rank / linear correlation of its score with each mask's true J, and the J of the
  # best-scored keep_fraction of the masks vs all masks and vs the keep_fraction with the best
  # J. keep_fraction: 0.10 = evalseg.keep_fraction's default; bin_threshold as above.
  config.evals.scoring_val = dict(type="mask_scoring", split="val", keep_fraction=0.10,
                                  bin_threshold=0.5)
  config.evals.scoring_test = dict(type="mask_scoring", split="test", keep_fraction=0.10,
                                   bin_threshold=0.5)

  config.overlays = ml_collections.ConfigDict()
  # Held-out images (rows) of the PNG overlays written to <workdir>/overlays (one row per
  # video first); their binary outlines use the split's evaluator bin_threshold.
  config.overlays.num_images = 6

  config.distributed = common.distributed()
  config.runtime = common.runtime()

  if arg == "smoke":
    # Two students keep the run compile-light (CPU smoke runs are compile-bound); Multi-Net,
    # EvalSeg-Net and generation 2 still run.
    config.students.names = "lowres_net,basic_unet"
    config.data.synthetic.update(num_train_videos=8, num_val_videos=2, num_test_videos=4,
                                 min_frames=12, max_frames=16)
    config.data.image_size = 32
    config.student_training.num_steps = 20
    config.student_training.batch_size = 8
    config.evalseg.num_steps = 20
    config.evalseg.batch_size = 8
    config.evalseg.train_fraction = 0.3
    config.evalseg.selection = "top_fraction"
    config.evalseg.keep_fraction = 0.2
    config.selection.keep_fraction = 0.5
    config.train.log_every_steps = 10
    config.train.checkpoint_every_steps = 10
  elif arg == "reference":
    # The reference networks at their own widths and resolutions, for accelerators (shared/
    # reference/segmentation.md §2-3): U-Nets at 256 x 256, EvalSeg-Net at 128 x 128, batch 32,
    # the public code's step counts per student (LowRes-Net 1 M, DilateU-Net / DenseU-Net
    # 100 k, BasicU-Net 10 k; FConv is not in the code: LowRes-Net's). Synthetic frames are
    # rendered at 256 x 320 so that nothing is upsampled. One working size serves every
    # student, so LowRes-Net and FConv read 256 x 256 where the reference feeds them 128 x 128
    # (LowRes-Net's FC then has 4x the reference's inputs).
    config.data.synthetic.update(height=256, width=320)
    config.data.video_size = (256, 320)
    config.data.image_size = 256
    config.evalseg.image_size = 128
    for name in ("lowres_net", "fconv"):
      config.students[name] = ml_collections.ConfigDict(dict(features=256, bottleneck=64))
    config.students.basic_unet = ml_collections.ConfigDict(dict(
        features=(32, 64, 128, 256, 512), center_features=1024))
    config.students.dilate_unet = ml_collections.ConfigDict(dict(
        features=(32, 64, 128, 256, 512)))
    config.students.dense_unet = ml_collections.ConfigDict(dict(
        growth_rates=(12, 24, 48, 64), transition_features=(32, 64, 128, 256),
        center_growth=128, center_transition=512, block_layers=4))
    config.student_training.batch_size = 32
    config.student_training.steps_per_student.update(
        lowres_net=1_000_000, fconv=1_000_000, basic_unet=10_000, dilate_unet=100_000,
        dense_unet=100_000)
    config.evalseg.model = ml_collections.ConfigDict(dict(features=256, bottleneck=64,
                                                          hidden=512, head="sigmoid"))
    config.evalseg.batch_size = 32
    config.evalseg.num_steps = 100_000
    config.train.log_every_steps = 1000
    config.train.checkpoint_every_steps = 5000
  elif arg:
    raise ValueError(f"unknown preset {arg!r}; expected smoke or reference")
  return config


def sweep(add):
  """Three seeds: the mean +- std rows of the README table."""
  common.seed_sweep(add)
