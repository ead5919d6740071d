"""FIVR-200K files: `annotation.json` and `youtube_ids.txt` (reference §B.1).

annotation.json: {query id: {label: [video ids]}}, labels ND (near-duplicate), DS (duplicate
scene), CS (complementary scene), IS (incident scene), DA (duplicate audio, not used by the
visual tasks). A video may carry several labels; the tasks take unions (`TASKS`).
youtube_ids.txt: one video id per line (225,960 ids, the 100 queries included).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

from vtd import artifacts
from vtd.data import file_errors
from vtd.data import id_lists
from vtd.errors import UserError

LABELS = ("ND", "DS", "CS", "IS", "DA")
TASKS = {"DSVR": ("ND", "DS"), "CSVR": ("ND", "DS", "CS"), "ISVR": ("ND", "DS", "CS", "IS")}

Annotation = dict[str, dict[str, list[str]]]


def validate_annotation(annotation: Any, source: str = "annotation") -> Annotation:
  """Checks the annotation structure; returns it. Errors name `source` and the entry."""
  if not isinstance(annotation, Mapping):
    raise UserError(f"{source}: expected a JSON object {{query id: {{label: [ids]}}}}, got "
                    f"{type(annotation).__name__}")
  if not annotation:
    raise UserError(f"{source}: no queries")
  for query, labels in annotation.items():
    if not isinstance(query, str) or not query:
      raise UserError(f"{source}: query ids must be non-empty strings, got {query!r:.80}")
    if not isinstance(labels, Mapping):
      raise UserError(f"{source}: query {query!r}: expected an object {{label: [ids]}}, got "
                      f"{type(labels).__name__}")
    for label, ids in labels.items():
      if label not in LABELS:
        raise UserError(f"{source}: query {query!r}: unknown label {label[:40]!r} (expected "
                        f"one of {', '.join(LABELS)})")
      if not isinstance(ids, list) or not all(isinstance(v, str) and v for v in ids):
        raise UserError(f"{source}: query {query!r}, label {label}: expected a list of "
                        f"non-empty id strings")
  return {q: {lab: list(ids) for lab, ids in labels.items()} for q, labels in annotation.items()}


def load_annotation(path: str) -> Annotation:
  """Reads and validates FIVR's annotation.json."""
  if not os.path.exists(path):
    raise UserError(f"{path}: FIVR annotation file not found; check the path")
  expected = "expected FIVR-200K's annotation.json, {query id: {label: [video ids]}}"
  with file_errors.reading(path, "FIVR annotation file", expected):  # RecursionError, OSError.
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise UserError(f"{path}: not valid JSON ({file_errors.describe(e)}); {expected}") from e
  return validate_annotation(data, path)


def save_annotation(annotation: Mapping[str, Mapping[str, list[str]]], path: str) -> None:
  """Writes an annotation (e.g. synthetic) in annotation.json's format, atomically."""
  # Query order is kept: it is the order of FIVR's own file.
  artifacts.write_json_atomic(path, validate_annotation(annotation, path), sort_keys=False)


def load_dataset_ids(path: str) -> list[str]:
  """Reads youtube_ids.txt: one id per line (blank lines ignored), in file order."""
  return id_lists.read_id_list(path, "FIVR dataset id file")


def save_dataset_ids(ids: Iterable[str], path: str) -> None:
  """Writes ids one per line (youtube_ids.txt's format), atomically."""
  ids = list(ids)
  for vid in ids:
    if not isinstance(vid, str) or len(vid.split()) != 1 or vid != vid.strip():
      raise UserError(f"{path}: invalid video id {vid!r}")
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("".join(v + "\n" for v in ids))
  os.replace(tmp, path)


def task_positives(annotation: Mapping[str, Mapping[str, list[str]]], task: str,
                   dataset_ids: Iterable[str] | None = None) -> dict[str, set[str]]:
  """query id -> the union of the task's label lists (intersected with dataset_ids if given)."""
  if task not in TASKS:
    raise UserError(f"FIVR task {task!r}: expected one of {', '.join(TASKS)}")
  dataset = None if dataset_ids is None else set(dataset_ids)
  out = {}
  for query, labels in annotation.items():
    positives = set().union(*(labels.get(label, ()) for label in TASKS[task]))
    out[query] = positives if dataset is None else positives & dataset
  return out
