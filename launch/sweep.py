"""Expands a config's `sweep(add)` into `vtd.main` command lines.

A config file may define, next to `get_config(arg=None)`::

  def sweep(add):
    for seed in (0, 1, 2):
      add(seed=seed)
    add(**{"optim.lr": 3e-4, "seed": 1})

Each `add(...)` call describes one run as a dict of dotted config keys to
values. This tool turns every run into

  python -m vtd.main --config=<path[:arg]> --workdir=<root>/<run_name> \
      --config.<key>=<value> ...

where `run_name` is derived from the overrides (`seed=0`,
`optim.lr=0.0003,seed=1`). Keys are checked against `get_config(arg)` before
anything is printed or launched, so a typo fails here with one line instead of
N times on a cluster.

Usage:

  python launch/sweep.py --config configs/teachtext.py[:arg] \
      --workdir_root runs/tt [--run | --sbatch launch/slurm.sbatch] \
      [--python PY] [-- --config.train.num_steps=100 ...]

Without `--run` the commands are printed one per line (shell-quoted), so they
can be piped into `parallel`, `xargs` or a job array.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import hashlib
import importlib.util
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from ml_collections import config_dict
from ml_collections.config_flags import config_path

from vtd import cli

# Field types that `ml_collections.config_flags` knows how to parse from a
# `--config.key=value` flag (see `_FIELD_TYPE_TO_PARSER` there). Anything else
# (a `None` default, a list, ...) is rejected by vtd.main at start-up, so we
# reject it here first. Enum subclasses are handled separately.
_OVERRIDABLE_TYPES = (bool, int, float, str, tuple, config_dict.ConfigDict,
                      object)

# Run names become directory names: keep them to a conservative character set
# and a length well below the usual 255-byte limit of a path component.
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=,-]+")
_MAX_NAME_LEN = 120

Overrides = dict[str, Any]


class SweepError(Exception):
  """A user-facing error; its message is a single line."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One expanded run of a sweep."""
  name: str
  overrides: Overrides
  argv: list[str]


def split_config_arg(path_with_arg: str) -> tuple[str, str | None]:
  """Splits `path.py:arg` into (`path.py`, `arg`); arg is None if absent.

  Mirrors `config_flags`, which splits on the first ':' only, so the argument
  itself may contain ':'.
  """
  path, sep, arg = path_with_arg.partition(":")
  return path, (arg if sep else None)


def load_config_module(path: str) -> ModuleType:
  """Imports the config file at `path` (without any `:arg` suffix)."""
  path, _ = split_config_arg(path)
  if not os.path.isfile(path):
    raise SweepError(f"config file not found: {path}")
  # A unique module name per file, so two configs with the same basename do
  # not clobber each other in sys.modules. Registering the module is needed
  # for dataclasses / pickling defined inside config files.
  digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
  name = f"_vtd_sweep_config_{digest}"
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise SweepError(f"cannot import config file {path} (not a Python file?)")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # Report any import-time failure as one line.
    sys.modules.pop(name, None)
    raise SweepError(
        f"importing {path} failed: {type(e).__name__}: {e}") from e
  return module


def get_config(module: ModuleType, arg: str | None) -> config_dict.ConfigDict:
  """Calls `module.get_config` the way `config_flags` does."""
  if not callable(getattr(module, "get_config", None)):
    raise SweepError(f"{module.__file__} defines no get_config()")
  # config_flags calls get_config() without arguments when there is no ':arg',
  # so configs whose get_config takes no parameter keep working.
  config = module.get_config() if arg is None else module.get_config(arg)
  if not isinstance(config, config_dict.ConfigDict):
    raise SweepError(
        f"{module.__file__}: get_config({'' if arg is None else repr(arg)}) "
        f"returned {type(config).__name__}, expected a ConfigDict")
  return config


