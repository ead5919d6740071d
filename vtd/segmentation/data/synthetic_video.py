r"""Embedded foreground-segmentation video dataset, generated deterministically (no downloads).

The default data of the segmentation pipeline (`shared/reference/segmentation.md`). What the
method relies on, and how the generator provides it:

* **A teacher that is noisy but informative.** VideoPCA (§1) assumes a background that a few
  principal directions reconstruct well, even under camera motion, and a foreground that looks
  and moves differently. A per-video difficulty d makes it fail on some videos (what selection
  is for) through what defeats it: slow objects (absorbed by the principal directions), camera
  motion over texture, off-centre objects (its centre prior), noise and some camouflage.
* **An appearance prior a student can learn and the teacher lacks.** Every video shows objects
  of one of 10 classes (`synthetic_video_objects`): a class fixes a shape family, a hue, a
  texture and a size distribution, and videos of a class vary around them. A slow or
  camouflaged object defeats the motion-based teacher, not a student that knows what the class
  looks like; static soft blobs in the background look object-like to VideoPCA only when the
  camera moves.
* **Real test-set statistics** (sources in `synthetic_video_objects`): box area / frame area
  spread like YouTube-Objects' (median 0.219; per-class medians 0.09-0.36), one object in 97 %
  of the videos (YTO: 96.9 % of frames have one box) and central objects (YTO median box-centre
  offset 0.127 of the frame). Measured on the default training videos: see
  `docs/segmentation.md` ("Embedded data").
* **Ground truth** for P/J (§5.3) and CorLoc (§5.2), and a **validation split** (held-out videos
  with ground truth, never the test split) on which every unspecified default is chosen.

Generative model
----------------
Video v of split s draws everything from its own stream `SeedSequence([seed, s, v])`, so a
video never depends on how many others are generated; the classes come from their own stream
`SeedSequence([seed, 7, 7])`.

* **Length, difficulty, class.** T ~ Uniform{min_frames..max_frames};
  d ~ Uniform[min_difficulty, max_difficulty]; the class uniformly among the 10.
* **Background.** A canvas larger than the frame: a 3-colour palette around a random hue,
  mixed by multi-scale smooth noise (bicubically upsampled Gaussian grids, cells of 2-32 px),
  plus one of: nothing (smooth), warped stripes (period 5-16 px, random orientation) or 6-16
  soft coloured blobs (static distractors that look object-like).
* **Camera.** Smooth translation of the view centre over the canvas, total length
  U(0.3, 1) * (0.3 + 0.7 d) * camera_motion * W in a random direction, a 0.5-1.5 px hand-held
  wobble and a linear zoom from 1 to 1 + U(-camera_zoom, camera_zoom). Frames sample the canvas
  bilinearly; the camera path is returned as [T, 3] (canvas y, canvas x, zoom).
* **Objects.** 1 + Binomial(max_objects - 1, extra_object_prob) objects of the video's class:
  - size: a box area A (fraction of the frame) from the class's YouTube-Objects-like
    distribution (`synthetic_video_objects.sample_box_area`) times `size_scale`, radius
    sqrt(A H W) / 2 px, at most max_object_radius * min(H, W);
  - shape, colour and texture from the class (`synthetic_video_objects.render`); the main
    colour is blended towards a colour of the background canvas with weight camouflage * d;
  - motion in screen space (independent of the camera): a quadratic Bezier path over a
    distance U(0.3, 1) * object_motion * min(H, W) * (1 - 0.8 d), bent sideways, inside the
    frame with a margin of 0.8 radius (so each object is always mostly visible). The start
    is off the frame centre by up to object_spread * (0.2 + 0.8 d) of the allowed range.
    Rotation up to 0.03 rad/frame; scale 1 + U(0, 0.1) sin(...);
  - occlusion: with probability occlusion_prob the second object's path is shifted to pass
    next to the first's mid-video position; later objects are in front.
* **Imaging.** Anti-aliased alpha compositing (1 px edge), a global gain flicker of
  +-flicker, Gaussian sensor noise of std noise_std * (1 + d) (uint8 units), rounding.
* **Ground truth.** `labels` [T, H, W] uint8: 0 background, k + 1 where object k is visible
  (front objects win; a pixel is the object's when the alpha is > 0.5). Masks = labels > 0.
  Boxes [T, max_objects, 4] float32 are the tight boxes of each object's *visible* pixels,
  (x0, y0, x1, y1) with exclusive ends (the `vtd.evaluators.segmentation` convention); a NaN
  row when the object is absent or fully hidden.
* **Held-out images.** `test_frames_per_video` distinct random frames of each held-out video
  (splits "val" and "test"), as single images with their mask, visible boxes, the class name
  and the video's difficulty, ready for `object_discovery_scores` (P/J) and `corloc_by_class`
  (every held-out frame has at least one visible box).

Default size (chosen for the <= 20 min 2-core CPU budget of the full pipeline): see the spec's
defaults; generation takes a few seconds and the result is cached as .npz under `cache_dir`,
keyed by a hash of the spec and `_VERSION`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from vtd.data import cache
from vtd.segmentation.data import synthetic_video_objects as objects
from vtd.data.rendering import bezier, fractal_noise, hsv_to_rgb, random_bezier_path
from vtd.data.rendering import sample_bilinear, sigmoid, smooth_noise
from vtd.errors import UserError

_VERSION = 2  # Bump when the generator changes: it is part of the cache key.
_SPLITS = {"train": 0, "test": 1, "val": 2}  # Split index in the per-video seed.
HELD_OUT_SPLITS = ("val", "test")  # Splits with single-image ground truth.
_VIDEO_ARRAYS = ("frames", "labels", "boxes", "camera", "difficulty", "object_class")
# Object radius (px) per sqrt(box area in px^2): 1/2 for a disc; 0.47 makes the generated box
# areas match the YouTube-Objects quantiles (measured, docs/segmentation.md "Embedded data").
_RADIUS_PER_SQRT_AREA = 0.47


@dataclasses.dataclass(frozen=True)
class SyntheticVideoSpec:
  """Every parameter of the generator (the cache key); the module docstring gives their roles.

  None of these comes from the papers: they size a CPU-friendly stand-in for ImageNet-VID and
  YouTube-Objects; the object statistics follow YouTube-Objects (`synthetic_video_objects`).
  """
  seed: int = 0
  num_train_videos: int = 96
  num_val_videos: int = 32  # Held out, for choosing defaults.
  num_test_videos: int = 32  # Held out, for the reported metrics only.
  min_frames: int = 24  # Video length T ~ Uniform{min_frames..max_frames}.
  max_frames: int = 40
  height: int = 64  # Frame size in pixels.
  width: int = 80
  max_objects: int = 2  # 1 + Binomial(max_objects - 1, extra_object_prob) objects.
  extra_object_prob: float = 0.031  # YTO: 96.9 % of frames have one box.
  size_scale: float = 1.0  # Multiplies the sampled box areas (1: YouTube-Objects-like).
  max_object_radius: float = 0.45  # Largest radius, fraction of min(height, width).
  min_difficulty: float = 0.0  # Per-video difficulty d ~ Uniform[min, max] in [0, 1].
  max_difficulty: float = 1.0
  camera_motion: float = 0.25  # Longest camera travel per video, fraction of the width.
  camera_zoom: float = 0.08  # Largest relative zoom change per video.
  object_spread: float = 0.6  # Start offset from the centre, fraction of the allowed range.
  object_motion: float = 0.6  # Longest object travel per video, fraction of min(H, W).
  camouflage: float = 0.5  # Weight of the background colour in the object's at d = 1.
  occlusion_prob: float = 0.3  # P(second object's path crosses the first's).
  noise_std: float = 3.0  # Sensor noise std in uint8 units at d = 0 (x (1 + d)).
  flicker: float = 0.03  # Relative amplitude of the global gain flicker.
  test_frames_per_video: int = 6  # Distinct held-out images per val / test video.

  def cache_key(self) -> str:
    payload = json.dumps({**dataclasses.asdict(self), "version": _VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

  def validate(self) -> None:
    """Raises UserError naming the first inconsistent parameter."""
    checks = [
        (min(self.num_train_videos, self.num_val_videos, self.num_test_videos) >= 0,
         "video counts must be >= 0"),
        (3 <= self.min_frames <= self.max_frames, "need 3 <= min_frames <= max_frames"),
        (self.height >= 16 and self.width >= 16, "height and width must be >= 16"),
        (1 <= self.max_objects <= 255, "need 1 <= max_objects <= 255 (uint8 labels)"),
        (0 <= self.extra_object_prob <= 1, "need 0 <= extra_object_prob <= 1"),
        (self.size_scale > 0, "need size_scale > 0"),
        (0 < self.max_object_radius <= 0.45, "need 0 < max_object_radius <= 0.45"),
        (0 <= self.min_difficulty <= self.max_difficulty <= 1, "need 0 <= min_difficulty <= "
         "max_difficulty <= 1"),
        (0 <= self.camouflage <= 1, "need 0 <= camouflage <= 1"),
        (1 <= self.test_frames_per_video <= self.min_frames, "need 1 <= test_frames_per_video "
         "<= min_frames")]
    for ok, message in checks:
      if not ok:
        raise UserError(f"invalid SyntheticVideoSpec: {message} ({self})")

  def num_videos(self, split: str) -> int:
    return {"train": self.num_train_videos, "val": self.num_val_videos,
            "test": self.num_test_videos}[split]


@dataclasses.dataclass
class SyntheticVideo:
  """One generated video with its ground truth.

  Attributes:
    video_id: "train00012" / "val00001" / "test00003".
    frames: [T, H, W, 3] uint8 RGB.
    labels: [T, H, W] uint8; 0 background, k + 1 where object k is visible.
    boxes: [T, max_objects, 4] float32 (x0, y0, x1, y1), exclusive ends; NaN rows for absent
      or fully hidden objects.
    camera: [T, 3] float32: view centre (y, x) on the background canvas and zoom.
    difficulty: d in [0, 1] (module docstring).
    object_class: index of the objects' class in `SyntheticVideoDataset.classes`.
  """
  video_id: str
  frames: np.ndarray
  labels: np.ndarray
  boxes: np.ndarray
  camera: np.ndarray
  difficulty: float
  object_class: int

  @property
  def masks(self) -> np.ndarray:
    """[T, H, W] bool ground-truth foreground (union of the objects)."""
    return self.labels > 0

  @property
  def num_frames(self) -> int:
    return int(self.frames.shape[0])


@dataclasses.dataclass
class SegmentationTestSet:
  """Single held-out images with ground truth, in the form the segmentation evaluators take.

  Attributes:
    images: [N, H, W, 3] uint8 RGB.
    masks: [N, H, W] bool foreground (P/J).
    boxes: [N, max_objects, 4] float32, NaN-padded visible object boxes (see `gt_boxes`).
    class_names: N object-class names (`synthetic_video_objects.YTO_CLASS_MEDIAN_BOX_AREA`).
    difficulty: [N] float32, the source video's difficulty.
    image_ids: N ids "<video_id>/<frame index>".
    video_index, frame_index: [N] int64, the source held-out video and frame.
  """
  images: np.ndarray
  masks: np.ndarray
  boxes: np.ndarray
  class_names: list[str]
  difficulty: np.ndarray
  image_ids: list[str]
  video_index: np.ndarray
  frame_index: np.ndarray

  def gt_boxes(self) -> list[np.ndarray]:
    """Per image, its [K_i, 4] visible boxes (K_i >= 1), as `corloc_hits` takes them."""
    return [b[np.isfinite(b).all(axis=1)] for b in self.boxes]

  def __len__(self) -> int:  # Number of images.
    return int(self.images.shape[0])


@dataclasses.dataclass
class SyntheticVideoDataset:
  """Training videos and, per held-out split ("val", "test"), its videos and images."""
  spec: SyntheticVideoSpec
  classes: tuple[objects.ObjectClass, ...]
  train: list[SyntheticVideo]
  test_videos: list[SyntheticVideo]
  test: SegmentationTestSet
  val_videos: list[SyntheticVideo]
  val: SegmentationTestSet

  def held_out(self, split: str) -> tuple[list[SyntheticVideo], SegmentationTestSet]:
    """(videos, images) of a held-out split."""
    if split not in HELD_OUT_SPLITS:
      raise UserError(f"synthetic split must be one of {HELD_OUT_SPLITS}, got {split!r}")
    return getattr(self, f"{split}_videos"), getattr(self, split)


# ----------------------------------------------------------------------------- background

def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, float]:
  """[h, w, 3] float32 canvas in [0, 1] and its base hue."""
  hue = rng.random()
  palette = [hsv_to_rgb(hue + rng.normal(0, 0.08), rng.uniform(0.15, 0.8),
                        rng.uniform(0.25, 0.9)) for _ in range(3)]
  t1 = sigmoid(2.0 * fractal_noise(rng, h, w, (32, 16, 8)))[..., None]
  t2 = sigmoid(2.0 * fractal_noise(rng, h, w, (12, 6)) - 1.0)[..., None]
  canvas = (1 - t1) * palette[0] + t1 * palette[1]
  canvas = (1 - 0.6 * t2) * canvas + 0.6 * t2 * palette[2]
  canvas *= 1.0 + rng.uniform(0.03, 0.15) * fractal_noise(rng, h, w, (4, 2))[..., None]
  kind = rng.integers(3)
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  if kind == 1:  # Warped stripes: a strong periodic texture that moves with the camera.
    angle, period = rng.uniform(0, np.pi), rng.uniform(5, 16)
    phase = 2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period
    stripes = np.sin(phase + 1.5 * smooth_noise(rng, h, w, 24))[..., None]
    canvas = canvas * (1 + rng.uniform(0.1, 0.3) * stripes)
  elif kind == 2:  # Soft blobs: static, object-like distractors.
    n = rng.integers(6, 17)
    cy, cx, radius = (rng.uniform(lo, hi, (n, 1, 1)) for lo, hi in ((0, h), (0, w), (3, 14)))
    alpha = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2)) * rng.uniform(
        0.4, 0.9, (n, 1, 1))
    for i in range(n):  # n <= 16 full-canvas blends (vectorised over pixels).
      colour = hsv_to_rgb(hue + rng.normal(0, 0.25), rng.uniform(0.2, 0.9),
                          rng.uniform(0.2, 1.0))
      canvas = canvas * (1 - alpha[i, ..., None]) + colour * alpha[i, ..., None]
  return np.clip(canvas, 0, 1).astype(np.float32), float(hue)


# ----------------------------------------------------------------------------- videos

def _boxes(labels: np.ndarray, num_slots: int) -> np.ndarray:
  """[T, num_slots, 4] tight boxes of each object's visible pixels; NaN rows if none."""
  t, h, w = labels.shape
  visible = labels[:, None] == np.arange(1, num_slots + 1)[None, :, None, None]
  rows, cols = visible.any(axis=3), visible.any(axis=2)  # [T, K, H], [T, K, W]
  boxes = np.stack([cols.argmax(-1), rows.argmax(-1),
                    w - cols[..., ::-1].argmax(-1), h - rows[..., ::-1].argmax(-1)], -1)
  return np.where(rows.any(-1)[..., None], boxes, np.nan).astype(np.float32)


