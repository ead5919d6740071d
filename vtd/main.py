r"""vtd's entry point: train and evaluate one method, resumably.

  python -m vtd.main --config=configs/teachtext.py --workdir=runs/tt
  python -m vtd.main --config=configs/segmentation.py:smoke --workdir=runs/seg_s
  python -m vtd.main --config=configs/uts.py --workdir=runs/uts --config.seed=1

Any config field can be overridden on the command line (`--config.optim.lr=3e-4`); the config
is locked, so a misspelled key is an error. Re-running the same command resumes; re-running
with a changed config reruns exactly the stages it affects (README "Reusing and changing a
workdir").

Errors caused by the input or the environment (config, data files, shapes, disk, permissions,
a diverging loss) end in one line, `vtd: error: ...`, and exit status 2;
`--config.runtime.debug=true` or VTD_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import errno
import importlib
import logging as logging_std
import os
import re
import sys
from typing import NoReturn

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vtd import distributed
from vtd import workdir as workdir_lib
from vtd.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:preset]).",
                                          lock_config=True)

# config.method -> module with train_and_evaluate(config, workdir).
METHODS = {"teachtext": "vtd.teachtext.pipeline", "segmentation": "vtd.segmentation.pipeline",
           "uts": "vtd.uts.pipeline"}
USER_ERROR_EXIT = 2
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


class _LibraryInfoFilter(logging_std.Filter):
  """Drops INFO lines of chatty libraries (orbax logs every save, faiss its CPU-feature probing)
  and JAX's report that it found no TPU library on a machine without TPUs."""
  _QUIET = (f"{os.sep}orbax{os.sep}", f"{os.sep}grain{os.sep}", f"{os.sep}faiss{os.sep}")

  def filter(self, record: logging_std.LogRecord) -> bool:
    if record.levelno < logging_std.WARNING and str(record.msg).startswith(
        "Unable to initialize backend"):
      return False
    if any(q in record.pathname for q in self._QUIET):
      # Periodic (non-validation) checkpoints carry no metrics by design; orbax warns anyway.
      if str(record.msg).startswith("Requested `tracked_metric`"):
        return False
      return record.levelno >= logging_std.WARNING
    return True


class _ShortFormatter(logging_std.Formatter):
  """'12:04:05 message' (absl's default prefix is ~55 characters of thread id and file)."""

  def __init__(self):
    super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

  def format(self, record: logging_std.LogRecord) -> str:
    text = super().format(record)
    if record.levelno >= logging_std.WARNING:
      head, _, rest = text.partition(" ")
      text = f"{head} {record.levelname}: {rest}"
    return text


def configure_logging(runtime_cfg) -> None:
  """Console format and filters, before anything is logged (see `config.runtime`)."""
  handler = logging.get_absl_handler()
  if runtime_cfg.get("log_format", "short") == "short":
    handler.setFormatter(_ShortFormatter())
  if runtime_cfg.quiet_library_logs and not any(
      isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())


def configure_runtime(runtime_cfg) -> None:
  """Process-wide JAX settings from `config.runtime`; other processes than 0 log warnings
  only (every process runs the same program; one console is enough)."""
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  if runtime_cfg.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(runtime_cfg.compilation_cache_dir))
    # Cache everything that took noticeable time; CPU compiles of CE take seconds.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run(config, workdir: str):
  """Initialises multi-host if needed and runs the configured method in `workdir`."""
  if not workdir:
    raise UserError("--workdir is required (a directory for checkpoints and results)")
  if config.method not in METHODS:
    raise UserError(f"config.method must be one of {sorted(METHODS)}, got {config.method!r}")
  configure_logging(config.runtime)
  distributed.maybe_initialize(config.distributed)  # Before any device is touched.
  configure_runtime(config.runtime)
  logging.info("vtd: process %d/%d, %d local devices, %d global devices (%s)",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.default_backend())
  module = importlib.import_module(METHODS[config.method])
  with workdir_lib.open_workdir(workdir, config) as path:
    return module.train_and_evaluate(config, path)


