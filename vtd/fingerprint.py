"""Fingerprints of input data, for stage provenance (vtd/stages.py).

A file is fingerprinted by its size and modification time, plus a content hash when it is
small (<= `HASH_LIMIT`), so editing a small annotation file in place is noticed even when its
size does not change; big feature files would cost a full read, and size + mtime is what
`make` and rsync trust as well. A directory is the fingerprint of every file under it (names,
sizes, mtimes; content hashes of small files until `HASH_BUDGET` bytes were hashed), folded
into one digest so that stage.json stays small.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

from etils import epath

HASH_LIMIT = 1 << 20  # Files up to 1 MiB are content-hashed.
HASH_BUDGET = 64 << 20  # At most this many bytes hashed per fingerprinted directory.


def _file_entry(path: epath.Path, hash_budget: list[int]) -> str:
  stat = path.stat()
  entry = f"{stat.length}:{int(stat.mtime)}"
  if stat.length <= HASH_LIMIT and hash_budget[0] >= stat.length:
    hash_budget[0] -= stat.length
    entry += ":" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
  return entry


def path_fingerprint(path: Any) -> dict[str, Any]:
  """{'path', 'kind': file|dir|missing, 'files', 'bytes', 'digest'} of a file or folder."""
  root = epath.Path(os.path.expanduser(str(path)) if "://" not in str(path) else str(path))
  if not root.exists():
    return {"path": str(path), "kind": "missing"}
  budget = [HASH_BUDGET]
  if not root.is_dir():
    entry = _file_entry(root, budget)
    return {"path": str(path), "kind": "file", "files": 1,
            "bytes": int(entry.split(":")[0]), "digest": entry}
  relpaths = sorted(os.path.relpath(str(epath.Path(d) / n), str(root))
                    for d, _, names in root.walk() for n in names)
  digest = hashlib.sha256()
  size = 0
  for rel in relpaths:
    entry = _file_entry(root / rel, budget)
    digest.update(f"{rel}={entry}\n".encode())
    size += int(entry.split(":")[0])
  files = len(relpaths)
  return {"path": str(path), "kind": "dir", "files": files, "bytes": size,
          "digest": digest.hexdigest()[:20]}


def paths_fingerprint(paths: Iterable[Any]) -> list[dict[str, Any]]:
  """Fingerprints of the non-empty `paths`, in order."""
  return [path_fingerprint(p) for p in paths if p]
