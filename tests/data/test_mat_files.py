"""MAT-file v5 structure check (vtd/data/mat_files.py): sound files load as scipy reads them,
damaged type codes and sizes are one UserError instead of scipy's segmentation fault."""

import io
import struct
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from vtd.data import mat_files
from vtd.errors import UserError


def _contents():
  records = np.zeros((1, 2), dtype=[("frame", object), ("bb", object)])
  records[0, 0]["frame"], records[0, 0]["bb"] = "car00000002", np.array([[2., 3, 8, 9]])
  records[0, 1]["frame"], records[0, 1]["bb"] = "car00000003", np.zeros((0, 4))
  cell = np.empty((2, 2), dtype=object)
  cell[0, 0], cell[0, 1] = np.array([[1., 2, 3, 4]]), "text"
  cell[1, 0], cell[1, 1] = np.array([True, False]), np.empty((0, 0), dtype=object)
  return {"bb_gtTest": records, "coor": cell, "ranges": np.arange(6.).reshape(3, 2),
          "ints": np.arange(5, dtype=np.int16), "z": np.array([1 + 2j]), "s": "ab"}


def _mat(compress):
  buf = io.BytesIO()
  scipy.io.savemat(buf, _contents(), do_compression=compress)
  return buf.getvalue()


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compressed"])
def test_sound_files_load_as_scipy_reads_them(tmp_path, compress):
  path = tmp_path / "a.mat"
  path.write_bytes(_mat(compress))
  got = mat_files.load_mat(str(path), "test file", "fix it")
  want = scipy.io.loadmat(str(path))
  assert sorted(k for k in got if not k.startswith("__")) == sorted(_contents())
  for key in ("ranges", "ints", "z", "s"):
    np.testing.assert_array_equal(got[key], want[key])
  assert got["bb_gtTest"][0, 0]["frame"][0] == "car00000002"
  np.testing.assert_array_equal(got["coor"][0, 0], [[1, 2, 3, 4]])


def _first_data_tag_of(data, values):
  """Offset of the tag of the first miDOUBLE element holding `values` (float64)."""
  return data.index(struct.pack("<II", 9, 8 * len(values)) +
                    np.asarray(values, "<f8").tobytes())


@pytest.mark.parametrize("mdtype", [0, 8, 11, 19, 272])
def test_bad_type_codes_are_user_errors(tmp_path, mdtype):
  data = bytearray(_mat(False))
  at = _first_data_tag_of(data, [0., 2., 4., 1., 3., 5.])  # `ranges`, column-major.
  data[at:at + 4] = struct.pack("<I", mdtype)
  path = tmp_path / "bad.mat"
  path.write_bytes(bytes(data))
  with pytest.raises(UserError, match=rf"cannot read test file .*bad\.mat: damaged or not in "
                                      rf"the expected format \(ValueError: array data at byte "
                                      rf"{at} has data type {mdtype}\); fix it"):
    mat_files.load_mat(str(path), "test file", "fix it")


def test_a_type_code_that_crashes_scipy_is_a_clean_error(tmp_path):
  """In a child process: scipy's reader dereferences the type table with this code (type 0 on
  a numeric struct field, from fuzzing), which killed the process with SIGSEGV."""
  data = bytearray(_mat(False))
  at = _first_data_tag_of(data, [2., 3., 8., 9.])  # A bb field of the struct array.
  data[at:at + 4] = bytes(4)
  path = tmp_path / "crash.mat"
  path.write_bytes(bytes(data))
  code = ("import sys; from vtd.data import mat_files\n"
          "try: mat_files.load_mat(sys.argv[1], 'f', 'r')\n"
          "except mat_files.UserError as e: print(e)")
  run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "has data type 0" in run.stdout


def test_sizes_and_versions(tmp_path):
  data = bytearray(_mat(False))
  at = _first_data_tag_of(data, [0., 2., 4., 1., 3., 5.])
  data[at + 4:at + 8] = struct.pack("<I", 40)  # 40 bytes for six doubles.
  with pytest.raises(ValueError, match="40 bytes for 6 type-9 values"):
    mat_files.check_mat5(bytes(data))
  data[at + 4:at + 8] = struct.pack("<I", 4800)  # Beyond the file.
  with pytest.raises(ValueError, match="runs past its container"):
    mat_files.check_mat5(bytes(data))
  v73 = bytearray(_mat(False))
  v73[124:126] = struct.pack("<H", 0x0200)
  path = tmp_path / "v73.mat"
  path.write_bytes(bytes(v73))
  with pytest.raises(UserError, match=r"v73\.mat: a MATLAB v7\.3 \(HDF5\) MAT-file.*'-v7'"):
    mat_files.load_mat(str(path), "annotation file", "fix it")
  with pytest.raises(ValueError, match="no MAT-file v5 header"):
    mat_files.check_mat5(b"\x00" * 200)  # scipy would read this as a v4 file.
