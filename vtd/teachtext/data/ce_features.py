r"""Reads the released features of the official TeachText / CE code into a `RetrievalDataset`.

  python -m vtd.teachtext.data.ce_features --data_dir=data --dataset=msrvtt_full --out=msrvtt.npz
  python -m vtd.main --config=configs/teachtext.py --config.data.source=npz \
      --config.data.path=msrvtt.npz ...

Layout (reference §5; per-dataset names in `vtd.teachtext.data.ce_specs`):

  <data_dir>/<DATASET>/high-quality/structured-symlinks/   (TeachText "HQ" release; the CE
                                                             features-v2 release and QuerYD use
                                                             <DATASET>/structured-symlinks/)
    <split lists>.txt                      one video id per line
    aggregated_<type>_<fps>fps_..._/<model>-avg.pickle    fixed-size experts: {vid: [D]}
    aggregated_audio*/..., aggregated_speech*/...         token experts: {vid: [T_v, D]}
    aggregated_text_feats/<name>.pkl       {vid: [[n_tokens, D] per caption]}
    teachers/*.pkl                         {vid: {'vid_embds': {e: [D]}, 'text_embds': {e: [n, D]}}}

Formats read: dict pickles, old `ExpertStore` pickles (module `datastructures`) and pickled-dict
.npy files, through a restricted unpickler; not hickle (`vtd.teachtext.data.ce_files` documents them).
Public names of `ce_files` are re-exported here.

Decisions:
* Split lists: blank lines ignored, surrounding spaces stripped; DiDeMo ids cut at the first "."
  (reference §5.5); a duplicate id is an error (it would duplicate a retrieval target).
* Experts: a missing video is the float NaN (reference §5.2), a NaN-filled row (ExpertStore
  stores NaN) or a key in `ExpertStore.missing`: zero features, available False. A video absent
  from the file is treated the same and logged as a warning with the count. Fixed experts
  accept [D] or [1, D]; token experts keep the first `max_tokens` rows, zero-padded, and a
  [0, D] value stays available with all-zero tokens, as the official collate does.
* Text: each caption's word features are truncated to `max_text_tokens` and zero-padded to it
  (L). K = the most captions any video of the split keeps: all of them in train, the first
  `eval_captions[split]` in val/test (MSR-VTT: val 1, test 20; MSVD 81; LSMDC 1), or the one
  chosen by `caption_index_file` (1k-A). Fused datasets (DiDeMo, ActivityNet, QuerYD)
  concatenate all captions' word features in order and keep the first L tokens: K = 1. Slot k
  is caption k of the file; a caption with zero tokens keeps its slot, masked (warning); a video
  without any caption, or a split video absent from a text file, is an error naming the file
  and the first ids.
* dtype float16 by default (the release's own ExpertStore dtype); a value beyond float16's range
  is an error asking for float32. Val and test that share a list file share one split object.

Route (a tfds builder with a manual dir, or a grain source, were considered): **in-memory reader +
vtd's npz cache; no tfds builder, no grain source.** Facts behind it:
* The sources are a few monolithic pickles: any converter (a tfds `_generate_examples` as well)
  must unpickle each whole file first, so a builder saves neither conversion time nor memory.
* The consumer, vtd/teachtext/input_pipeline.py, already runs grain's `MapDataset` over an
  in-memory split and gathers (video, caption) rows by fancy indexing; evaluation
  (vtd/teachtext/evaluate.py) gathers every caption slot of a split at once. ArrayRecord
  records would have to be re-assembled into those arrays, adding tensorflow/array_record to a
  one-off conversion and a builder per dataset without removing any step.
* Size: at most ~10k videos (MSR-VTT; LSMDC ~101k single-caption clips), so record-level
  sharding buys nothing; per video the MSR-VTT gpt2-xl text is 20 x 37 x 1600 float16 = 2.4 MB.
* Memory is what matters, and it is dominated by padded word features. MSR-VTT Full, K = 20
  (val K = 1), L = 37, float16: gpt2-xl (1600-d) train 15.4 GB + val 0.06 GB + test 7.1 GB =
  22.6 GB (45 GB float32); w2v (300-d) 4.2 GB. TT-CE+'s three embeddings: ~49 GB float16.
  All video experts of 10k videos: ~0.4 GB. Unpickling a 1600-d text file also holds the ragged
  original while it is converted, one file at a time (~200k captions x ~10 tokens x 1600 x 4 B
  ~ 13 GB if float32; the token count is an estimate, the pickles' dtype NOT FOUND). Convert
  once on a large-memory machine (measured here, 2 CPU cores: 10k captions of 6-15 x 1600
  float32 unpickle in 0.3 s and convert to float16 in 5.4 s, so ~2 min per MSR-VTT gpt2-xl
  file), then train from the npz (`configs/teachtext.py`, data.source=npz). `load_npz` reads
  it whole, so training needs the same RAM; evaluation gathers a split's caption slots into
  one more array (+7.1 GB for the gpt2-xl test split); and a val = test split (ActivityNet,
  1k-A, 1k-B) is one object here but two copies after the npz round trip.
* If that is too much, the step that pays is not tfds but storing the text ragged (offsets +
  concatenated tokens, ~3.4x smaller for MSR-VTT) or memory-mapped (uncompressed .npy per
  array; np.memmap supports the pipeline's fancy indexing) - a change to vtd.teachtext.data.retrieval and
  the TeachText pipeline/evaluator, which this module leaves alone.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from vtd.teachtext.data import ce_specs
# Re-exported: the file-level readers are part of this module's API.
from vtd.teachtext.data.ce_files import (ExpertStore, TeacherEmbeddings, as_mapping,  # noqa: F401
                               load_feature_file, load_teacher_embeddings, read_split_list)
from vtd.teachtext.data.retrieval import RetrievalDataset, RetrievalSplit, save_npz
from vtd import cli
from vtd.errors import UserError

SPLITS = ce_specs.SPLITS


def _is_nan_scalar(value: Any) -> bool:
  """The release's "missing" marker: the float NaN (also as a numpy scalar or 0-d array)."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  return isinstance(value, (float, np.floating)) and math.isnan(value)