def _video(spec: SyntheticVideoSpec, classes: tuple[objects.ObjectClass, ...], split: str,
           index: int) -> tuple[SyntheticVideo, np.random.Generator]:
  """Video `index` of `split` and its random stream (module docstring: generative model)."""
  rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _SPLITS[split], index]))
  h, w = spec.height, spec.width
  t = int(rng.integers(spec.min_frames, spec.max_frames + 1))
  d = float(rng.uniform(spec.min_difficulty, spec.max_difficulty))
  class_index = int(rng.integers(len(classes)))
  cls = classes[class_index]
  u = np.arange(t) / (t - 1)  # Normalised time in [0, 1].

  # Camera: view centre and zoom over time, then a canvas just large enough to cover it.
  angle = rng.uniform(0, 2 * np.pi)
  travel = rng.uniform(0.3, 1.0) * (0.3 + 0.7 * d) * spec.camera_motion * w * (u - 0.5)
  wobble = rng.uniform(0.5, 1.5) * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * u[:, None]
                                          + rng.uniform(0, 2 * np.pi, 2))
  offset = np.stack([travel * np.sin(angle), travel * np.cos(angle)], -1) + wobble
  zoom = 1 + rng.uniform(-spec.camera_zoom, spec.camera_zoom) * u
  half = np.array([h, w]) / (2 * zoom.min()) + np.abs(offset).max(0) + 3
  ch, cw = (2 * np.ceil(half)).astype(int)
  canvas, _ = _background(rng, int(ch), int(cw))
  view = offset + np.array([ch, cw]) / 2
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  ys = view[:, 0, None, None] + (yy - (h - 1) / 2) / zoom[:, None, None]
  xs = view[:, 1, None, None] + (xx - (w - 1) / 2) / zoom[:, None, None]
  frames = sample_bilinear(canvas, ys, xs)

  # Objects: sizes and paths first (the occluder's path depends on the first object's).
  n_obj = 1 + int(rng.binomial(spec.max_objects - 1, spec.extra_object_prob))
  areas = np.array([objects.sample_box_area(rng, cls) for _ in range(n_obj)]) * spec.size_scale
  radii = np.minimum(_RADIUS_PER_SQRT_AREA * np.sqrt(areas * h * w),
                     spec.max_object_radius * min(h, w))
  paths = []
  for k in range(n_obj):
    lo, hi = np.full(2, 0.8 * radii[k]), np.array([h - 1, w - 1]) - 0.8 * radii[k]
    length = rng.uniform(0.3, 1.0) * spec.object_motion * min(h, w) * (1 - 0.8 * d)
    points = random_bezier_path(rng, lo, hi, length, spec.object_spread * (0.2 + 0.8 * d))
    if k == 1 and rng.random() < spec.occlusion_prob:
      # Cross the first object's mid-video position, slightly off-centre: partial occlusion.
      direction = rng.normal(size=2)
      target = bezier(paths[0], np.array([0.5]))[0] + 0.5 * (radii[0] + radii[1]) * (
          direction / np.linalg.norm(direction))
      points = np.clip(points + target - bezier(points, np.array([0.5]))[0], lo, hi)
    paths.append(points)

  labels = np.zeros((t, h, w), np.uint8)
  for k in range(n_obj):
    camouflage = canvas[rng.integers(ch), rng.integers(cw)]
    weight = spec.camouflage * d
    main = (1 - weight) * objects.main_colour(rng, cls) + weight * camouflage
    colour, alpha, inside = objects.render(rng, cls, bezier(paths[k], u), radii[k], main, yy, xx)
    frames = frames * (1 - alpha[..., None]) + colour * alpha[..., None]
    labels[inside] = k + 1

  gain = 1 + spec.flicker * np.sin(2 * np.pi * rng.uniform(0.5, 3) * u + rng.uniform(0, 6.3))
  frames = frames * (255 * gain[:, None, None, None]).astype(np.float32)
  frames += float(spec.noise_std * (1 + d)) * rng.standard_normal(frames.shape, np.float32)
  frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
  camera = np.concatenate([view, zoom[:, None]], -1).astype(np.float32)
  return SyntheticVideo(f"{split}{index:05d}", frames, labels, _boxes(labels, spec.max_objects),
                        camera, d, class_index), rng


