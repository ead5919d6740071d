"""The official CE / TeachText feature files: readers that need none of the official code.

Formats (reference §5):
* `.pkl` / `.pickle`: dicts of numpy arrays, or the old `ExpertStore` object pickled under the
  module `datastructures` (also `zsvision.zs_data_structures`, `utils.datastructures`), read
  with encoding="latin1" as zsvision's `memcache` does. A restricted unpickler admits only numpy
  arrays, dtypes and scalars, builtin containers and `ExpertStore` (mapped to the local class
  below), so neither zsvision is needed nor arbitrary code run.
* `.npy`: a pickled dict in a 0-d object array (zsvision's `np_loader` convention), through the
  same restricted unpickler; a plain numeric .npy is returned as the array.
* `.hickle` (QuerYD / VaTeX audio): not supported (an error says how to convert it).
* Split lists: plain text, one id per line.
* Teacher pickles (§5.4): {vid: {'vid_embds': {expert: [D]}, 'text_embds': {expert: [n, D]}}}.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import pickle
import pickletools
import struct
from typing import Any, Mapping, Sequence

import numpy as np

from vtd.data import file_errors
from vtd.data import id_lists
from vtd.errors import UserError


class ExpertStore:
  """Local stand-in for the old `ExpertStore` pickles (restored by unpickling, never built).

  Attributes, as pickled: keys [N] ids, dim D, store [N, D] (float16), keymap id -> row,
  missing: ids without features (may be empty; missing rows are then NaN).
  """

  def to_dict(self) -> dict[str, Any]:
    """{vid: [D] row (a view), or float NaN where listed as missing}."""
    keymap = getattr(self, "keymap", None) or {k: i for i, k in enumerate(self.keys)}
    missing = set(getattr(self, "missing", None) or ())
    return {k: (math.nan if k in missing else self.store[i]) for k, i in keymap.items()}


_STORE_MODULES = ("datastructures", "zsvision.zs_data_structures", "utils.datastructures")
_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                  "numpy.core.numeric", "numpy._core.numeric")
_NUMPY_NAMES = ("_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer")
_SAFE = {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "object",
                                   "float", "int", "complex", "bytes", "bytearray", "str")}
_SAFE |= {("collections", "OrderedDict"), ("collections", "defaultdict"),
          ("copyreg", "_reconstructor"), ("_codecs", "encode")}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # Protocol-2 (py2) names.


_REMEDY = ("copy or download the file again (the release's tar archives), or point the config "
           "at an intact copy")


class _FeatureUnpickler(pickle.Unpickler):
  """Admits numpy arrays, builtin containers and ExpertStore; anything else is refused."""

  def find_class(self, module: str, name: str) -> Any:
    module = _PY2_MODULES.get(module, module)
    if name == "ExpertStore" and module in _STORE_MODULES:
      return ExpertStore
    if (module in _NUMPY_MODULES and name in _NUMPY_NAMES) or (module, name) in _SAFE:
      return super().find_class(module, name)
    if module == "numpy":  # Scalar types, e.g. ExpertStore.store_dtype = numpy.float16.
      obj = getattr(np, name, None)
      if isinstance(obj, type) and issubclass(obj, np.generic):
        return obj
    raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (not a feature "
                                 f"file object)")


# Per opcode byte: (name, argument). Argument: None; a fixed byte count (>= 0); -1 / -2: one /
# two newline-terminated lines (protocol 0); or a length prefix (prefix bytes, struct format).
_LENGTH_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: (1, "<B"),
                  pickletools.TAKEN_FROM_ARGUMENT4: (4, "<i"),
                  pickletools.TAKEN_FROM_ARGUMENT4U: (4, "<I"),
                  pickletools.TAKEN_FROM_ARGUMENT8U: (8, "<Q")}
_OPCODES = {
    op.code.encode("latin-1")[0]: (
        op.name, None if op.arg is None else
        _LENGTH_PREFIX.get(op.arg.n, -2 if op.arg is pickletools.stringnl_noescape_pair
                           else -1 if op.arg.n == pickletools.UP_TO_NEWLINE else op.arg.n))
    for op in pickletools.opcodes}


def _check_pickle_stream(buf: Any, pos: int) -> None:
  """Walks the opcodes of the pickle at `buf[pos:]` (bytes or mmap) without building objects,
  so that damaged bytes fail here, cheaply, and not inside the C unpickler, which trusts the
  sizes it reads: a LONG_BINPUT index of 1.5e9 makes it zero-fill a 24 GB memo (measured: a
  400-byte file killed by the OOM killer at 21 GB), a bytes8 length of 2**62 makes it allocate
  first. A valid pickle has every payload inside the file and every memo index below the file
  size (each memo entry costs at least one opcode byte).

  Raises:
    pickle.UnpicklingError or EOFError: the first inconsistent opcode.
  """
  end = len(buf)
  while pos < end:
    name, arg = _OPCODES.get(buf[pos], (None, None))
    if name is None:
      raise pickle.UnpicklingError(f"invalid opcode {buf[pos]:#04x} at byte {pos}")
    pos += 1
    if name == "STOP":
      return
    if arg is None:
      continue
    if isinstance(arg, tuple):  # A length prefix, then that many bytes.
      width, fmt = arg
      if pos + width > end:
        break
      length = struct.unpack_from(fmt, buf, pos)[0]
      pos += width
      if not 0 <= length <= end - pos:
        raise pickle.UnpicklingError(f"{name} of {length} bytes at byte {pos} exceeds the "
                                     f"file's {end} bytes")
      pos += length
    elif arg >= 0:
      if pos + arg > end:
        break
      if name in ("LONG_BINPUT", "FRAME"):
        value = struct.unpack_from("<I" if name == "LONG_BINPUT" else "<Q", buf, pos)[0]
        if value > end:
          raise pickle.UnpicklingError(f"{name} {value} at byte {pos} exceeds the file's {end} "
                                       f"bytes")
      pos += arg
    else:  # Protocol-0 text arguments: one line (two for GLOBAL / INST).
      for _ in range(-arg):
        newline = buf.find(b"\n", pos)
        if newline < 0:
          raise EOFError(f"pickle data was truncated inside {name}")
        if name == "PUT" and int(buf[pos:newline]) > end:
          raise pickle.UnpicklingError(f"PUT index at byte {pos} exceeds the file's {end} bytes")
        pos = newline + 1
  raise EOFError("pickle data was truncated (no STOP opcode)")


def _unpickle(f: Any) -> Any:
  """The restricted unpickler at `f`'s position, after `_check_pickle_stream` accepted it."""
  start = f.tell()
  if start == os.fstat(f.fileno()).st_size:
    raise EOFError("no pickle data")
  with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:  # Shares the page cache.
    _check_pickle_stream(buf, start)
  return _FeatureUnpickler(f, encoding="latin1").load()