def _check_range(arr: np.ndarray, dtype: np.dtype, source: str, vid: str) -> None:
  if arr.size and np.dtype(dtype) == np.float16 and np.abs(arr).max() > np.finfo(np.float16).max:
    raise UserError(f"{source}: video {vid!r} has values beyond float16's range; use float32")


_ABSENT = object()


def expert_features(data: Any, video_ids: Sequence[str], *, max_tokens: int | None,
                    dtype: Any = np.float16, source: str = "expert"
                    ) -> tuple[np.ndarray, np.ndarray, int]:
  """One expert for the videos of a split.

  Args:
    data: the loaded file, {vid: [D] or [T_v, D] array, or float NaN}.
    max_tokens: None for a fixed-size expert, else T of a token-sequence expert.

  Returns:
    features [N_v, D] or [N_v, T, D] (zero where missing), available [N_v] bool, and the number
    of videos absent from the file.
  """
  mapping = as_mapping(data, source)
  arrays: list[np.ndarray | None] = []
  absent, dim = 0, None
  for vid in video_ids:
    value = mapping.get(vid, _ABSENT)
    if value is _ABSENT:
      absent += 1
      value = None
    if value is None or _is_nan_scalar(value):
      arrays.append(None)
      continue
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.number):
      raise UserError(f"{source}: video {vid!r}: expected a numeric array, got {arr.dtype}")
    if max_tokens is None:
      arr = arr[0] if arr.ndim == 2 and arr.shape[0] == 1 else arr
      if arr.ndim != 1:
        raise UserError(f"{source}: video {vid!r}: a fixed-size expert needs a [D] vector, got "
                        f"shape {arr.shape} (token-sequence experts need expert_max_tokens)")
    else:
      arr = arr[None] if arr.ndim == 1 else arr
      if arr.ndim != 2:
        raise UserError(f"{source}: video {vid!r}: expected [T, D] tokens, got {arr.shape}")
    if np.isnan(arr).any():  # ExpertStore rows of missing videos are NaN.
      arrays.append(None)
      continue
    if np.isinf(arr).any():
      raise UserError(f"{source}: video {vid!r} has infinite feature values (a damaged file?)")
    if dim is None:
      dim = arr.shape[-1]
    elif arr.shape[-1] != dim:
      raise UserError(f"{source}: video {vid!r} has dimension {arr.shape[-1]}, others {dim}")
    _check_range(arr, dtype, source, vid)
    arrays.append(arr)
  if dim is None:  # Every video of this split is missing: take D from the rest of the file.
    dim = next((np.shape(v)[-1] for v in mapping.values()
                if not (v is None or _is_nan_scalar(v)) and np.ndim(v) >= 1), None)
    if dim is None:
      raise UserError(f"{source}: no video has features")
  shape = (len(video_ids), dim) if max_tokens is None else (len(video_ids), max_tokens, dim)
  feats = np.zeros(shape, dtype)
  available = np.array([a is not None for a in arrays], bool)
  for i, arr in enumerate(arrays):
    if arr is not None:
      if max_tokens is None:
        feats[i] = arr
      else:
        feats[i, :min(len(arr), max_tokens)] = arr[:max_tokens]
  return feats, available, absent