def collect_sweep(module: ModuleType) -> list[Overrides]:
  """Calls `module.sweep(add)` and returns one override dict per `add` call."""
  sweep_fn = getattr(module, "sweep", None)
  if not callable(sweep_fn):
    raise SweepError(
        f"{module.__file__} defines no sweep(add) function; add one, e.g. "
        "`def sweep(add): for seed in (0, 1, 2): add(seed=seed)`")
  runs: list[Overrides] = []

  def add(*dicts: Mapping[str, Any], **kwargs: Any) -> None:
    # Dotted keys cannot be Python keyword names, hence `add(**{"a.b": 1})`;
    # also accept `add({"a.b": 1})` since that is an easy thing to write.
    overrides: Overrides = {}
    for d in (*dicts, kwargs):
      if not isinstance(d, Mapping):
        raise SweepError(
            f"sweep: add() takes dicts or keyword arguments, got {d!r}")
      for key, value in d.items():
        if not isinstance(key, str) or not key:
          raise SweepError(f"sweep: override keys must be non-empty strings, "
                           f"got {key!r}")
        overrides[key] = value
    runs.append(overrides)

  sweep_fn(add)
  if not runs:
    raise SweepError(f"{module.__file__}: sweep(add) never called add()")
  return runs


def _field_type(config: config_dict.ConfigDict, key: str) -> type:
  """Returns the type of the field at dotted `key`; SweepError if missing."""
  try:
    return config_path.get_type(key, config)
  except (KeyError, AttributeError, IndexError, TypeError, ValueError):
    raise SweepError(f"unknown config key {key!r}") from None


def _check_overridable(key: str, field_type: type) -> None:
  if isinstance(field_type, type) and (
      issubclass(field_type, enum.Enum) or
      issubclass(field_type, config_dict.ConfigDict)):
    return
  if field_type not in _OVERRIDABLE_TYPES:
    type_name = getattr(field_type, "__name__", str(field_type))
    raise SweepError(
        f"config key {key!r} has type {type_name}, which ml_collections "
        "cannot override from the command line (give it a typed default or "
        "config_dict.placeholder(type))")


def format_value(key: str, value: Any, field_type: type) -> str:
  """Formats `value` so that config_flags parses it back to the same value.

  The parser is chosen by the type of the field in the config, not by the
  value, so the formatting follows `field_type`.
  """
  def mismatch() -> SweepError:
    return SweepError(
        f"config key {key!r} is a {field_type.__name__}, got "
        f"{type(value).__name__} {value!r}")

  if field_type is bool:
    if not isinstance(value, bool):
      raise mismatch()
    # absl's BooleanParser wants true/false (it also accepts 1/0, but not
    # Python's True/False spelling in every version).
    return "true" if value else "false"
  if field_type is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise mismatch()
    return str(value)
  if field_type is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise mismatch()
    # repr round-trips exactly (str() did not before Python 3.2, and 3e-4
    # stays '0.0003'); inf/nan come out as 'inf'/'nan', which float() accepts.
    return repr(float(value))
  if field_type is str:
    if not isinstance(value, str):
      raise mismatch()
    # The string parser takes the flag text verbatim; shell quoting is applied
    # only when a command is printed.
    return value
  if field_type is tuple:
    if not isinstance(value, (tuple, list)):
      raise mismatch()
    # TupleParser literal_evals the text.
    return repr(tuple(value))
  if isinstance(field_type, type) and issubclass(field_type, enum.Enum):
    if isinstance(value, enum.Enum):
      return value.name
    if isinstance(value, str):
      return value
    raise mismatch()
  if isinstance(field_type, type) and issubclass(field_type,
                                                 config_dict.ConfigDict):
    if not isinstance(value, Mapping):
      raise mismatch()
    return repr(dict(value))
  # `object` fields (config_dict.placeholder(object)) use a literal_eval
  # parser that maps 'true'/'false' to bools and falls back to the raw text;
  # repr keeps '1' a string instead of becoming the int 1.
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float) and not math.isfinite(value):
    # literal_eval cannot read inf/nan; there is no spelling that round-trips.
    raise SweepError(f"config key {key!r}: cannot pass {value!r} to an "
                     "untyped field; give the field a float default")
  return repr(value)