def _image_set(spec: SyntheticVideoSpec, classes: tuple[objects.ObjectClass, ...],
               videos: list[SyntheticVideo], video_index: np.ndarray,
               frame_index: np.ndarray) -> SegmentationTestSet:
  """Gathers the given (video, frame) pairs into single held-out images."""
  pairs = list(zip(np.asarray(video_index).tolist(), np.asarray(frame_index).tolist()))
  h, w = spec.height, spec.width
  pick = lambda name, dtype, *shape: np.array(  # reshape: also right for no pairs.
      [getattr(videos[v], name)[f] for v, f in pairs], dtype).reshape(-1, *shape)
  return SegmentationTestSet(
      images=pick("frames", np.uint8, h, w, 3), masks=pick("labels", np.uint8, h, w) > 0,
      boxes=pick("boxes", np.float32, spec.max_objects, 4),
      class_names=[classes[videos[v].object_class].name for v, _ in pairs],
      difficulty=np.array([videos[v].difficulty for v, _ in pairs], np.float32),
      image_ids=[f"{videos[v].video_id}/{f}" for v, f in pairs],
      video_index=np.asarray(video_index, np.int64), frame_index=np.asarray(frame_index, np.int64))


def _held_out(spec: SyntheticVideoSpec, classes: tuple[objects.ObjectClass, ...], split: str
              ) -> tuple[list[SyntheticVideo], SegmentationTestSet]:
  videos, picks = [], []
  for i in range(spec.num_videos(split)):
    video, rng = _video(spec, classes, split, i)
    videos.append(video)
    frames = rng.choice(video.num_frames, spec.test_frames_per_video, replace=False)
    picks += [(i, f) for f in sorted(frames.tolist())]
  picks = np.array(picks, np.int64).reshape(-1, 2)
  return videos, _image_set(spec, classes, videos, picks[:, 0], picks[:, 1])


