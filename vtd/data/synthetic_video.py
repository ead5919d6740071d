r"""Embedded foreground-segmentation video dataset, generated deterministically (no downloads).

The default data of the segmentation pipeline (`shared/reference/segmentation.md`). VideoPCA
(§1) assumes what real training videos (§5.1) mostly show: a background that a few principal
directions of the frames reconstruct well, even under camera motion, and a small foreground that
looks and moves differently; evaluation needs ground-truth masks (P/J, §5.3) and boxes (CorLoc,
§5.2). A per-video difficulty makes the teacher fail on some videos (what selection is for).

Generative model
----------------
Video v of split s draws everything from its own stream `SeedSequence([seed, s, v])`, so a
video never depends on how many others are generated.

* **Length and difficulty.** T ~ Uniform{min_frames..max_frames}; difficulty
  d ~ Uniform[min_difficulty, max_difficulty]. d raises everything that defeats VideoPCA:
  camouflage, off-centre objects (its centre prior), slow objects (absorbed by the principal
  directions), camera motion over texture, and noise.
* **Background.** A canvas larger than the frame: a 3-colour palette around a random hue,
  mixed by multi-scale smooth noise (bicubically upsampled Gaussian grids, cells of 2-32 px),
  plus one of: nothing (smooth), warped stripes (period 5-16 px, random orientation) or 6-16
  soft coloured blobs (static distractors that look object-like).
* **Camera.** Smooth translation of the view centre over the canvas, total length
  U(0.3, 1) * (0.3 + 0.7 d) * camera_motion * W in a random direction, a 0.5-1.5 px hand-held
  wobble and a linear zoom from 1 to 1 + U(-camera_zoom, camera_zoom). Frames sample the canvas
  bilinearly; the camera path is returned as [T, 3] (canvas y, canvas x, zoom).
* **Objects.** 1 + Binomial(max_objects - 1, extra_object_prob) objects, each with:
  - shape (radial function r(phi) in object coordinates): ellipse, rounded polygon (3-6
    sides blended with a circle) or blob (circle + harmonics 2-5), aspect ratio e^U(-.35,.35),
    radius U(min_object_radius, max_object_radius) * min(H, W);
  - appearance: two colours mixed by object-fixed noise, spots or stripes (the texture moves
    and rotates with the object), and a linear shading gradient. The main colour is a colour
    far in hue from the background, blended towards a colour sampled from the background
    canvas with weight 0.8 d: hard videos are camouflaged;
  - motion in screen space (independent of the camera): a quadratic Bezier path over a
    distance U(0.3, 1) * object_motion * min(H, W) * (1 - 0.8 d), bent sideways, inside the
    frame with a margin of 0.8 radius (so each object is always mostly visible). The start
    is off the frame centre by up to object_spread * (0.2 + 0.8 d) of the allowed range:
    filmed objects are mostly central (the bias VideoPCA's centre prior encodes), hard ones
    less so. Rotation up to 0.03 rad/frame; scale 1 + U(0, 0.1) sin(...).
  - occlusion: with probability occlusion_prob the second object's path is shifted to pass
    next to the first's mid-video position; later objects are in front.
* **Imaging.** Anti-aliased alpha compositing (1 px edge), a global gain flicker of
  +-flicker, Gaussian sensor noise of std noise_std * (1 + d) (uint8 units), rounding.
* **Ground truth.** `labels` [T, H, W] uint8: 0 background, k + 1 where object k is visible
  (front objects win; a pixel is the object's when the alpha is > 0.5). Masks = labels > 0.
  Boxes [T, max_objects, 4] float32 are the tight boxes of each object's *visible* pixels,
  (x0, y0, x1, y1) with exclusive ends (the `vtd.evaluators.segmentation` convention); a NaN
  row when the object is absent or fully hidden.
* **Test images.** `test_frames_per_video` distinct random frames of each held-out video, as
  single images with their mask, visible boxes and a class name from the video's difficulty
  ("easy" d < 1/3, "medium" < 2/3, else "hard"), ready for `object_discovery_scores` (P/J) and
  `corloc_by_class` (every test frame has at least one visible box).

Default size (chosen for the <= 15 min 2-core CPU budget of the full pipeline: VideoPCA on all
training videos, 5 students + EvalSeg-Net, 2 generations): 48 training videos of 32-48 frames
(about 1 900 frames) and 16 test videos (96 test images) at 64 x 80 px. Generation takes 3-5 s
on a shared 2-core CPU; the result is cached as .npz under `cache_dir`, keyed by a hash of the spec.
VideoPCA with the reference constants at this native size (`videopca_numpy`, size=None) gets a
mean J of about 0.5 on the default training videos (about 0.57 for d < 0.5, 0.45 above; 65 %
of the videos above 0.5) and a frame CorLoc of about 0.3: good enough to teach, room to beat.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from vtd.data import cache
from vtd.data.rendering import bezier, fractal_noise, hsv_to_rgb, random_bezier_path
from vtd.data.rendering import render_object, sample_bilinear, sigmoid, smooth_noise
from vtd.errors import UserError

_VERSION = 1  # Bump when the generator changes: it is part of the cache key.
_SPLITS = {"train": 0, "test": 1}  # Split index in the per-video seed.
_DIFFICULTY_CLASSES = ((1 / 3, "easy"), (2 / 3, "medium"), (np.inf, "hard"))
_VIDEO_ARRAYS = ("frames", "labels", "boxes", "camera", "difficulty")  # Cached per video.


@dataclasses.dataclass(frozen=True)
class SyntheticVideoSpec:
  """Every parameter of the generator (the cache key); the module docstring gives their roles.

  None of these comes from the papers: they size a CPU-friendly stand-in for ImageNet-VID.
  """
  seed: int = 0
  num_train_videos: int = 48
  num_test_videos: int = 16  # Held out; test images are sampled from them.
  min_frames: int = 32  # Video length T ~ Uniform{min_frames..max_frames}.
  max_frames: int = 48
  height: int = 64  # Frame size in pixels.
  width: int = 80
  max_objects: int = 2  # 1 + Binomial(max_objects - 1, extra_object_prob) objects.
  extra_object_prob: float = 0.4
  min_object_radius: float = 0.12  # Object radius range, fraction of min(height, width).
  max_object_radius: float = 0.22
  min_difficulty: float = 0.0  # Per-video difficulty d ~ Uniform[min, max] in [0, 1].
  max_difficulty: float = 1.0
  camera_motion: float = 0.25  # Longest camera travel per video, fraction of the width.
  camera_zoom: float = 0.08  # Largest relative zoom change per video.
  object_spread: float = 0.8  # Start offset from the centre, fraction of the allowed range.
  object_motion: float = 0.6  # Longest object travel per video, fraction of min(H, W).
  occlusion_prob: float = 0.3  # P(second object's path crosses the first's).
  noise_std: float = 3.0  # Sensor noise std in uint8 units at d = 0 (x (1 + d)).
  flicker: float = 0.03  # Relative amplitude of the global gain flicker.
  test_frames_per_video: int = 6  # Distinct test images per held-out video.

  def cache_key(self) -> str:
    payload = json.dumps({**dataclasses.asdict(self), "version": _VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

  def validate(self) -> None:
    """Raises UserError naming the first inconsistent parameter."""
    checks = [
        (self.num_train_videos >= 0 and self.num_test_videos >= 0, "video counts must be >= 0"),
        (3 <= self.min_frames <= self.max_frames, "need 3 <= min_frames <= max_frames"),
        (self.height >= 16 and self.width >= 16, "height and width must be >= 16"),
        (1 <= self.max_objects <= 255, "need 1 <= max_objects <= 255 (uint8 labels)"),
        (0 < self.min_object_radius <= self.max_object_radius <= 0.45, "need 0 < "
         "min_object_radius <= max_object_radius <= 0.45"),
        (0 <= self.min_difficulty <= self.max_difficulty <= 1, "need 0 <= min_difficulty <= "
         "max_difficulty <= 1"),
        (1 <= self.test_frames_per_video <= self.min_frames, "need 1 <= test_frames_per_video "
         "<= min_frames")]
    for ok, message in checks:
      if not ok:
        raise UserError(f"invalid SyntheticVideoSpec: {message} ({self})")


@dataclasses.dataclass
class SyntheticVideo:
  """One generated video with its ground truth.

  Attributes:
    video_id: "train00012" / "test00003".
    frames: [T, H, W, 3] uint8 RGB.
    labels: [T, H, W] uint8; 0 background, k + 1 where object k is visible.
    boxes: [T, max_objects, 4] float32 (x0, y0, x1, y1), exclusive ends; NaN rows for absent
      or fully hidden objects.
    camera: [T, 3] float32: view centre (y, x) on the background canvas and zoom.
    difficulty: d in [0, 1] (module docstring).
  """
  video_id: str
  frames: np.ndarray
  labels: np.ndarray
  boxes: np.ndarray
  camera: np.ndarray
  difficulty: float

  @property
  def masks(self) -> np.ndarray:
    """[T, H, W] bool ground-truth foreground (union of the objects)."""
    return self.labels > 0

  @property
  def num_frames(self) -> int:
    return int(self.frames.shape[0])


@dataclasses.dataclass
class SegmentationTestSet:
  """Single test images with ground truth, in the form the segmentation evaluators take.

  Attributes:
    images: [N, H, W, 3] uint8 RGB.
    masks: [N, H, W] bool foreground (P/J).
    boxes: [N, max_objects, 4] float32, NaN-padded visible object boxes (see `gt_boxes`).
    class_names: N difficulty classes ("easy" / "medium" / "hard").
    image_ids: N ids "<video_id>/<frame index>".
    video_index, frame_index: [N] int64, the source test video and frame.
  """
  images: np.ndarray
  masks: np.ndarray
  boxes: np.ndarray
  class_names: list[str]
  image_ids: list[str]
  video_index: np.ndarray
  frame_index: np.ndarray

  def gt_boxes(self) -> list[np.ndarray]:
    """Per image, its [K_i, 4] visible boxes (K_i >= 1), as `corloc_hits` takes them."""
    return [b[np.isfinite(b).all(axis=1)] for b in self.boxes]

  def __len__(self) -> int:  # Number of test images.
    return int(self.images.shape[0])


@dataclasses.dataclass
class SyntheticVideoDataset:
  """Training videos, held-out test videos and the test images sampled from the latter."""
  spec: SyntheticVideoSpec
  train: list[SyntheticVideo]
  test_videos: list[SyntheticVideo]
  test: SegmentationTestSet


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


def _video(spec: SyntheticVideoSpec, split: str, index: int) -> tuple[SyntheticVideo,
                                                                       np.random.Generator]:
  """Video `index` of `split` and its random stream (module docstring: generative model)."""
  rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _SPLITS[split], index]))
  h, w = spec.height, spec.width
  t = int(rng.integers(spec.min_frames, spec.max_frames + 1))
  d = float(rng.uniform(spec.min_difficulty, spec.max_difficulty))
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
  canvas, hue = _background(rng, int(ch), int(cw))
  view = offset + np.array([ch, cw]) / 2
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  ys = view[:, 0, None, None] + (yy - (h - 1) / 2) / zoom[:, None, None]
  xs = view[:, 1, None, None] + (xx - (w - 1) / 2) / zoom[:, None, None]
  frames = sample_bilinear(canvas, ys, xs)

  # Objects: paths first (the occluder's path depends on the first object's).
  n_obj = 1 + int(rng.binomial(spec.max_objects - 1, spec.extra_object_prob))
  radii = rng.uniform(spec.min_object_radius, spec.max_object_radius, n_obj) * min(h, w)
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
    distinct = hsv_to_rgb(hue + 0.5 + rng.normal(0, 0.12), rng.uniform(0.45, 1.0),
                          rng.uniform(0.45, 1.0))
    camouflage = canvas[rng.integers(ch), rng.integers(cw)]
    main = (1 - 0.8 * d) * distinct + 0.8 * d * camouflage
    colour, alpha, inside = render_object(rng, bezier(paths[k], u), radii[k], main, yy, xx)
    frames = frames * (1 - alpha[..., None]) + colour * alpha[..., None]
    labels[inside] = k + 1

  gain = 1 + spec.flicker * np.sin(2 * np.pi * rng.uniform(0.5, 3) * u + rng.uniform(0, 6.3))
  frames = frames * (255 * gain[:, None, None, None]).astype(np.float32)
  frames += float(spec.noise_std * (1 + d)) * rng.standard_normal(frames.shape, np.float32)
  frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
  camera = np.concatenate([view, zoom[:, None]], -1).astype(np.float32)
  return SyntheticVideo(f"{split}{index:05d}", frames, labels, _boxes(labels, spec.max_objects),
                        camera, d), rng


def _difficulty_class(d: float) -> str:
  return next(name for bound, name in _DIFFICULTY_CLASSES if d < bound)


def _test_set(spec: SyntheticVideoSpec, videos: list[SyntheticVideo], video_index: np.ndarray,
              frame_index: np.ndarray) -> SegmentationTestSet:
  """Gathers the given (video, frame) pairs into single test images."""
  pairs = list(zip(np.asarray(video_index).tolist(), np.asarray(frame_index).tolist()))
  h, w = spec.height, spec.width
  pick = lambda name, dtype, *shape: np.array(  # reshape: also right for no pairs.
      [getattr(videos[v], name)[f] for v, f in pairs], dtype).reshape(-1, *shape)
  return SegmentationTestSet(
      images=pick("frames", np.uint8, h, w, 3), masks=pick("labels", np.uint8, h, w) > 0,
      boxes=pick("boxes", np.float32, spec.max_objects, 4),
      class_names=[_difficulty_class(videos[v].difficulty) for v, _ in pairs],
      image_ids=[f"{videos[v].video_id}/{f}" for v, f in pairs],
      video_index=np.asarray(video_index, np.int64), frame_index=np.asarray(frame_index, np.int64))


def generate(spec: SyntheticVideoSpec = SyntheticVideoSpec()) -> SyntheticVideoDataset:
  """Generates the dataset for `spec` (deterministic in `spec`; module docstring)."""
  spec.validate()
  train = [_video(spec, "train", i)[0] for i in range(spec.num_train_videos)]
  test_videos, picks = [], []
  for i in range(spec.num_test_videos):
    video, rng = _video(spec, "test", i)
    test_videos.append(video)
    frames = rng.choice(video.num_frames, spec.test_frames_per_video, replace=False)
    picks += [(i, f) for f in sorted(frames.tolist())]
  picks = np.array(picks, np.int64).reshape(-1, 2)
  return SyntheticVideoDataset(spec, train, test_videos,
                               _test_set(spec, test_videos, picks[:, 0], picks[:, 1]))


# ----------------------------------------------------------------------------- cache

def save_npz(ds: SyntheticVideoDataset, path: str) -> None:
  """Writes the dataset as one .npz (one key per video array), atomically."""
  arrays = {"meta/cache_key": np.asarray(ds.spec.cache_key()),
            "test_images/video_index": ds.test.video_index,
            "test_images/frame_index": ds.test.frame_index}
  for split, videos in (("train", ds.train), ("test", ds.test_videos)):
    arrays[f"{split}/count"] = np.asarray(len(videos))
    for i, v in enumerate(videos):
      arrays.update({f"{split}/{i}/{name}": getattr(v, name) for name in _VIDEO_ARRAYS})
  cache.save_entry(path, arrays)


def load_npz(path: str, spec: SyntheticVideoSpec) -> SyntheticVideoDataset:
  """Reads a file written by `save_npz` for `spec`; a stale or broken file is a UserError."""
  arrays = cache.load_entry(path, "synthetic video cache")
  if str(arrays.get("meta/cache_key")) != spec.cache_key():
    raise UserError(f"synthetic video cache {path} was written for another spec")
  splits = {split: [SyntheticVideo(video_id=f"{split}{i:05d}", **{
      name: arrays[f"{split}/{i}/{name}"][()] for name in _VIDEO_ARRAYS})  # [()]: 0-d -> scalar
                    for i in range(int(arrays[f"{split}/count"]))] for split in _SPLITS}
  test = _test_set(spec, splits["test"], arrays["test_images/video_index"],
                   arrays["test_images/frame_index"])
  return SyntheticVideoDataset(spec=spec, train=splits["train"], test_videos=splits["test"],
                               test=test)


def cache_path(spec: SyntheticVideoSpec, cache_dir: str) -> str:
  return cache.cache_file(cache_dir, "synthetic_video", spec.cache_key())


def load_or_generate(spec: SyntheticVideoSpec = SyntheticVideoSpec(),
                     cache_dir: str | None = None) -> SyntheticVideoDataset:
  """Loads the cached dataset for `spec`, generating (and caching) it on first use."""
  return cache.load_or_generate(cache_dir and cache_path(spec, cache_dir),
                                lambda: generate(spec), lambda p: load_npz(p, spec), save_npz)
