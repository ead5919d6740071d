"""One `UserError` for a corrupt input file, and a strict reader for .npz archives.

Parsers fail on damaged bytes in many ways: zipfile raises BadZipFile (bad CRC-32, no central
directory), numpy ValueError ("cannot parse header", allow_pickle advice for bytes that are no
archive at all), the C unpickler OverflowError (a FRAME length beyond 2**63), MemoryError (a
length field of exabytes), IndexError / SystemError from numpy's `__setstate__`, json
RecursionError (deep nesting), and so on. `reading` turns all of them into one line naming the
file, so a user never sees a parser's traceback for a bad file, and `read_npz` reads every
member of an .npz checking its size and CRC (np.load checks the CRC only when a member is read
to its end, which a damaged header that declares a smaller shape never does).
"""

from __future__ import annotations

import contextlib
import errno
import pickle
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np

from vtd.errors import UserError

# What parsers raise on damaged bytes (each seen in the fuzz tests of tests/data/test_fuzz_*.py
# or documented by the parser). UserError (a ValueError) is re-raised unchanged by `reading`.
CORRUPT_FILE_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError,
                       LookupError, AttributeError, OverflowError, MemoryError, SystemError,
                       RecursionError, NotImplementedError, SyntaxError, zipfile.BadZipFile,
                       zlib.error, struct.error, pickle.UnpicklingError,
                       tokenize.TokenError)  # numpy parses .npy headers with tokenize.

_ACCESS_ERRNOS = (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOENT, errno.ENOTDIR)
_NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # A zip's first member / an empty zip.
_CHUNK_BYTES = 1 << 24  # Read .npz members 16 MiB at a time (no second copy of a member).


def describe(error: BaseException) -> str:
  """`Type: message` on one line, at most ~200 characters."""
  if isinstance(error, MemoryError):
    return "MemoryError: a size recorded in the file exceeds the free memory"
  text = " ".join(str(error).split())
  text = text if len(text) <= 200 else text[:197] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextlib.contextmanager
def reading(path: str, what: str, remedy: str) -> Iterator[None]:
  """Inside the block, a parser's error on `path` becomes one UserError.

  Args:
    path: the file being read (named in the message).
    what: what it is, e.g. "retrieval data file".
    remedy: what the user should do, e.g. "re-create it with python -m vtd.teachtext.data.ce_features".

  Raises:
    UserError: "cannot read <what> <path>: damaged or not in the expected format (<error>);
      <remedy>", or "cannot read <what> <path> (<reason>); check ..." when the operating
      system refused access.
  """
  try:
    yield
  except UserError:
    raise
  except CORRUPT_FILE_ERRORS as e:
    if isinstance(e, OSError) and e.errno in _ACCESS_ERRNOS:
      raise UserError(f"cannot read {what} {path} ({e.strerror}); check that the path is a "
                      f"readable file") from e
    raise UserError(f"cannot read {what} {path}: damaged or not in the expected format "
                    f"({describe(e)}); {remedy}") from e


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
  """One .npy member: header checked against the member size, data read into place."""
  with archive.open(info) as member:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
      raise ValueError(f"member {info.filename}: unsupported .npy version {version}")
    if dtype.hasobject:
      raise ValueError(f"member {info.filename} holds pickled Python objects, which vtd never "
                       f"loads")
    count = 1
    for n in shape:
      count *= int(n)
    nbytes = count * dtype.itemsize
    left = info.file_size - member.tell()
    if nbytes != left:
      raise ValueError(f"member {info.filename}: its header declares {shape} {dtype} "
                       f"({nbytes} bytes) but {left} bytes follow")
    raw = np.empty(nbytes, np.uint8)
    view, done = memoryview(raw), 0
    while done < nbytes:
      got = member.readinto(view[done:done + _CHUNK_BYTES])
      if not got:
        raise EOFError(f"member {info.filename} ends after {done} of {nbytes} bytes")
      done += got
    member.read()  # At the member's end: zipfile compares the CRC-32 now.
  if dtype.itemsize == 0:
    return np.empty(shape, dtype)
  return raw.view(dtype).reshape(shape, order="F" if fortran else "C")


def read_npz(path: str, what: str, remedy: str) -> dict[str, np.ndarray]:
  """Every array of an .npz (np.savez's format), never unpickling; UserError on any damage.

  Args:
    path: an existing file.
    what, remedy: as for `reading`.

  Returns:
    {key: array}: the keys np.savez was given (member names without ".npy").
  """
  with reading(path, what, remedy):
    with open(path, "rb") as f:
      magic = f.read(4)
    if magic not in _NPZ_MAGIC:
      raise UserError(f"cannot read {what} {path}: not an .npz archive (it starts with "
                      f"{magic!r}, not a zip header); {remedy}")
    arrays = {}
    with zipfile.ZipFile(path) as archive:
      for info in archive.infolist():
        if not info.filename.endswith(".npy"):
          raise ValueError(f"member {info.filename!r} is not an .npy array")
        arrays[info.filename[:-len(".npy")]] = _read_member(archive, info)
  return arrays
