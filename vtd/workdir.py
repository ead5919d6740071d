"""The workdir as a whole: checked before any work, locked while a run uses it, kept clean.

`open_workdir` runs once per run, before the first stage:
  * the workdir is created (or found) and proved writable, so a bad path fails in one line;
  * process 0 takes the workdir lock (`vtd.lock`, an exclusive `flock`); a second run on the
    same workdir stops naming the holder (host, pid, start time). The kernel drops the lock of
    a killed process, so a stale lock is simply taken over (and said so);
  * temporaries that a killed run left behind (`*.vtdtmp`) are removed;
  * the resolved config is written to `<workdir>/config.json`.
Object-store workdirs (`gs://...`) get everything but the lock: they have no `flock`, and a
run there is expected to be the only one (one job per workdir).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from typing import Any, Iterator

import jax
import ml_collections
from absl import logging
from etils import epath

from vtd import artifacts
from vtd import sharding
from vtd.errors import UserError

LOCK_FILE = "vtd.lock"
CONFIG_FILE = "config.json"
# Older vtd temporaries: artifact dirs from mkdtemp (".artifact-*"), "<file>.<pid>.tmp.npz"
# and mkstemp's "tmp*.tmp".
_LEGACY_TMP_PREFIXES = (".artifact-",)


def is_local(path: Any) -> bool:
  return "://" not in str(path)


def check_writable(workdir: epath.Path) -> None:
  """Creates `workdir` and writes a probe file, turning every failure into a UserError."""
  where = f"--workdir={workdir}"
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"{where} is a file, not a directory; pass a directory path")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = artifacts.temporary_sibling(workdir / "probe")
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise UserError(f"{where} is not writable ({os_error_text(e)}); pass a directory you can "
                    "write to") from None


def os_error_text(e: OSError) -> str:
  """'No space left on device: /path' (strerror and filename, without errno noise)."""
  text = e.strerror or str(e)
  return f"{text}: {e.filename}" if e.filename else text


class WorkdirLock:
  """An exclusive, process-lifetime lock on a local workdir (see the module docstring)."""

  def __init__(self, workdir: epath.Path):
    self.path = os.path.join(os.fspath(workdir), LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      raise UserError(f"workdir {os.path.dirname(self.path)} is in use by "
                      f"{_describe_holder(_read_holder(self.path))}; wait for that run to "
                      "finish, or pass another --workdir") from None
    previous = _read_holder(self.path)
    if previous:
      logging.info("workdir lock: the previous run (%s) ended without releasing it; taking "
                   "it over", _describe_holder(previous))
    holder = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    self._fd = fd

  def release(self) -> None:
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)  # An empty lock file means "released cleanly".
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None


def _read_holder(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read().strip()
    return json.loads(text) if text else {}
  except (OSError, ValueError):
    return {}


def _describe_holder(holder: dict[str, Any]) -> str:
  if not holder:
    return "another process"
  return f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"


def _is_temporary(name: str) -> bool:
  return (name.endswith(artifacts.TMP_SUFFIX) or name.startswith(_LEGACY_TMP_PREFIXES)
          or name.endswith(".tmp.npz") or (name.startswith("tmp") and name.endswith(".tmp")))


def sweep_temporaries(workdir: epath.Path) -> list[str]:
  """Removes temporaries left by killed runs; returns their paths (relative to the workdir).

  Only safe while holding the lock: no other vtd process writes this workdir then. Orbax's
  own in-progress checkpoint directories are left to orbax."""
  removed = []
  for root, dirs, files in workdir.walk():
    root = epath.Path(root)
    for name in [d for d in dirs if _is_temporary(d)]:
      (root / name).rmtree()
      dirs.remove(name)
      removed.append(str(root / name))
    for name in files:
      if _is_temporary(name):
        (root / name).unlink()
        removed.append(str(root / name))
  return [os.path.relpath(p, os.fspath(workdir)) if is_local(workdir) else p for p in removed]


@contextlib.contextmanager
def open_workdir(workdir: Any, config: ml_collections.ConfigDict) -> Iterator[epath.Path]:
  """Checks, locks, cleans and records the workdir for the duration of a run (see above)."""
  path = epath.Path(os.path.expanduser(str(workdir)) if is_local(workdir) else str(workdir))
  lock = None
  if jax.process_index() == 0:
    check_writable(path)
    if is_local(path):
      lock = WorkdirLock(path)
      lock.acquire()
    else:
      logging.warning("workdir %s is on an object store: it cannot be locked, so make sure "
                      "no other run uses it", path)
  try:
    if jax.process_index() == 0:
      removed = sweep_temporaries(path)
      if removed:
        logging.info("removed %d temporary file(s) left by an interrupted run: %s",
                     len(removed), ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""))
      artifacts.write_json_atomic(path / CONFIG_FILE, json.loads(config.to_json()))
    sharding.sync("workdir-open")
    yield path
  finally:
    if lock is not None:
      lock.release()