def generate(spec: SyntheticVideoSpec = SyntheticVideoSpec()) -> SyntheticVideoDataset:
  """Generates the dataset for `spec` (deterministic in `spec`; module docstring)."""
  spec.validate()
  classes = objects.make_classes(spec.seed)
  train = [_video(spec, classes, "train", i)[0] for i in range(spec.num_train_videos)]
  test_videos, test = _held_out(spec, classes, "test")
  val_videos, val = _held_out(spec, classes, "val")
  return SyntheticVideoDataset(spec, classes, train, test_videos, test, val_videos, val)


# ----------------------------------------------------------------------------- cache

def save_npz(ds: SyntheticVideoDataset, path: str) -> None:
  """Writes the dataset as one .npz (one key per video array), atomically."""
  arrays = {"meta/cache_key": np.asarray(ds.spec.cache_key())}
  for split in ("train", *HELD_OUT_SPLITS):
    videos = ds.train if split == "train" else ds.held_out(split)[0]
    arrays[f"{split}/count"] = np.asarray(len(videos))
    for i, v in enumerate(videos):
      arrays.update({f"{split}/{i}/{name}": getattr(v, name) for name in _VIDEO_ARRAYS})
    if split != "train":
      images = ds.held_out(split)[1]
      arrays[f"{split}_images/video_index"] = images.video_index
      arrays[f"{split}_images/frame_index"] = images.frame_index
  cache.save_entry(path, arrays)