def load_feature_file(path: str) -> Any:
  """Reads a .pkl/.pickle/.npy feature file (module docstring: formats); UserError on failure."""
  if not os.path.isfile(path):
    raise UserError(f"feature file not found: {path}; check the path (or the config's data "
                    f"root)")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".hkl", ".hickle"):
    raise UserError(f"{path}: hickle files are not supported; convert it to a pickle "
                    f"(hickle.load, then pickle.dump) and point the path at that")
  if ext not in (".pkl", ".pickle", ".npy"):
    raise UserError(f"{path}: unsupported feature file extension {ext!r} (.pkl, .pickle, .npy)")
  with file_errors.reading(path, "feature file", _REMEDY):
    with open(path, "rb") as f:
      if ext != ".npy":
        data = _unpickle(f)
      else:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        _, _, dtype = read_header(f)
        if not dtype.hasobject:
          f.seek(0)
          return np.load(f, allow_pickle=False)
        # Object arrays are a pickle after the header; keep them behind the same allowlist.
        data = _unpickle(f)
        if isinstance(data, np.ndarray) and data.size == 1:
          data = data.reshape(()).item()  # zsvision's 0-d dict convention.
    if isinstance(data, ExpertStore):
      data = data.to_dict()  # Inside: a damaged store lacks or mangles its attributes.
  return data