def user_error_message(e: BaseException) -> str | None:
  """The one-line message for an error caused by the input or environment, else None (a bug).

  UserError (and its subclasses, e.g. a non-finite loss) carry their own message; operating
  system errors (disk full, permissions, missing files) are named with the file involved,
  including those that arrive wrapped in tensorstore's RESOURCE_EXHAUSTED text.
  """
  if isinstance(e, UserError):
    return str(e)
  if isinstance(e, OSError):
    text = workdir_lib.os_error_text(e)
    if e.errno in _DISK_FULL:
      return f"{text}; free some space or pass a --workdir on another disk"
    if e.errno in _NO_PERMISSION:
      return f"{text}; check the permissions, or pass a --workdir you can write to"
    if e.filename:
      return f"{text}; check the path"
    return None
  text = str(e)
  if "No space left on device" in text or "Disk quota exceeded" in text:
    path = re.search(r"(/[^\s'\"]+)", text)
    where = f" while writing {path.group(1)}" if path else ""
    return (f"no space left on device{where}; free some space or pass a --workdir on "
            "another disk")
  return None


def _env_debug() -> bool:
  return os.environ.get("VTD_DEBUG", "") not in ("", "0")


def _debug(config) -> bool:
  try:
    return _env_debug() or bool(config.runtime.get("debug", False))
  except Exception:  # pylint: disable=broad-except  # Not even a config: not debugging.
    return _env_debug()


def _fail(message: str) -> NoReturn:
  print(f"vtd: error: {message}", file=sys.stderr)
  sys.exit(USER_ERROR_EXIT)


def _flag_error_message(e: Exception, argv: list[str]) -> str:
  """One line from absl / ml_collections flag errors (which embed whole tracebacks)."""
  text = str(e).strip()
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if "No such file or directory" in text or "Attempted" in text:
    path = re.search(r"No such file or directory: '([^']+)'", text)
    return (f"config file {path.group(1) if path else '(see --config)'} not found; pass "
            "--config=configs/<method>.py[:preset], relative to the current directory")
  if "Error whilst parsing config file" in text:
    # The config's get_config raised: its last line is the reason (e.g. an unknown preset).
    reason = re.sub(r"^\w+(Error|Exception): ", "", lines[-1])
    return f"{lines[0].split(': Error whilst', 1)[0].replace('flag ', '')}: {reason}"
  typo = re.search(r"""Did you mean ['"]([^'"]+)['"] instead of ['"]([^'"]+)['"]""", text)
  if typo or isinstance(e, (AttributeError, KeyError)):
    name = typo.group(2) if typo else re.sub(r"\W", "", lines[0] if lines else "")
    given = [a.split("=", 1)[0][len("--config."):] for a in argv
             if a.startswith("--config.") and name in a.split("=", 1)[0].split(".")]
    key = given[0] if given else name
    hint = f"; did you mean {typo.group(1)!r}?" if typo else ""
    return f"unknown config key {key!r}{hint}"
  return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def _config_import_root(argv: list[str]) -> None:
  """Puts the folder above the config's package on sys.path, so that a config importing its
  siblings (`from configs import common`) loads from any working directory."""
  for arg in argv:
    if arg.startswith("--config="):
      folder = os.path.dirname(os.path.abspath(arg[len("--config="):].split(":", 1)[0]))
      root = os.path.dirname(folder) if os.path.isfile(os.path.join(folder, "__init__.py")) \
          else folder
      if root not in sys.path:
        sys.path.insert(0, root)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every error as one `vtd: error:` line and exit status 2."""
  _config_import_root(argv)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # Flags and config files: user input.
    if _env_debug():
      raise
    _fail(_flag_error_message(e, argv))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    _fail("--config is required, e.g. --config=configs/teachtext.py")
  try:
    config.get("method")  # A config file that failed to load raises only when first read.
  except Exception as e:  # pylint: disable=broad-except
    if _env_debug():
      raise
    _fail(_flag_error_message(e, sys.argv))
  sys.exit(run_and_report(config, _WORKDIR.value))


def run_and_report(config, workdir: str) -> int:
  """`run`, turning a user or environment error into one stderr line; the exit status."""
  try:
    run(config, workdir)
  except Exception as e:  # pylint: disable=broad-except
    message = user_error_message(e)
    if message is None or _debug(config):
      raise
    print(f"vtd: error: {message}", file=sys.stderr)
    return USER_ERROR_EXIT
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