def load_npz(path: str, spec: SyntheticVideoSpec) -> SyntheticVideoDataset:
  """Reads a file written by `save_npz` for `spec`; a stale or broken file is a UserError."""
  arrays = cache.load_entry(path, "synthetic video cache")
  if str(arrays.get("meta/cache_key")) != spec.cache_key():
    raise UserError(f"synthetic video cache {path} was written for another spec")
  classes = objects.make_classes(spec.seed)
  splits = {split: [SyntheticVideo(video_id=f"{split}{i:05d}", **{
      name: arrays[f"{split}/{i}/{name}"][()] for name in _VIDEO_ARRAYS})  # [()]: 0-d -> scalar
                    for i in range(int(arrays[f"{split}/count"]))] for split in _SPLITS}
  images = {split: _image_set(spec, classes, splits[split], arrays[f"{split}_images/video_index"],
                              arrays[f"{split}_images/frame_index"]) for split in HELD_OUT_SPLITS}
  return SyntheticVideoDataset(spec=spec, classes=classes, train=splits["train"],
                               test_videos=splits["test"], test=images["test"],
                               val_videos=splits["val"], val=images["val"])


def cache_path(spec: SyntheticVideoSpec, cache_dir: str) -> str:
  return cache.cache_file(cache_dir, "synthetic_video", spec.cache_key())


def load_or_generate(spec: SyntheticVideoSpec = SyntheticVideoSpec(),
                     cache_dir: str | None = None) -> SyntheticVideoDataset:
  """Loads the cached dataset for `spec`, generating (and caching) it on first use."""
  return cache.load_or_generate(cache_dir and cache_path(spec, cache_dir),
                                lambda: generate(spec), lambda p: load_npz(p, spec), save_npz)
