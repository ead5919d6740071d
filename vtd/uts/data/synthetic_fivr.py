r"""Embedded FIVR-like video collection, generated deterministically (no downloads).

The default data of the UTS job (`shared/reference/retrieval_uts_qbnorm.md` §A, §B): a small
collection of keyframe sequences with the relations of FIVR-200K (§B.1): per query video,
near-duplicates (ND), duplicate scenes (DS), complementary scenes (CS) and incident scenes (IS),
among distractors. The annotation is written in FIVR's `annotation.json` format, so the same
reader and evaluator serve the real and the synthetic benchmark (DSVR = ND u DS, CSVR = + CS,
ISVR = + IS; DA is not generated).

Generative model
----------------
Everything is drawn from independent streams `SeedSequence([seed, kind, index, ...])`: an event
never depends on how many other events or distractors are generated.

* **Style** (what a hard distractor shares with an event). A base hue; 3 *regions* (think
  ground / buildings / sky), each with a 3-colour palette around its own hue (base hue +
  U(-0.22, 0.22)); 4 landmark colours (far in hue from the base) and 4 actor colours (vivid);
  a texture kind (smooth, warped stripes or soft blobs).
* **World** (one per event, i.e. incident). A canvas of `world_scale` x (height, width) px: the
  regions are laid out by a large-scale smooth noise field (so different viewpoints see different
  colour mixtures); inside a region, the palette is mixed by multi-scale noise
  (`rendering.fractal_noise`), with 1/f detail and the style's texture; `landmarks_per_world` static
  objects (`rendering.render_object` shapes and textures, radius 7-14 % of the canvas, the
  style's landmark colours) are painted on it.
* **Scenes** (`scenes_per_event` time segments of `scene_frames` time steps each). Scene s has
  an action centre on the canvas (later scenes at least 0.35 canvas away from scene 0's),
  `props_per_scene` static objects near it that exist in this scene only (vehicles, debris),
  `actors_per_scene` moving actors (textured shapes in the style's actor colours on quadratic
  Bezier paths around the action centre; in later scenes each actor is, with probability 1/2,
  an actor of scene 0 on a new path) and a lighting: scene 0 neutral; later scenes a gain
  exp(+-U(0.5, 1) lighting_shift), a per-channel tint N(1, lighting_shift / 4) and a haze
  (mix with a grey-ish colour, weight U(0, lighting_shift)).
* **Cameras.** A camera films one scene: zoom z = exp(U(-0.4, 0.4)) (frame px per canvas px),
  view centre at the action centre + N(0, viewpoint_spread * height) px, a linear pan of up to
  0.4 view heights over the scene, a 1 px hand-held wobble, its own colour response
  (per-channel gain N(1, 0.08), gamma U(0.85, 1.15)) and sensor noise (std 1-3 uint8 units, a
  function of the time step). Footage = the scene's canvas sampled bilinearly through the view,
  the actors rendered in screen space (same shape and texture in every camera), the scene
  lighting and the camera response. Only the time steps some video uses are rendered, once per
  camera, so all videos cut from one camera share its pixels exactly. Camera 0 of scene 0 is the
  query camera, num_cs more cameras film scene 0 (CS), num_is cameras film the later scenes (IS).
* **Channels** (`num_channels`, shared by the whole collection, positives and distractors
  alike): an intro logo frame, a small corner watermark and "studio" footage (a world of its own
  filmed by a static camera): the unrelated content real uploads insert.
* **Stock B-roll** (`num_stock_worlds`): worlds of random style, one pre-rendered camera each,
  whose footage fills videos of every kind (news reports mix an incident's footage with
  unrelated shots).
* **Keyframes per video.** T ~ round(LogNormal(mu, `frames_sigma`)) with mu = log
  `mean_frames` - sigma^2 / 2, clipped to [`min_frames`, `max_frames`]: mean 32, median ~27,
  95th percentile ~70 (default seed: 31.3 / 27 / 68, max 120). Source: UTS stores 2,075 B per
  video for FRP at 64 B per 512-bit code [seed uts_net.txt Table 3], i.e. ~32 keyframes per
  video on average [inferred, reference §A.7]. The log-normal shape and its sigma (the long
  tail) are NOT FOUND in any source: they are this generator's choice. An ND video has the
  query's length x exp(N(0, 0.1)).
* **Uploads (videos).** A video is a list of shots: footage segments (time steps of one
  camera, with a speed change exp(U(-0.4, 0.4) s), frames dropped with p 0.15 s and, with
  p 0.25 s, a reversed sub-segment) of its *own* footage and 1-3 *filler* shots (the
  channel's studio with p 0.5, else a stock B-roll window) in random order; then an uploader's
  edit of strength s (times `edit_strength`): crop (up to 35 % s per side) resized back,
  horizontal flip (p 0.4 s), letter/pillar-box (p 0.3 s), colour (saturation, channel
  balance, contrast, brightness), Gaussian blur (p 0.5 s), the channel's watermark (p 0.5),
  the channel's intro in the first 1-2 keyframes (p 0.4), noise and JPEG compression
  (`cv2.imencode`, quality about 90 - 60 s). Relative to the query of event e (camera 0 of
  scene 0, one shot of T_q steps starting in the middle half of the scene, a light edit
  s = 0.15, no filler):

  ===== =================================================================== ================
  label video (own footage; the rest of its T keyframes is filler)           edit strength s
  ===== =================================================================== ================
  ND    the query re-edited: its footage (start +-2 steps), no filler        U(0.4, 1.0)
  DS    camera 0: a fraction U(0.15, 0.45) of the video (a minority, at most U(0.4, 1.0)
        T_q keyframes) inside the query's window (up to a quarter sticking
        out); with p 0.08 also 10-30 % from another scene-0 camera at about
        the same time (then also labelled CS)
  CS    another camera of scene 0 (another viewpoint): a fraction U(0.3,    U(0.2, 0.8)
        0.6), at a time overlapping the query's window
  IS    a camera of a later scene (other time, lighting, props and actor     U(0.2, 0.8)
        positions, mostly another part of the world): a fraction U(0.3,
        0.6), any window
  ===== =================================================================== ================

  Label counts per query, 1 ND / 5 DS / 2 CS / 3 IS (6 / 8 / 11 positives for DSVR / CSVR /
  ISVR), follow FIVR-200K's annotation: ND is 18 % of the DSVR entries (1,325 of 7,456), and
  the mean positives per query are 74.6 / 88.4 / 123.6, ratios 1 : 1.18 : 1.66 (here
  1 : 1.33 : 1.83, rounded to whole videos); DS and CS overlap in 503 of 6,133 DS entries
  (8 %, hence p 0.08) [reference §B.1, data: MKLab-ITI/FIVR-200K annotation.json]. The
  DS-minority rule is FIVR's definition of a duplicate scene: "at least one scene" from the
  same camera [reference §B.1], i.e. a video that may be mostly other content.

* **Distractors.** `num_distractors` videos from distractor worlds of 1-4 videos each (one
  scene, two cameras: near-duplicates and complementary scenes of one another, of no query);
  a fraction U(0.4, 1.0) own footage, the rest filler (the same channels and B-roll as the
  positives). A fraction `hard_distractor_fraction` of the distractor worlds copies the style
  of an event (test or validation, with 5 % jitter): the same palettes, landmark and actor
  colours and texture, another layout, other landmarks and actors, so colour statistics alone
  cannot tell them from the event.

Difficulty is graded by construction, as in the real tasks: ND and DS share footage (pixels)
with the query; CS shares the world, the time, props and actors but not the viewpoint; IS only
the world; hard distractors the style; filler is shared across unrelated videos. Because a DS
video is mostly filler, its mean frame vector (GV) is far from the query's while some of its
frames are near-copies of query frames: the structure the frame-level pipeline exploits.

**Validation split.** `num_val_events` further events (own random streams, ids prefixed
differently) with their queries and labels in `val_query_ids` / `val_annotation`: all their
videos are in the one database (distractors for the test queries and vice versa), but no test
query or test label is used to choose a default.

**Training split.** UTS is unsupervised (§A.5): it trains on the keyframes of the database, so
`split["train"]` is every video (the queries included: as on FIVR-200K, the queries are in the
database). `split["train_disjoint"]` holds only the distractors (no video related to any query),
for a leakage-free ablation. `split["database"]` is every video, `split["queries"]` the test
queries, `split["val_queries"]` the validation ones.

Default size: (12 test + 8 validation events) x 12 videos + 150 distractors = 390 videos,
12,203 keyframes of 64 x 64 px (150 MB). Generation takes 1-2.5 min on a shared 2-core CPU; the
result is cached as .npz under `cache_dir`, keyed by a hash of the spec and `VERSION`.
`SMOKE_SPEC` (3 + 2 events, 30 distractors: 90 videos, ~950 frames at 32 x 32) takes ~3 s.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json

import numpy as np

from vtd.data import cache
from vtd.uts.data import fivr
from vtd.uts.data.synthetic_fivr_render import STREAMS, Camera, World, jitter_style, make_channel
from vtd.uts.data.synthetic_fivr_render import random_style, stream, upload_edit
from vtd.errors import UserError

VERSION = 2  # Bump when the generator changes: it is part of the cache key.
LABELS = ("ND", "DS", "CS", "IS")  # FIVR visual labels, in annotation order (DA not generated).
TASKS = {"DSVR": ("ND", "DS"), "CSVR": ("ND", "DS", "CS"), "ISVR": ("ND", "DS", "CS", "IS")}
KINDS = ("query", "ND", "DS", "CS", "IS", "distractor", "hard_distractor")  # Per-video kind.
# Fractions of a video's keyframes that are its own footage (the rest is filler), U(lo, hi).
DS_OWN_FRACTION = (0.15, 0.45)  # A minority: the duplicate scene inside a longer video.
CS_IS_OWN_FRACTION = (0.3, 0.6)
DISTRACTOR_OWN_FRACTION = (0.4, 1.0)
DS_WITH_CS = 0.08  # P(a DS video also shows the moment from another camera, hence also CS).


@dataclasses.dataclass(frozen=True)
class SyntheticFivrSpec:
  """Every parameter of the generator (the cache key); the module docstring gives their roles
  and sources."""
  seed: int = 0
  num_events: int = 12  # Test events: one test query each.
  num_val_events: int = 8  # Validation events: their queries and labels are not in the test.
  num_nd: int = 1  # Videos per event and label.
  num_ds: int = 5
  num_cs: int = 2
  num_is: int = 3
  num_distractors: int = 150
  hard_distractor_fraction: float = 0.4  # Of the distractor worlds, copying an event's style.
  mean_frames: float = 32.0  # Keyframes per video ~ log-normal of this mean...
  frames_sigma: float = 0.6  # ...and this log-std, clipped to [min_frames, max_frames].
  min_frames: int = 8
  max_frames: int = 128
  height: int = 64
  width: int = 64
  scenes_per_event: int = 2  # Scene 0: query, ND, DS, CS; scenes >= 1: IS.
  scene_frames: int = 256  # Time steps of footage per scene (>= 2 * max_frames).
  world_scale: float = 3.0  # World canvas = world_scale x (height, width).
  landmarks_per_world: int = 4
  actors_per_scene: int = 3
  props_per_scene: int = 2  # Static objects present in one scene only.
  viewpoint_spread: float = 0.4  # Camera centre std around the action centre, x height.
  lighting_shift: float = 0.3  # Lighting change of scenes >= 1 (log gain scale).
  num_channels: int = 6  # Uploaders' intros, watermarks and studio footage.
  num_stock_worlds: int = 8  # B-roll worlds whose footage fills videos of every kind.
  edit_strength: float = 1.0  # Scales every upload's edit strength (0: light JPEG only).

  def cache_key(self) -> str:
    payload = json.dumps({**dataclasses.asdict(self), "version": VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

  def validate(self) -> None:
    """Raises UserError naming the first inconsistent parameter."""
    counts = (self.num_nd, self.num_ds, self.num_cs, self.num_is, self.num_distractors,
              self.num_val_events, self.num_stock_worlds)
    checks = [
        (self.num_events >= 1, "need num_events >= 1"),
        (min(counts) >= 0, "video, event and world counts must be >= 0"),
        (self.scenes_per_event >= 1, "need scenes_per_event >= 1"),
        (self.num_is == 0 or self.scenes_per_event >= 2, "IS videos need scenes_per_event >= 2"),
        (4 <= self.min_frames <= self.max_frames, "need 4 <= min_frames <= max_frames"),
        (self.min_frames <= self.mean_frames <= self.max_frames and self.frames_sigma >= 0,
         "need min_frames <= mean_frames <= max_frames and frames_sigma >= 0"),
        (self.scene_frames >= 2 * self.max_frames, "need scene_frames >= 2 * max_frames"),
        (self.height >= 16 and self.width >= 16, "height and width must be >= 16"),
        (self.world_scale >= 2, "need world_scale >= 2"),
        (0 <= self.hard_distractor_fraction <= 1, "need 0 <= hard_distractor_fraction <= 1"),
        (self.num_channels >= 1, "need num_channels >= 1"),
        (0 <= self.edit_strength <= 1.5, "need 0 <= edit_strength <= 1.5"),
        (min(self.actors_per_scene, self.landmarks_per_world, self.props_per_scene) >= 0,
         "actor, landmark and prop counts must be >= 0")]
    for ok, message in checks:
      if not ok:
        raise UserError(f"invalid SyntheticFivrSpec: {message} ({self})")


SMOKE_SPEC = SyntheticFivrSpec(num_events=3, num_val_events=2, num_distractors=30,
                               mean_frames=10, min_frames=6, max_frames=24, height=32, width=32,
                               scene_frames=48, num_channels=3, num_stock_worlds=3)


@dataclasses.dataclass
class SyntheticFivr:
  """The collection: every video's keyframes, the queries and the FIVR annotation.

  Attributes:
    spec: the generator parameters.
    video_ids: [V] 11-character YouTube-like ids, sorted (the database order).
    frames: [sum_v T_v, H, W, 3] uint8 RGB keyframes of all videos, concatenated in
      `video_ids` order; video v is frames[offsets[v]:offsets[v + 1]].
    offsets: [V + 1] int64.
    query_ids: one test query per test event (event order); every query is also a database
      video.
    annotation: {query_id: {label: [video ids]}}, labels in LABELS order, empty labels omitted:
      exactly FIVR's annotation.json (a video may carry two labels, e.g. DS and CS).
    val_query_ids, val_annotation: the same for the validation events (defaults are chosen on
      them; no test query or test label is among them).
    split: "train" (all videos: unsupervised training on the database keyframes),
      "train_disjoint" (distractors only), "database" (all videos), "queries", "val_queries".
    events: [V] int64, the event of each video (validation events numbered after the test
      events), -1 for distractors (diagnostics only).
    kinds: [V] KINDS names (diagnostics only; retrieval must use `annotation`).
  """
  spec: SyntheticFivrSpec
  video_ids: list[str]
  frames: np.ndarray
  offsets: np.ndarray
  query_ids: list[str]
  annotation: dict[str, dict[str, list[str]]]
  val_query_ids: list[str]
  val_annotation: dict[str, dict[str, list[str]]]
  split: dict[str, list[str]]
  events: np.ndarray
  kinds: list[str]

  def __len__(self) -> int:  # Number of videos.
    return len(self.video_ids)

  @property
  def num_frames(self) -> np.ndarray:
    """[V] int64 keyframes per video."""
    return np.diff(self.offsets)

  @property
  def frame_video(self) -> np.ndarray:
    """[sum_v T_v] int64, the video index of every frame."""
    return np.repeat(np.arange(len(self)), self.num_frames)

  @functools.cached_property
  def _positions(self) -> dict[str, int]:
    return {v: i for i, v in enumerate(self.video_ids)}

  def index(self, video_id: str) -> int:
    """The database position of a video id (KeyError if unknown)."""
    return self._positions[video_id]

  def video_frames(self, video: int | str) -> np.ndarray:
    """[T, H, W, 3] uint8 keyframes of a video (index or id); a view, not a copy."""
    i = self.index(video) if isinstance(video, str) else int(video)
    return self.frames[self.offsets[i]:self.offsets[i + 1]]

  def positives(self, query_id: str, task: str) -> set[str]:
    """The union of the task's labels for a (test or validation) query (FIVR's ground truth,
    §B.2)."""
    labels = self.annotation.get(query_id) or self.val_annotation.get(query_id, {})
    return set().union(*(labels.get(name, ()) for name in TASKS[task]))


# ----------------------------------------------------------------------------- plans

def _steps(rng: np.random.Generator, start: int, length: int, total: int,
           strength: float) -> np.ndarray:
  """`length` time steps into footage of `total` steps from `start`, temporally edited."""
  speed = float(np.exp(rng.uniform(-0.4, 0.4) * strength))
  n = int(np.ceil(length * 1.5)) + 2
  idx = start + np.floor(np.arange(n) * speed).astype(np.int64)
  keep = rng.random(n) >= 0.15 * strength
  keep[0] = True
  idx = idx[keep][:length]
  if len(idx) < length:  # Slow speed and many drops: pad with the last step (a freeze).
    idx = np.concatenate([idx, np.full(length - len(idx), idx[-1])])
  if len(idx) >= 4 and rng.random() < 0.25 * strength:  # A reversed sub-segment.
    a = int(rng.integers(0, len(idx) - 3))
    b = int(rng.integers(a + 3, len(idx) + 1))
    idx[a:b] = idx[a:b][::-1]
  return np.clip(idx, 0, total - 1)


def _strength(rng: np.random.Generator, spec: SyntheticFivrSpec, lo: float, hi: float) -> float:
  return float(rng.uniform(lo, hi) * spec.edit_strength)


def _length(rng: np.random.Generator, spec: SyntheticFivrSpec, around: int | None = None,
            spread: float = 0.1) -> int:
  """Keyframes of a video: log-normal with mean ~mean_frames (or ~`around`), clipped."""
  if around is None:
    mu = np.log(spec.mean_frames) - spec.frames_sigma ** 2 / 2
    t = np.exp(rng.normal(mu, spec.frames_sigma))
  else:
    t = around * np.exp(rng.normal(0, spread))
  return int(np.clip(round(float(t)), spec.min_frames, spec.max_frames))


def _video_id(spec: SyntheticFivrSpec, key: str) -> str:
  """An 11-character YouTube-like id (base64url alphabet), a hash of the seed and the key."""
  digest = hashlib.sha256(f"vtd-synthetic-fivr/{spec.seed}/{key}".encode()).digest()
  return base64.urlsafe_b64encode(digest).decode()[:11]


@dataclasses.dataclass
class _Plan:
  """A video before rendering: footage segments and the uploader's edit."""
  key: str  # Hashed into the video id.
  kind: str
  labels: tuple[str, ...]
  segments: list[tuple[Camera, np.ndarray]]
  strength: float
  channel: dict
  intro: bool
  seed: int  # Of the upload's random stream.