def run_name(overrides: Mapping[str, Any], formatted: Mapping[str, str]) -> str:
  """A filesystem-safe name such as `optim.lr=0.0003,seed=1`.

  Uses the command-line spelling of each value (so floats read as in the
  flags), except that strings appear without the quotes that untyped fields
  need.
  """
  if not formatted:
    return "base"
  name = ",".join(
      f"{k}={overrides[k] if isinstance(overrides[k], str) else v}"
      for k, v in formatted.items())
  name = _UNSAFE_NAME_CHARS.sub("_", name)
  # Never start with '-' or '.' (looks like an option / a hidden file).
  if name[0] in "-.":
    name = "_" + name[1:]
  if len(name) > _MAX_NAME_LEN:
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    name = f"{name[:_MAX_NAME_LEN - 9]}-{digest}"
  return name


def _extra_config_keys(extra: Sequence[str]) -> list[str]:
  """Dotted keys of `--config.k=v` / `--config.k v` items in `extra`."""
  keys = []
  for item in extra:
    if item.startswith("--config."):
      keys.append(item[len("--config."):].split("=", 1)[0])
  return keys


def build_runs(path_with_arg: str,
               workdir_root: str,
               extra: Sequence[str] = (),
               python: str = "python",
               sbatch: str | None = None) -> list[Run]:
  """Loads the config, validates its sweep and builds one Run per `add`.

  Args:
    path_with_arg: `path/to/config.py` or `path/to/config.py:arg`; emitted
      verbatim as `--config=...`.
    workdir_root: each run's workdir is `<workdir_root>/<run_name>`.
    extra: arguments appended to every command (e.g. `--config.x=1`).
    python: interpreter for `python -m vtd.main`.
    sbatch: if set, emit `sbatch [--export=ALL,PYTHON=..] <sbatch> <vtd args>`
      for launch/slurm.sbatch-style scripts that run `srun python -m vtd.main
      "$@"` themselves.

  Returns:
    The runs in the order `sweep` added them.

  Raises:
    SweepError: with a one-line message on any problem.
  """
  if not workdir_root:
    raise SweepError("--workdir_root must not be empty")
  path, arg = split_config_arg(path_with_arg)
  module = load_config_module(path)
  config = get_config(module, arg)
  sweep_runs = collect_sweep(module)

  extra = list(extra)
  extra_keys = _extra_config_keys(extra)
  for key in extra_keys:
    _check_overridable(key, _field_type(config, key))

  if sbatch is None:
    prefix = [python, "-m", "vtd.main"]
  else:
    prefix = ["sbatch"]
    if python != "python":
      # slurm.sbatch runs "${PYTHON:-python}"; sbatch's --export list is
      # comma separated, so a comma in the path cannot be passed this way.
      if "," in python:
        raise SweepError(f"--python {python!r} contains ',' which sbatch "
                         "--export cannot carry")
      prefix.append(f"--export=ALL,PYTHON={python}")
    prefix.append(sbatch)

  runs: list[Run] = []
  seen: dict[str, int] = {}
  for index, overrides in enumerate(sweep_runs):
    formatted: dict[str, str] = {}
    for key, value in overrides.items():
      field_type = _field_type(config, key)
      _check_overridable(key, field_type)
      if key in extra_keys:
        # Both would be on the command line; for tuple fields config_flags
        # even merges repeated flags, so refuse rather than guess.
        raise SweepError(f"config key {key!r} is set both by sweep() and by "
                         "a trailing override")
      formatted[key] = format_value(key, value, field_type)

    name = run_name(overrides, formatted)
    if name in seen:
      if runs[seen[name]].overrides == overrides:
        raise SweepError(f"sweep runs {seen[name]} and {index} are identical "
                         f"({name}); they would share a workdir")
      # Different overrides that sanitise to the same name: disambiguate.
      name = f"{name}-{index}"
    seen[name] = index

    workdir = os.path.join(workdir_root, name)
    argv = [*prefix, f"--config={path_with_arg}", f"--workdir={workdir}"]
    argv += [f"--config.{k}={v}" for k, v in formatted.items()]
    argv += extra
    runs.append(Run(name=name, overrides=dict(overrides), argv=argv))
  return runs