def read_split_list(path: str, *, strip_suffix: bool = False) -> list[str]:
  """Ids of a split list, in file order (`id_lists.read_id_list`); `strip_suffix` cuts each id
  at its first "." (DiDeMo's "<id>.mp4", reference §5.5, as the official loader)."""
  return id_lists.read_id_list(path, "split list", strip_suffix=strip_suffix)


def as_mapping(data: Any, source: str) -> Mapping[str, Any]:
  """`data` if it is a dict-like {video id: ...}; else a UserError naming `source`."""
  if not isinstance(data, Mapping):
    raise UserError(f"{source}: expected a dict {{video id: features}}, got "
                    f"{type(data).__name__}")
  return data


@dataclasses.dataclass
class TeacherEmbeddings:
  """Precomputed embeddings of one official teacher, aligned with a split.

  Attributes:
    video: expert -> [N_v, D] video embeddings.
    text: expert -> [N_v, K, D] caption embeddings (zero beyond each video's captions).
  """
  video: dict[str, np.ndarray]
  text: dict[str, np.ndarray]


def load_teacher_embeddings(path: str, video_ids: Sequence[str], caption_counts: Sequence[int],
                            *, dtype: Any = np.float32) -> TeacherEmbeddings:
  """Reads a teacher pickle (reference §5.4) for the videos of a split, in split order.

  Args:
    path: teachers/<name>.pkl, {vid: {'vid_embds': {e: [D]}, 'text_embds': {e: [n, D]}}}.
    video_ids: [N_v] the split's ids (teacher files cover the training videos).
    caption_counts: [N_v] caption slots per video (its captions in the text file; for a split
      of `load_ce_dataset`, caption_mask.sum(1) unless a caption had no tokens); row k of a
      teacher's text embeddings is caption k, as the official loader indexes them. Fused: 1.
  """
  mapping = as_mapping(load_feature_file(path), path)
  if len(caption_counts) != len(video_ids):
    raise UserError(f"caption_counts has {len(caption_counts)} entries for {len(video_ids)} "
                    f"videos")
  if not video_ids:
    raise UserError(f"{path}: no videos asked for")
  absent = [v for v in video_ids if v not in mapping]
  if absent:
    raise UserError(f"{path}: {len(absent)} of {len(video_ids)} videos missing, e.g. "
                    f"{absent[:5]}")
  bad = [v for v in video_ids if not isinstance(mapping[v], Mapping)
         or not {"vid_embds", "text_embds"} <= set(mapping[v])]
  if bad:
    raise UserError(f"{path}: expected {{vid: {{'vid_embds': ..., 'text_embds': ...}}}}, not so "
                    f"for {bad[:5]}")
  first = mapping[video_ids[0]]
  experts = sorted(first["vid_embds"])
  k = max(int(c) for c in caption_counts)
  video, text = {}, {}
  for e in experts:
    dim = np.asarray(first["vid_embds"][e]).reshape(-1).shape[0]
    video[e] = np.zeros((len(video_ids), dim), dtype)
    text[e] = np.zeros((len(video_ids), k, dim), dtype)
  for i, (vid, count) in enumerate(zip(video_ids, caption_counts)):
    entry = mapping[vid]
    for e in experts:
      if e not in entry["vid_embds"] or e not in entry["text_embds"]:
        raise UserError(f"{path}: video {vid!r} has no embedding for expert {e!r}")
      vec, rows = np.asarray(entry["vid_embds"][e]), np.asarray(entry["text_embds"][e])
      dim = video[e].shape[1]
      if vec.size != dim or rows.size % dim:
        raise UserError(f"{path}: video {vid!r}, expert {e!r}: embeddings of shapes "
                        f"{vec.shape} / {rows.shape}, expected [{dim}] / [n, {dim}]")
      video[e][i] = vec.reshape(-1)
      rows = rows.reshape(-1, dim)
      if rows.shape[0] < count:
        raise UserError(f"{path}: video {vid!r}, expert {e!r}: {rows.shape[0]} caption "
                        f"embeddings for {count} captions")
      text[e][i, :count] = rows[:count]
  return TeacherEmbeddings(video=video, text=text)
