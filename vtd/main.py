r"""vtd's entry point: `python -m vtd.main --config=configs/<method>.py[:preset] --workdir=DIR`.

Any config field can be overridden on the command line (`--config.optim.lr=3e-4`); the config
is locked, so a misspelled key is an error. Errors in the config or data are reported in one
line; everything is resumable by re-running the same command.
"""

from __future__ import annotations

import importlib
import logging as logging_std
import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vtd import distributed
from vtd.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:preset]).",
                                          lock_config=True)

# config.method -> module with train_and_evaluate(config, workdir).
METHODS = {"teachtext": "vtd.teachtext.train", "segmentation": "vtd.segmentation.train",
           "uts": "vtd.uts.train"}


class _LibraryInfoFilter(logging_std.Filter):
  """Drops INFO lines of chatty libraries (orbax logs every save, faiss its CPU-feature probing)."""
  _QUIET = (f"{os.sep}orbax{os.sep}", f"{os.sep}grain{os.sep}", f"{os.sep}faiss{os.sep}")

  def filter(self, record: logging_std.LogRecord) -> bool:
    if any(q in record.pathname for q in self._QUIET):
      # Periodic (non-validation) checkpoints carry no metrics by design; orbax warns anyway.
      if str(record.msg).startswith("Requested `tracked_metric`"):
        return False
      return record.levelno >= logging_std.WARNING
    return True


def configure_runtime(runtime_cfg) -> None:
  """Process-wide JAX and logging settings from `config.runtime`."""
  if runtime_cfg.quiet_library_logs:
    logging.get_absl_handler().addFilter(_LibraryInfoFilter())
  if runtime_cfg.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(runtime_cfg.compilation_cache_dir))
    # Cache everything that took noticeable time; CPU compiles of CE take seconds.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run(config, workdir: str):
  """Initialises multi-host if needed and runs the configured method."""
  if config.method not in METHODS:
    raise UserError(f"config.method must be one of {sorted(METHODS)}, got {config.method!r}")
  distributed.maybe_initialize(config.distributed)  # Before any device is touched.
  configure_runtime(config.runtime)
  logging.info("vtd: process %d/%d, %d local devices, %d global devices (%s)",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.default_backend())
  module = importlib.import_module(METHODS[config.method])
  return module.train_and_evaluate(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    print(f"vtd: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