def _plan(rng, key, kind, labels, segments, strength, channel, intro=None) -> _Plan:
  intro = bool(rng.random() < 0.4) if intro is None else intro
  return _Plan(key, kind, labels, segments, float(strength), channel, intro,
               int(rng.integers(2 ** 63)))


def _render(spec: SyntheticFivrSpec, plans: list[_Plan]) -> list[np.ndarray]:
  """Renders the cameras the plans use, then uploads: uint8 [T, H, W, 3] per plan."""
  cameras = {id(cam): cam for plan in plans for cam, _ in plan.segments if cam.footage is None}
  for cam in cameras.values():
    cam.render()
  videos = [upload_edit(np.random.default_rng(plan.seed), spec,
                        np.concatenate([cam.frames(steps) for cam, steps in plan.segments]),
                        plan.strength, plan.channel, plan.intro) for plan in plans]
  for cam in cameras.values():
    cam.footage = None  # Frees memory: event by event.
  return videos


def _window(rng: np.random.Generator, camera: Camera, n: int, total: int) -> tuple:
  """A random window of `n` consecutive steps of a (pre-rendered) shared camera."""
  start = int(rng.integers(0, total - n + 1))
  return camera, np.arange(start, start + n)


def _filler(rng: np.random.Generator, spec: SyntheticFivrSpec, n: int, channel: dict,
            stock: list[Camera]) -> list[tuple]:
  """`n` keyframes of unrelated footage in 1-3 shots: the channel's studio (p 0.5) or stock
  B-roll shared by the whole collection (module docstring)."""
  if n <= 0:
    return []
  shots = int(min(n, rng.integers(1, 4)))
  cuts = np.sort(rng.choice(np.arange(1, n), shots - 1, replace=False)) if shots > 1 else []
  out = []
  for length in np.diff(np.concatenate([[0], cuts, [n]])).astype(int):
    cam = channel["studio"] if rng.random() < 0.5 or not stock else stock[
        int(rng.integers(len(stock)))]
    out.append(_window(rng, cam, int(length), spec.scene_frames))
  return out


