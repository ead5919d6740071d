"""Tests for vtd.uts.data.fivr: the annotation.json / youtube_ids.txt readers and writers."""

import json
import os

import pytest

from vtd.uts.data import fivr
from vtd.errors import UserError

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "shared", "data",
                    "fivr200k")


def _sums(annotation, dataset=None):
  return {t: sum(map(len, fivr.task_positives(annotation, t, dataset).values()))
          for t in fivr.TASKS}


def test_real_annotation_statistics():
  path = os.path.join(REAL, "annotation.json")
  if not os.path.exists(path):
    pytest.skip(f"{path} is absent (a clean clone has no shared data)")
  ann = fivr.load_annotation(path)
  assert len(ann) == 100
  want = {"DSVR": 7456, "CSVR": 8840, "ISVR": 12363}  # reference §B.1
  assert _sums(ann) == want
  ids_path = os.path.join(REAL, "youtube_ids.txt")
  if os.path.exists(ids_path):
    ids = fivr.load_dataset_ids(ids_path)
    assert len(ids) == 225960 and set(ann) <= set(ids)
    assert _sums(ann, ids) == want


def test_roundtrip_and_task_unions(tmp_path):
  ann = {"q1": {"ND": ["a"], "DS": ["b", "c"], "CS": ["c", "d"], "IS": ["e"], "DA": ["f"]},
         "q2": {"IS": ["a"]}}
  path = str(tmp_path / "annotation.json")
  fivr.save_annotation(ann, path)
  assert fivr.load_annotation(path) == ann
  assert json.load(open(path, encoding="utf-8")) == ann
  assert fivr.task_positives(ann, "CSVR") == {"q1": {"a", "b", "c", "d"}, "q2": set()}
  assert _sums(ann) == {"DSVR": 3, "CSVR": 4, "ISVR": 6}
  assert fivr.task_positives(ann, "ISVR", ["a", "e"]) == {"q1": {"a", "e"}, "q2": {"a"}}
  ids_path = str(tmp_path / "ids.txt")
  fivr.save_dataset_ids(["q1", "a", "b"], ids_path)
  assert fivr.load_dataset_ids(ids_path) == ["q1", "a", "b"]


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ("[]", "JSON object"),
    ("{}", "no queries"),
    ('{"q": ["a"]}', "query 'q'"),
    ('{"q": {"XX": ["a"]}}', "unknown label 'XX'"),
    ('{"q": {"ND": "a"}}', "list of non-empty id strings"),
    ('{"q": {"ND": [1]}}', "list of non-empty id strings"),
])
def test_bad_annotation_names_the_file(tmp_path, content, match):
  path = tmp_path / "annotation.json"
  path.write_text(content)
  with pytest.raises(UserError, match=match) as e:
    fivr.load_annotation(str(path))
  assert str(path) in str(e.value)


def test_bad_dataset_ids(tmp_path):
  path = tmp_path / "ids.txt"
  path.write_text("a\n\nb c\n")
  with pytest.raises(UserError, match=r"ids.txt:3: expected one video id"):
    fivr.load_dataset_ids(str(path))
  path.write_text("a\nb\na\n")
  with pytest.raises(UserError, match=r"ids.txt:3: duplicate"):
    fivr.load_dataset_ids(str(path))
  path.write_text("a\n\n b \n")
  assert fivr.load_dataset_ids(str(path)) == ["a", "b"]
  with pytest.raises(UserError, match="not found"):
    fivr.load_dataset_ids(str(tmp_path / "missing.txt"))
  with pytest.raises(UserError, match="task"):
    fivr.task_positives({"q": {}}, "XSVR")


def test_unreadable_files_are_one_line_user_errors(tmp_path):
  deep = tmp_path / "annotation.json"
  deep.write_text("[" * 100_000)  # json's decoder recurses per level.
  with pytest.raises(UserError, match=r"annotation\.json: damaged .*\(RecursionError: "):
    fivr.load_annotation(str(deep))
  with pytest.raises(UserError, match=r"cannot read FIVR annotation file .* \(Is a directory\)"):
    fivr.load_annotation(str(tmp_path))
  with pytest.raises(UserError, match=r"cannot read FIVR dataset id file .* \(Is a directory\)"):
    fivr.load_dataset_ids(str(tmp_path))
  binary = tmp_path / "ids.txt"
  binary.write_bytes(b"abc\x00def\n")
  with pytest.raises(UserError, match=r"ids\.txt:1: a NUL byte in a video id"):
    fivr.load_dataset_ids(str(binary))