def _captions(value: Any, source: str, vid: str) -> list[np.ndarray]:
  """A video's captions as a list of [n_tokens, D] arrays."""
  if isinstance(value, np.ndarray) and value.dtype != object:
    value = [value] if value.ndim == 2 else list(value)  # One bare caption / [n, T, D] stack.
  if not isinstance(value, (list, tuple, np.ndarray)):
    raise UserError(f"{source}: video {vid!r}: expected a list of [n_tokens, D] arrays, got "
                    f"{type(value).__name__}")
  caps = []
  for c in value:
    c = np.asarray(c)
    c = c[None] if c.ndim == 1 else c  # A single-token caption stored as [D].
    if c.ndim != 2 or not np.issubdtype(c.dtype, np.number):
      raise UserError(f"{source}: video {vid!r}: a caption must be a numeric [n_tokens, D] "
                      f"array, got {c.dtype} {c.shape}")
    caps.append(c)
  return caps


def text_features(data: Any, video_ids: Sequence[str], *, max_tokens: int,
                  dtype: Any = np.float16, fuse: bool = False, max_captions: int | None = None,
                  caption_index: Mapping[str, int] | None = None, source: str = "text"
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Word features of a split's captions.

  Args:
    data: {vid: list over captions of [n_tokens, D] arrays}.
    max_tokens: L, tokens kept per caption (per paragraph when fused).
    fuse: concatenate all captions of a video into one (K = 1).
    max_captions: keep each video's first captions only (val/test).
    caption_index: {vid: index}: keep only that caption (MSR-VTT 1k-A).

  Returns:
    text [N_v, K, L, D] zero-padded, caption_mask [N_v, K] bool.
  """
  mapping = as_mapping(data, source)
  absent = [v for v in video_ids if v not in mapping]
  if absent:
    raise UserError(f"{source}: {len(absent)} of the split's {len(video_ids)} videos have no "
                    f"captions, e.g. {absent[:5]}")
  per_video, dim, empty = [], None, 0
  for vid in video_ids:
    caps = _captions(mapping[vid], source, vid)
    if caption_index is not None:
      if vid not in caption_index:
        raise UserError(f"caption index file has no entry for video {vid!r}")
      idx = int(caption_index[vid])
      if not 0 <= idx < len(caps):
        raise UserError(f"caption index {idx} of video {vid!r} is out of range ({len(caps)} "
                        f"captions in {source})")
      caps = [caps[idx]]
    elif max_captions is not None:
      caps = caps[:max_captions]
    if fuse and caps:
      caps = [np.concatenate(caps, axis=0)]  # One paragraph, captions in order.
    empty += sum(c.shape[0] == 0 for c in caps)
    for c in caps:
      if c.shape[0] == 0:
        continue
      if dim is None:
        dim = c.shape[1]
      elif c.shape[1] != dim:
        raise UserError(f"{source}: video {vid!r} has word features of dimension {c.shape[1]}, "
                        f"others {dim}")
      if not np.isfinite(c).all():
        raise UserError(f"{source}: video {vid!r} has NaN or infinite word features")
      _check_range(c[:max_tokens], dtype, source, vid)
    per_video.append(caps)
  if empty:
    logging.warning("%s: masked %d captions without tokens", source, empty)
  bare = [v for v, caps in zip(video_ids, per_video) if not any(len(c) for c in caps)]
  if bare:
    raise UserError(f"{source}: {len(bare)} videos have no caption with tokens, e.g. {bare[:5]}")
  k = max(len(caps) for caps in per_video)
  text = np.zeros((len(video_ids), k, max_tokens, dim), dtype)
  mask = np.zeros((len(video_ids), k), bool)
  for i, caps in enumerate(per_video):
    for j, c in enumerate(caps):  # Slot j stays caption j of the file (teacher rows align).
      mask[i, j] = len(c) > 0
      text[i, j, :min(len(c), max_tokens)] = c[:max_tokens]
  return text, mask


def default_roots(data_dir: str, dataset: str) -> tuple[str, str]:
  """(feature root, split-list folder) of `dataset` below the official `data_dir` (`data/`)."""
  spec = ce_specs.get_spec(dataset)
  base = os.path.join(data_dir, spec.data_folder)
  return os.path.join(base, spec.root_feat_folder), os.path.join(base, spec.list_folder)


def _empty_like(split: RetrievalSplit) -> RetrievalSplit:
  zero = lambda a: np.zeros((0,) + a.shape[1:], a.dtype)
  return RetrievalSplit(video_ids=[], experts={k: zero(v) for k, v in split.experts.items()},
                        expert_available={k: np.zeros(0, bool) for k in split.experts},
                        text={k: zero(v) for k, v in split.text.items()},
                        caption_mask=np.zeros((0,) + split.caption_mask.shape[1:], bool))


def load_ce_dataset(root: str, dataset: str, *, experts: Sequence[str] | None = None,
                    text_embeddings: Sequence[str] | None = None,
                    max_text_tokens: int | None = None,
                    expert_paths: Mapping[str, str] | None = None,
                    expert_max_tokens: Mapping[str, int] | None = None,
                    text_paths: Mapping[str, str | Sequence[str]] | None = None,
                    split_dir: str | None = None, dtype: Any = np.float16,
                    splits: Sequence[str] = SPLITS) -> RetrievalDataset:
  """Reads one dataset of the official release into vtd's in-memory retrieval format.

  Args:
    root: the feature root, e.g. data/MSRVTT/high-quality/structured-symlinks (`default_roots`).
    dataset: a key of `ce_specs.SPECS` (msrvtt_full, msrvtt_1ka, msrvtt_1kb, msvd, didemo,
      activitynet, lsmdc, queryd, vatex).
    experts: expert keys (official names, e.g. "imagenet.senet154.0"); default: the spec's.
    text_embeddings: e.g. ("w2v", "gpt2-xl-finetune"); default: the spec's.
    max_text_tokens: L; default: the spec's.
    expert_paths, text_paths: name -> path (relative to root, or absolute) replacing the spec's;
      they may also add experts / embeddings the spec does not know.
    expert_max_tokens: name -> T, marking (or re-limiting) token-sequence experts.
    split_dir: folder of the split lists (default root; LSMDC keeps them elsewhere).
    dtype: feature dtype (float16 halves memory, see the module docstring).
    splits: the splits to read; the others are left empty (0 videos, same feature shapes).

  Returns:
    A RetrievalDataset whose splits follow the list files' order.
  """
  spec = ce_specs.get_spec(dataset)
  paths = {**spec.expert_paths, **(expert_paths or {})}
  tokens = {**spec.variable_experts, **(expert_max_tokens or {})}
  if experts is None:
    if spec.default_experts is None:
      raise UserError(f"{dataset}: its expert set is NOT FOUND in the reference; pass experts")
    experts = spec.default_experts
  experts = tuple(experts)
  unknown = [e for e in experts if e not in paths]
  if unknown:
    raise UserError(f"{dataset}: unknown experts {unknown}; known: {sorted(paths)} (or pass "
                    f"expert_paths)")
  text_names = tuple(spec.default_text if text_embeddings is None else text_embeddings)
  if not text_names:
    raise UserError(f"{dataset}: name at least one text embedding")
  text_files = {n: (text_paths[n],) if isinstance(text_paths[n], str) else tuple(text_paths[n])
                for n in (text_paths or {})}
  for name in (*experts, *text_names):
    if name in spec.unsupported and name not in (expert_paths or {}) and name not in text_files:
      raise UserError(f"{dataset}: {name!r}: {spec.unsupported[name]}")
  max_text_tokens = max_text_tokens or spec.max_text_tokens
  if not max_text_tokens:
    raise UserError(f"{dataset}: max text tokens are NOT FOUND in the reference; pass "
                    f"max_text_tokens")
  bad_splits = [s for s in splits if s not in SPLITS]
  if bad_splits or not splits:
    raise UserError(f"splits must be a non-empty subset of {SPLITS}, got {list(splits)}")
  where = lambda p: p if os.path.isabs(p) else os.path.join(root, p)

  # Splits that share a list file (ActivityNet val_1, MSR-VTT 1k-A/1k-B) share one object.
  list_dir = split_dir or root
  ids = {}
  for f in dict.fromkeys(spec.split_lists[s] for s in splits):
    if not os.path.isfile(os.path.join(list_dir, f)):
      raise UserError(f"{dataset}: split list not found: {os.path.join(list_dir, f)} (split_dir "
                      f"sets their folder; the release keeps them in <data_dir>/"
                      f"{spec.data_folder}/{spec.list_folder})")
    ids[f] = read_split_list(os.path.join(list_dir, f), strip_suffix=spec.strip_id_suffix)
  parts = {f: {"experts": {}, "available": {}, "text": {}, "mask": None} for f in ids}
  eval_of = {spec.split_lists[s]: s for s in splits}  # Caption rule per file (val = test rule).

  for name in experts:
    path = where(paths[name])
    if not os.path.isfile(path):
      raise UserError(f"{dataset}: expert {name!r} file not found: {path} (override with "
                      f"expert_paths={{{name!r}: ...}})")
    data = load_feature_file(path)
    for f, vids in ids.items():
      feats, avail, absent = expert_features(data, vids, max_tokens=tokens.get(name),
                                             dtype=dtype, source=f"{path} ({name})")
      if absent:
        logging.warning("%s: expert %s: %d of %d videos of %s absent from %s (unavailable)",
                        dataset, name, absent, len(vids), f, path)
      parts[f]["experts"][name], parts[f]["available"][name] = feats, avail
    del data

  caption_index = None
  if spec.caption_index_file and any(s != "train" for s in splits):
    index_path = where(spec.caption_index_file)
    if not os.path.isfile(index_path):
      raise UserError(f"{dataset}: caption index file not found: {index_path} (the HQ tar "
                      f"list misspells its folder, reference §5.1)")
    caption_index = as_mapping(load_feature_file(index_path), index_path)
  for name in text_names:
    rel = text_files.get(name) or spec.text_file(name)
    files = [where(p) for p in rel]
    missing = [p for p in files if not os.path.isfile(p)]
    if missing:
      raise UserError(f"{dataset}: text embedding {name!r} file not found: {missing[0]} "
                      f"(override with text_paths={{{name!r}: ...}})")
    data = {}
    for p in files:  # ActivityNet openai: train + val1 files merged, as the official loader.
      data.update(as_mapping(load_feature_file(p), p))
    for f, vids in ids.items():
      split = eval_of[f]
      feats, mask = text_features(
          data, vids, max_tokens=max_text_tokens, dtype=dtype, fuse=spec.fuse_captions,
          max_captions=spec.eval_captions.get(split),
          caption_index=caption_index if split != "train" else None,
          source=f"{', '.join(files)} ({name})")
      old = parts[f]["mask"]
      if old is not None and not np.array_equal(old, mask):
        raise UserError(f"{dataset}: text embedding {name!r} has other caption counts than "
                        f"{text_names[0]!r} for the videos of {f}")
      parts[f]["text"][name], parts[f]["mask"] = feats, mask
    del data

  built = {f: RetrievalSplit(video_ids=ids[f], experts=p["experts"],
                             expert_available=p["available"], text=p["text"],
                             caption_mask=p["mask"]) for f, p in parts.items()}
  out = {s: built[spec.split_lists[s]] for s in splits}
  for s in SPLITS:
    if s not in out:
      out[s] = _empty_like(next(iter(built.values())))
  return RetrievalDataset(**out, description=f"CE features {dataset} from {root}")


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
  out = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or not name or not value:
      raise UserError(f"{flag} expects NAME=VALUE, got {item!r}")
    out[name] = value
  return out


def main(argv: list[str] | None = None) -> None:
  parser = cli.parser(
      "python -m vtd.teachtext.data.ce_features",
      "Convert the official CE / TeachText features to vtd's retrieval .npz.",
      "python -m vtd.teachtext.data.ce_features --dataset=msrvtt_full --data_dir=data "
      "--out=msrvtt.npz")
  cli.add(parser, "--dataset", choices=sorted(ce_specs.SPECS), required=True)
  where = parser.add_mutually_exclusive_group(required=True)
  cli.add(where, "--root", help="Feature root (…/structured-symlinks).")
  cli.add(where, "--data_dir", help="The official data/ folder (root from the spec).")
  cli.add(parser, "--split_dir", help="Folder of the split lists (default: from the spec).")
  cli.add(parser, "--out", required=True, help="The .npz to write.")
  cli.add(parser, "--experts", help="Comma-separated experts (default: the spec's).")
  cli.add(parser, "--text", help="Comma-separated text embeddings (default: the spec's).")
  cli.add(parser, "--max_text_tokens", type=int, help="Words kept per caption.")
  cli.add(parser, "--dtype", choices=("float16", "float32"), default="float16",
          help="Feature dtype in the .npz.")
  cli.add(parser, "--expert_path", action="append", default=[], metavar="NAME=PATH",
          help="The file of one expert, where it is not at the spec's path.")
  cli.add(parser, "--expert_max_tokens", action="append", default=[], metavar="NAME=T",
          help="Tokens kept for a sequence expert.")
  cli.add(parser, "--text_path", action="append", default=[], metavar="NAME=PATH",
          help="The file of one text embedding, where it is not at the spec's path.")
  args = parser.parse_args(argv)
  split = lambda s: None if s is None else [x.strip() for x in s.split(",") if x.strip()]
  try:
    root, split_dir = args.root, args.split_dir
    if args.data_dir:
      root, list_dir = default_roots(args.data_dir, args.dataset)
      split_dir = split_dir or list_dir
    ds = load_ce_dataset(
        root, args.dataset, experts=split(args.experts), text_embeddings=split(args.text),
        max_text_tokens=args.max_text_tokens,
        expert_paths=_pairs(args.expert_path, "--expert_path"),
        expert_max_tokens={k: int(v) for k, v in
                           _pairs(args.expert_max_tokens, "--expert_max_tokens").items()},
        text_paths=_pairs(args.text_path, "--text_path"), split_dir=split_dir,
        dtype=np.dtype(args.dtype))
    save_npz(ds, args.out)
  except (UserError, ValueError) as e:
    parser.error(str(e))
  sizes = ", ".join(f"{s} {ds.split(s).num_videos}" for s in SPLITS)
  print(f"wrote {args.out}: {sizes} videos; experts {ds.train.expert_names}; text "
        f"{ds.text_embeddings}")


if __name__ == "__main__":
  main()
