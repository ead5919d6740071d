"""MATLAB v5 MAT-files (the YouTube-Objects annotations), structure-checked before scipy reads.

`scipy.io.loadmat` is not hardened against damaged files (its docstring says so since 2026):
its v5 reader indexes a C table with a data element's type code straight from the file, so a
few zeroed or flipped bytes crash the whole process with a segmentation fault (measured: 8 of
~2,400 damaged copies of a 576-byte bb_gt file; scipy PR #25349 names the cause). `load_mat`
therefore walks the element tree first (MATLAB's "MAT-File Format" document, v5 / v7):

  128-byte header (text, subsystem offset, version 0x0100, endian "IM" / "MI"), then
  top-level elements, each an 8-byte tag (type, byte count) + data padded to 8 bytes:
    miCOMPRESSED (15): a zlib stream holding one miMATRIX element;
    miMATRIX (14): array flags (miUINT32 x 2: class, nzmax), dimensions (miINT32), name
      (miINT8), then by class: cell - one miMATRIX per element; struct - field name length
      (miINT32), names (miINT8), one miMATRIX per element and field; char and numeric - the
      real (and, if complex, imaginary) data, prod(dims) values of one data type.
  A tag whose upper 16 bits are set is a "small element": byte count (<= 4) in the upper
  half, data in the tag's second word.

Every type code, byte count and dimension is checked against its container; only the classes
the annotations use are accepted (cell, struct, char, numeric and logical). Then scipy parses
the (same, in-memory) bytes. v4 and v7.3 (HDF5) files are refused with a line saying how to
re-save them.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from typing import Any

import scipy.io

from vtd.data import file_errors
from vtd.errors import UserError

_HEADER_BYTES = 128
MI_MATRIX, MI_COMPRESSED = 14, 15
# Data types: code -> bytes per value (miINT8 .. miUTF32; 8, 10, 11 are reserved).
_DATA_TYPES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
MI_INT32, MI_UINT32, MI_INT8, MI_UTF8 = 5, 6, 1, 16
CELL, STRUCT, CHAR = 1, 2, 4
_NUMERIC = range(6, 16)  # mxDOUBLE_CLASS .. mxUINT64_CLASS.
_COMPLEX_FLAG = 0x0800
MAX_DECOMPRESSED_BYTES = 1 << 28  # 256 MiB: annotation files hold kilobytes; bounds zlib bombs.


class _Stream:
  """Cursor over one element sequence (a file's top level or a matrix's contents)."""

  def __init__(self, data: bytes, start: int, end: int, endian: str):
    self.data, self.pos, self.end, self.endian = data, start, end, endian

  def tag(self, padded: bool = True) -> tuple[int, int, int]:
    """(type, byte count, data offset) of the next element; moves past it and (if `padded`,
    as inside a matrix) its padding to 8 bytes: the cursor scipy's reader keeps."""
    if self.pos + 8 > self.end:
      raise ValueError(f"element tag at byte {self.pos} runs past its container")
    mdtype, nbytes = struct.unpack_from(self.endian + "II", self.data, self.pos)
    if mdtype >> 16:  # Small data element: count in the upper half, data in the second word.
      mdtype, nbytes = mdtype & 0xFFFF, mdtype >> 16
      if nbytes > 4:
        raise ValueError(f"small element at byte {self.pos} claims {nbytes} bytes (at most 4)")
      offset, self.pos = self.pos + 4, self.pos + 8
      return mdtype, nbytes, offset
    offset = self.pos + 8
    after = offset + nbytes + (-nbytes % 8 if padded else 0)
    if after > self.end:
      raise ValueError(f"element at byte {self.pos} of {nbytes} bytes runs past its container")
    self.pos = after
    return mdtype, nbytes, offset

  def data_element(self, what: str, types: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    mdtype, nbytes, offset = self.tag()
    if mdtype not in (types or _DATA_TYPES):
      raise ValueError(f"{what} at byte {offset - 8} has data type {mdtype}")
    if nbytes % _DATA_TYPES[mdtype]:
      raise ValueError(f"{what} at byte {offset - 8}: {nbytes} bytes is no whole number of "
                       f"type-{mdtype} values")
    return mdtype, nbytes, offset


def _check_matrix(data: bytes, start: int, end: int, endian: str, depth: int = 0) -> None:
  """Checks one miMATRIX element's contents, data[start:end] (module docstring)."""
  if depth > 32:
    raise ValueError("arrays nested more than 32 levels deep")
  if start == end:
    return  # An empty matrix (e.g. an empty cell element).
  s = _Stream(data, start, end, endian)
  _, nbytes, offset = s.data_element("array flags", (MI_UINT32,))
  if nbytes != 8:
    raise ValueError(f"array flags at byte {offset - 8} are {nbytes} bytes, not 8")
  flags = struct.unpack_from(endian + "I", data, offset)[0]
  mx_class = flags & 0xFF
  mdtype, nbytes, offset = s.data_element("dimensions", (MI_INT32, MI_UINT32))
  dims = struct.unpack_from(f"{endian}{nbytes // 4}i", data, offset)
  if len(dims) < 2 or min(dims) < 0:
    raise ValueError(f"dimensions {dims} at byte {offset - 8}")
  count = math.prod(dims)
  if count > len(data):  # Every value takes at least one byte (or one tag for cells, structs).
    raise ValueError(f"dimensions {dims} at byte {offset - 8} exceed the file")
  s.data_element("array name", (MI_INT8, MI_UTF8))
  if mx_class == CELL:
    children = count
  elif mx_class == STRUCT:
    _, nbytes, offset = s.data_element("field name length", (MI_INT32,))
    length = struct.unpack_from(endian + "i", data, offset)[0] if nbytes == 4 else 0
    _, nbytes, offset = s.data_element("field names", (MI_INT8, MI_UTF8))
    if length <= 0 or nbytes % length:
      raise ValueError(f"struct field names at byte {offset - 8}: {nbytes} bytes for names of "
                       f"{length}")
    children = count * (nbytes // length)
  elif mx_class == CHAR or mx_class in _NUMERIC:
    parts = 2 if flags & _COMPLEX_FLAG else 1
    for part in range(parts):
      mdtype, nbytes, offset = s.data_element("array data")
      if mx_class in _NUMERIC and mdtype not in (MI_UTF8, 17, 18) and \
          nbytes != count * _DATA_TYPES[mdtype]:
        raise ValueError(f"array data at byte {offset - 8}: {nbytes} bytes for {count} "
                         f"type-{mdtype} values")
    _check_consumed(s, start)
    return
  else:
    raise ValueError(f"array class {mx_class} (only cell, struct, char and numeric arrays are "
                     f"read)")
  for _ in range(children):
    mdtype, nbytes, offset = s.tag()
    if mdtype != MI_MATRIX:
      raise ValueError(f"element at byte {offset - 8} has type {mdtype}, expected a matrix")
    _check_matrix(data, offset, offset + nbytes, endian, depth + 1)
  _check_consumed(s, start)


def _check_consumed(s: _Stream, start: int) -> None:
  # scipy reads a matrix's parts one after another and does not seek to its declared end, so
  # a byte count that disagrees with the parts would desynchronise its cursor from this walk.
  if s.pos != s.end:
    raise ValueError(f"matrix at byte {start - 8} declares {s.end - start} bytes but its parts "
                     f"take {s.pos - start}")


def check_mat5(data: bytes) -> None:
  """Raises ValueError (or UserError for v4 / v7.3 files) unless `data` is a sound v5 file."""
  if len(data) < _HEADER_BYTES or 0 in data[:4]:
    raise ValueError("no MAT-file v5 header (a v4 file, or not a MAT-file)")
  endian = {b"IM": "<", b"MI": ">"}.get(data[126:128])
  if endian is None:
    raise ValueError(f"endian indicator {data[126:128]!r}, expected 'IM' or 'MI'")
  version = struct.unpack_from(endian + "H", data, 124)[0]
  if version == 0x0200:
    raise UserError("a MATLAB v7.3 (HDF5) MAT-file, which is not read; re-save it in MATLAB "
                    "with save(..., '-v7')")
  if version != 0x0100:
    raise ValueError(f"MAT-file version {version:#06x}, expected 0x0100")
  top = _Stream(data, _HEADER_BYTES, len(data), endian)
  while top.pos < len(data):
    mdtype, nbytes, offset = top.tag(padded=False)  # scipy seeks to the declared end.
    if mdtype == MI_COMPRESSED:
      inflater = zlib.decompressobj()
      inner = inflater.decompress(data[offset:offset + nbytes], MAX_DECOMPRESSED_BYTES)
      if inflater.unconsumed_tail:
        raise ValueError(f"compressed element at byte {offset - 8} inflates beyond "
                         f"{MAX_DECOMPRESSED_BYTES >> 20} MiB")
      s = _Stream(inner, 0, len(inner), endian)
      mdtype, nbytes, inner_offset = s.tag(padded=False)
      if mdtype != MI_MATRIX:
        raise ValueError(f"compressed element at byte {offset - 8} holds type {mdtype}")
      _check_matrix(inner, inner_offset, inner_offset + nbytes, endian)
    elif mdtype == MI_MATRIX:
      _check_matrix(data, offset, offset + nbytes, endian)
    else:
      raise ValueError(f"top-level element at byte {offset - 8} has type {mdtype}, expected a "
                       f"matrix")


def load_mat(path: str, what: str, remedy: str) -> dict[str, Any]:
  """`scipy.io.loadmat` of a checked v5 file (module docstring); UserError naming `path`."""
  with file_errors.reading(path, what, remedy):
    with open(path, "rb") as f:
      data = f.read()
    try:
      check_mat5(data)
    except UserError as e:
      raise UserError(f"cannot read {what} {path}: {e}") from None
    return scipy.io.loadmat(io.BytesIO(data))