def _mixed(rng: np.random.Generator, own: list[tuple], filler: list[tuple]) -> list[tuple]:
  """The video's own footage and its filler shots in a random order."""
  parts = own + filler
  return [parts[i] for i in rng.permutation(len(parts))]


def _own(rng: np.random.Generator, length: int, lo: float, hi: float, cap: int | None = None
         ) -> int:
  """Keyframes of a video's own footage: a fraction U(lo, hi) of `length`, >= 3, <= cap."""
  n = int(round(length * rng.uniform(lo, hi)))
  return int(np.clip(n, 3, min(length, cap or length)))


def _plan_event(spec: SyntheticFivrSpec, stream_key: int, e: int, channels: list[dict],
                stock: list[Camera]) -> list[_Plan]:
  """Event e's videos: the query first, then its positives (module docstring)."""
  world = World(spec, stream(spec, stream_key, e, 1), random_style(
      stream(spec, stream_key, e, 0)), spec.scenes_per_event, spec.landmarks_per_world,
                spec.actors_per_scene)
  rng = stream(spec, stream_key, e, 2)
  total = spec.scene_frames
  query_cam = Camera(world, rng, 0)
  cs_cams = [Camera(world, rng, 0) for _ in range(spec.num_cs)]
  is_cams = [Camera(world, rng, 1 + k % (spec.scenes_per_event - 1)) for k in range(spec.num_is)]
  pick = lambda: channels[int(rng.integers(len(channels)))]
  span = lambda start, n: np.arange(start, start + n)

  tq = _length(rng, spec)
  q0 = int(rng.integers(total // 4, total - tq - total // 4 + 1))
  plans = [_plan(rng, "query", "query", (), [query_cam.take(span(q0, tq))],
                 0.15 * spec.edit_strength, pick(), intro=False)]
  for k in range(spec.num_nd):  # The query re-edited (a near-duplicate of the whole video).
    s = _strength(rng, spec, 0.4, 1.0)
    start = int(np.clip(q0 + rng.integers(-2, 3), 0, total - 1))
    steps = _steps(rng, start, _length(rng, spec, tq), total, s)
    plans.append(_plan(rng, f"nd{k}", "ND", ("ND",), [query_cam.take(steps)], s, pick()))
  for k in range(spec.num_ds):
    s, ch, length = _strength(rng, spec, 0.4, 1.0), pick(), _length(rng, spec)
    n_own = _own(rng, length, *DS_OWN_FRACTION, cap=tq)
    # Inside the query window, up to a quarter of the segment sticking out on either side.
    lo, hi = q0 - n_own // 4, q0 + tq - n_own + n_own // 4
    start = int(np.clip(rng.integers(lo, max(lo, hi) + 1), 0, total - n_own))
    own = [query_cam.take(_steps(rng, start, n_own, total, 0.3 * s))]
    labels = ("DS",)
    if cs_cams and rng.random() < DS_WITH_CS:  # The same moment from another camera: also CS.
      n_cs = min(_own(rng, length, 0.1, 0.3), length - n_own)
      if n_cs >= 3:
        o0 = int(np.clip(start + rng.integers(-4, 5), 0, total - n_cs))
        own.append(cs_cams[int(rng.integers(len(cs_cams)))].take(span(o0, n_cs)))
        labels = ("DS", "CS")
    filler = _filler(rng, spec, length - sum(len(st) for _, st in own), ch, stock)
    plans.append(_plan(rng, f"ds{k}", "DS", labels, _mixed(rng, own, filler), s, ch))
  for k, cam in enumerate(cs_cams):
    s, ch, length = _strength(rng, spec, 0.2, 0.8), pick(), _length(rng, spec)
    n_own = _own(rng, length, *CS_IS_OWN_FRACTION)
    start = int(np.clip(q0 + rng.integers(-n_own // 2, tq - n_own // 2 + 1), 0, total - n_own))
    own = [cam.take(_steps(rng, start, n_own, total, s))]
    plans.append(_plan(rng, f"cs{k}", "CS", ("CS",), _mixed(
        rng, own, _filler(rng, spec, length - n_own, ch, stock)), s, ch))
  for k, cam in enumerate(is_cams):
    s, ch, length = _strength(rng, spec, 0.2, 0.8), pick(), _length(rng, spec)
    n_own = _own(rng, length, *CS_IS_OWN_FRACTION)
    start = int(rng.integers(0, total - n_own + 1))
    own = [cam.take(_steps(rng, start, n_own, total, s))]
    plans.append(_plan(rng, f"is{k}", "IS", ("IS",), _mixed(
        rng, own, _filler(rng, spec, length - n_own, ch, stock)), s, ch))
  return plans


def _plan_distractor_world(spec: SyntheticFivrSpec, index: int, channels: list[dict],
                           stock: list[Camera], max_videos: int) -> list[_Plan]:
  """1-4 videos (at most max_videos) of distractor world `index`."""
  rng = stream(spec, STREAMS["distractor"], index)
  hard = rng.random() < spec.hard_distractor_fraction
  if hard:  # Copies an event's style (from the event's own style stream).
    event = int(rng.integers(spec.num_events + spec.num_val_events))
    key, e = (STREAMS["event"], event) if event < spec.num_events else (
        STREAMS["val_event"], event - spec.num_events)
    style = jitter_style(rng, random_style(stream(spec, key, e, 0)))
  else:
    style = random_style(rng)
  world = World(spec, rng, style, 1, spec.landmarks_per_world, spec.actors_per_scene)
  cams = [Camera(world, rng, 0) for _ in range(2)]
  plans = []
  for k in range(min(int(rng.integers(1, 5)), max_videos)):
    s, ch, length = _strength(rng, spec, 0.1, 0.9), channels[int(rng.integers(len(channels)))], \
        _length(rng, spec)
    n_own = _own(rng, length, *DISTRACTOR_OWN_FRACTION)
    start = int(rng.integers(0, spec.scene_frames - n_own + 1))
    own = [cams[int(rng.integers(2))].take(_steps(rng, start, n_own, spec.scene_frames, s))]
    plans.append(_plan(rng, f"d{index}/{k}", "hard_distractor" if hard else "distractor", (),
                       _mixed(rng, own, _filler(rng, spec, length - n_own, ch, stock)), s, ch))
  return plans


def _stock_cameras(spec: SyntheticFivrSpec) -> list[Camera]:
  """B-roll: one pre-rendered camera in each of `num_stock_worlds` worlds (random styles)."""
  cams = []
  for index in range(spec.num_stock_worlds):
    rng = stream(spec, STREAMS["stock"], index)
    world = World(spec, rng, random_style(rng), 1, spec.landmarks_per_world,
                  spec.actors_per_scene)
    cam = Camera(world, rng, 0)
    cam.render(all_steps=True)
    cams.append(cam)
  return cams


def _event_rows(spec, stream_key, count, prefix, channels, stock, first_event):
  """Renders `count` events: rows (id, kind, event, frames), query ids and annotation."""
  rows, annotation, query_ids = [], {}, []
  for e in range(count):
    plans = _plan_event(spec, stream_key, e, channels, stock)
    ids = [_video_id(spec, f"{prefix}{e}/{plan.key}") for plan in plans]
    query_ids.append(ids[0])
    labels = {name: [] for name in LABELS}
    for vid, plan, frames in zip(ids, plans, _render(spec, plans)):
      rows.append((vid, plan.kind, first_event + e, frames))
      for name in plan.labels:
        labels[name].append(vid)
    annotation[ids[0]] = {name: vids for name, vids in labels.items() if vids}
  return rows, query_ids, annotation


def generate(spec: SyntheticFivrSpec = SyntheticFivrSpec()) -> SyntheticFivr:
  """Generates the collection for `spec` (deterministic in `spec`; module docstring)."""
  spec.validate()
  channels = [make_channel(spec, c) for c in range(spec.num_channels)]
  stock = _stock_cameras(spec)
  rows, query_ids, annotation = _event_rows(spec, STREAMS["event"], spec.num_events, "e",
                                            channels, stock, 0)
  val_rows, val_query_ids, val_annotation = _event_rows(
      spec, STREAMS["val_event"], spec.num_val_events, "v", channels, stock, spec.num_events)
  rows += val_rows
  world, num_distractors = 0, 0
  while num_distractors < spec.num_distractors:
    plans = _plan_distractor_world(spec, world, channels, stock,
                                   spec.num_distractors - num_distractors)
    for plan, frames in zip(plans, _render(spec, plans)):
      rows.append((_video_id(spec, plan.key), plan.kind, -1, frames))
    num_distractors += len(plans)
    world += 1
  rows.sort(key=lambda row: row[0])
  video_ids = [row[0] for row in rows]
  if len(set(video_ids)) != len(video_ids):  # 66-bit hashes: never seen, but never silent.
    raise RuntimeError("synthetic FIVR video id collision; change the seed")
  offsets = np.concatenate([[0], np.cumsum([len(row[3]) for row in rows])]).astype(np.int64)
  kinds = [row[1] for row in rows]
  return SyntheticFivr(
      spec=spec, video_ids=video_ids, frames=np.concatenate([row[3] for row in rows]),
      offsets=offsets, query_ids=query_ids, annotation=annotation,
      val_query_ids=val_query_ids, val_annotation=val_annotation,
      split=_split(video_ids, kinds, query_ids, val_query_ids),
      events=np.array([row[2] for row in rows], np.int64), kinds=kinds)


def _split(video_ids: list[str], kinds: list[str], query_ids: list[str],
           val_query_ids: list[str]) -> dict[str, list[str]]:
  disjoint = [v for v, k in zip(video_ids, kinds) if k in ("distractor", "hard_distractor")]
  return {"train": list(video_ids), "train_disjoint": disjoint, "database": list(video_ids),
          "queries": list(query_ids), "val_queries": list(val_query_ids)}


# ----------------------------------------------------------------------------- files

def write_annotation_json(ds: SyntheticFivr, path: str) -> None:
  """Writes `ds.annotation` as FIVR's annotation.json (validated, atomically)."""
  fivr.save_annotation(ds.annotation, path)


def save_npz(ds: SyntheticFivr, path: str) -> None:
  """Writes the collection as one .npz, atomically."""
  arrays = {"meta/cache_key": np.asarray(ds.spec.cache_key()), "frames": ds.frames,
            "offsets": ds.offsets, "video_ids": np.asarray(ds.video_ids, dtype=str),
            "query_ids": np.asarray(ds.query_ids, dtype=str), "events": ds.events,
            "kinds": np.asarray(ds.kinds, dtype=str),
            "annotation": np.asarray(json.dumps(ds.annotation)),
            "val_query_ids": np.asarray(ds.val_query_ids, dtype=str),
            "val_annotation": np.asarray(json.dumps(ds.val_annotation))}
  cache.save_entry(path, arrays)


def load_npz(path: str, spec: SyntheticFivrSpec) -> SyntheticFivr:
  """Reads a file written by `save_npz` for `spec`; a stale or broken file is a UserError."""
  arrays = cache.load_entry(path, "synthetic FIVR cache")
  if str(arrays.get("meta/cache_key")) != spec.cache_key():
    raise UserError(f"synthetic FIVR cache {path} was written for another spec")
  try:
    video_ids = arrays["video_ids"].tolist()
    kinds = arrays["kinds"].tolist()
    query_ids = arrays["query_ids"].tolist()
    val_query_ids = arrays["val_query_ids"].tolist()
    return SyntheticFivr(spec=spec, video_ids=video_ids, frames=arrays["frames"],
                         offsets=arrays["offsets"], query_ids=query_ids,
                         annotation=json.loads(str(arrays["annotation"])),
                         val_query_ids=val_query_ids,
                         val_annotation=json.loads(str(arrays["val_annotation"])),
                         split=_split(video_ids, kinds, query_ids, val_query_ids),
                         events=arrays["events"], kinds=kinds)
  except (OSError, ValueError, KeyError) as e:  # Truncated or foreign files.
    if isinstance(e, UserError):
      raise
    raise UserError(f"cannot read synthetic FIVR cache {path}: {type(e).__name__}: {e}"
                    ) from None


def cache_path(spec: SyntheticFivrSpec, cache_dir: str) -> str:
  return cache.cache_file(cache_dir, "synthetic_fivr", spec.cache_key())


def load_or_generate(spec: SyntheticFivrSpec = SyntheticFivrSpec(),
                     cache_dir: str | None = None) -> SyntheticFivr:
  """Loads the cached collection for `spec`, generating (and caching) it on first use."""
  return cache.load_or_generate(cache_dir and cache_path(spec, cache_dir),
                                lambda: generate(spec), lambda p: load_npz(p, spec), save_npz)