def expand(path_with_arg: str,
           workdir_root: str,
           extra: Sequence[str] = (),
           python: str = "python",
           sbatch: str | None = None) -> list[list[str]]:
  """Like `build_runs`, but returns only the argv lists."""
  return [r.argv for r in build_runs(path_with_arg, workdir_root, extra,
                                     python=python, sbatch=sbatch)]


def run_sequentially(
    runs: Sequence[Run],
    runner: Callable[[list[str]], int] = lambda argv: subprocess.call(argv),
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr,
                                                   flush=True),
) -> int:
  """Runs each command in turn; stops at the first failure.

  Returns:
    0 if all succeeded, otherwise the failing command's exit code (1 if that
    code is not a positive number, e.g. killed by a signal).
  """
  for i, run in enumerate(runs, 1):
    log(f"sweep: [{i}/{len(runs)}] {run.name}: {shlex.join(run.argv)}")
    try:
      code = runner(run.argv)
    except OSError as e:  # e.g. the interpreter does not exist.
      log(f"sweep: run {i}/{len(runs)} ({run.name}) could not start: {e}")
      return 1
    if code != 0:
      log(f"sweep: run {i}/{len(runs)} ({run.name}) failed with exit code "
          f"{code}; not starting the remaining {len(runs) - i} run(s)")
      return code if code > 0 else 1
  log(f"sweep: all {len(runs)} run(s) succeeded")
  return 0


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  # Everything after the first '--' is passed through verbatim; split it off
  # by hand so argparse never tries to interpret `--config.x=1`.
  argv = list(argv)
  extra: list[str] = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1:]
  parser = cli.parser(
      "launch/sweep.py",
      "Expand a config's sweep(add) into vtd.main commands. Arguments after '--' are "
      "appended to every command, e.g. '-- --config.train.num_steps=100'.",
      "python launch/sweep.py --config=configs/teachtext.py --workdir_root=runs/tt_sweep "
      "--run")
  cli.add(parser, "--config", required=True, metavar="PATH[:ARG]",
                      help="config file, optionally with ':arg' for "
                           "get_config(arg); kept verbatim in the commands")
  cli.add(parser, "--workdir_root", required=True, metavar="DIR",
                      help="each run gets --workdir=DIR/<run_name>")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--print", dest="run", action="store_false",
                    help="print one command per line (default)")
  mode.add_argument("--run", action="store_true",
                    help="run the commands one after another here; stop at "
                         "the first failure")
  # Both flags share dest 'run'; without this argparse would take the default
  # from '--print' (store_false -> True) and run by default.
  parser.set_defaults(run=False)
  cli.add(parser, "--sbatch", metavar="FILE",
                      help="emit 'sbatch FILE <vtd.main args>' instead (FILE "
                           "runs srun python -m vtd.main \"$@\")")
  cli.add(parser, "--python", default=None,
                      help="interpreter for 'python -m vtd.main' (default: this "
                           "interpreter with --run, else python); with --sbatch it is "
                           "passed as PYTHON")
  return parser.parse_args(argv), extra


def main(argv: Sequence[str] | None = None) -> int:
  args, extra = _parse_args(sys.argv[1:] if argv is None else argv)
  # `python -m vtd.main` runs with the working directory on sys.path, so a
  # config may `import vtd` or sibling modules; import it the same way.
  if os.getcwd() not in sys.path and "" not in sys.path:
    sys.path.insert(0, os.getcwd())
  try:
    # --run executes here, so the default is the interpreter running this script (its venv);
    # printed commands are for other machines, where plain `python` is the convention.
    python = args.python or (sys.executable if args.run else "python")
    runs = build_runs(args.config, args.workdir_root, extra, python=python, sbatch=args.sbatch)
  except SweepError as e:
    print(f"sweep: error: {e}", file=sys.stderr)
    return 2
  if args.run:
    return run_sequentially(runs)
  for run in runs:
    print(shlex.join(run.argv))
  return 0


if __name__ == "__main__":
  sys.exit(main())
