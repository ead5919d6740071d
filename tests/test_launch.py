"""Tests for the launchers in launch/: sweep.py and the shell scripts.

sweep.py is exercised end to end: the emitted `--config.k=v` flags are parsed
back with ml_collections.config_flags (what vtd.main uses), so a formatting
bug shows up as a wrong value or type. The shell scripts are run with fake
`python` / `gcloud` executables that record their arguments, which checks
process ids, quoting and failure propagation without JAX or a cluster.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

_REPO = Path(__file__).resolve().parents[1]
_LAUNCH = _REPO / "launch"
_SHELL_SCRIPTS = ("slurm.sbatch", "tpu_pod.sh", "local_multiprocess.sh")


def _import_sweep():
  # launch/ is a directory of scripts, not a package: import by path.
  spec = importlib.util.spec_from_file_location("_vtd_launch_sweep",
                                                _LAUNCH / "sweep.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Needed by its @dataclass.
  spec.loader.exec_module(module)
  return module


sweep = _import_sweep()

_CONFIG = '''
from ml_collections import config_dict


def get_config(arg=None):
  c = config_dict.ConfigDict()
  c.seed = 0
  c.name = "base"
  c.optim = config_dict.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.betas = (0.9, 0.999)
  c.optim.nesterov = False
  c.train = config_dict.ConfigDict()
  c.train.num_steps = 1000
  c.model = config_dict.ConfigDict()
  c.model.dropout = config_dict.placeholder(float)
  c.model.extra = config_dict.placeholder(object)
  c.unset = None  # Type NoneType: config_flags cannot override it.
  if arg == "fast":
    # Only exists with the ':fast' preset, so validating without the arg fails.
    c.fast_only = 1
  return c
'''


def _write_config(tmp_path: Path, sweep_body: str | None,
                  name: str = "cfg.py") -> Path:
  text = _CONFIG
  if sweep_body is not None:
    text += "\n\ndef sweep(add):\n" + textwrap.indent(
        textwrap.dedent(sweep_body), "  ")
  path = tmp_path / name
  path.write_text(text)
  return path


_SEED_LR_SWEEP = """
for seed in (0, 1):
  add(seed=seed)
add(**{"optim.lr": 3e-4, "seed": 1})
"""


def _parse_back(config_file: str, argv: list[str], monkeypatch):
  """Parses vtd.main-style argv (after `-m vtd.main`) like vtd.main does."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  full = ["vtd.main", *argv]
  # config_flags collects the overrides from sys.argv, not from fv(argv).
  monkeypatch.setattr(sys, "argv", full)
  fv(full)
  return fv.config, fv.workdir


def _vtd_args(argv: list[str]) -> list[str]:
  assert argv[1:3] == ["-m", "vtd.main"], argv
  return argv[3:]


# -------------------------------------------------------------------- sweep.py


def test_expand_commands_and_names(tmp_path):
  cfg = _write_config(tmp_path, _SEED_LR_SWEEP)
  cmds = sweep.expand(str(cfg), "runs/tt")
  assert cmds == [
      ["python", "-m", "vtd.main", f"--config={cfg}",
       "--workdir=runs/tt/seed=0", "--config.seed=0"],
      ["python", "-m", "vtd.main", f"--config={cfg}",
       "--workdir=runs/tt/seed=1", "--config.seed=1"],
      ["python", "-m", "vtd.main", f"--config={cfg}",
       "--workdir=runs/tt/optim.lr=0.0003,seed=1",
       "--config.optim.lr=0.0003", "--config.seed=1"],
  ]
  names = [r.name for r in sweep.build_runs(str(cfg), "runs/tt")]
  assert names == ["seed=0", "seed=1", "optim.lr=0.0003,seed=1"]


def test_values_round_trip_through_config_flags(tmp_path, monkeypatch):
  cfg = _write_config(tmp_path, """
  add(**{
      "seed": 7,
      "name": "it's a \\"name\\" with $HOME/ and spaces",
      "optim.lr": 0.1 + 0.2,  # Not exactly representable in few digits.
      "optim.betas": (0.5, 0.75),
      "optim.nesterov": True,
      "train.num_steps": 5,
      "model.dropout": 3,  # An int given to a float field.
      "model.extra": "1",  # Must stay a string in an untyped field.
  })
  add(**{"optim.nesterov": False, "model.extra": 2.5})
  """)
  runs = sweep.build_runs(str(cfg), str(tmp_path / "runs"))
  config, workdir = _parse_back(str(cfg), _vtd_args(runs[0].argv), monkeypatch)
  assert workdir == str(tmp_path / "runs" / runs[0].name)
  expected = {
      "seed": 7, "name": "it's a \"name\" with $HOME/ and spaces",
      "optim.lr": 0.1 + 0.2, "optim.betas": (0.5, 0.75),
      "optim.nesterov": True, "train.num_steps": 5, "model.dropout": 3.0,
      "model.extra": "1",
  }
  for key, want in expected.items():
    node = config
    for part in key.split("."):
      node = node[part]
    assert node == want, key
    assert type(node) is type(want), key

  config, _ = _parse_back(str(cfg), _vtd_args(runs[1].argv), monkeypatch)
  assert config.optim.nesterov is False
  assert config.model.extra == 2.5 and type(config.model.extra) is float
  assert config.seed == 0  # Untouched fields keep their defaults.

  # The directory name is a single safe path component.
  assert "/" not in runs[0].name and " " not in runs[0].name
  assert "\"" not in runs[0].name and "'" not in runs[0].name


def test_printed_lines_round_trip_through_the_shell(tmp_path, capsys,
                                                    monkeypatch):
  cfg = _write_config(tmp_path, """
  add(**{"name": "a b;c 'd'", "seed": 3})
  """)
  monkeypatch.setattr(sys, "path", list(sys.path))
  assert sweep.main(["--config", str(cfg), "--workdir-root", "r"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 1
  argv = shlex.split(lines[0])
  config, _ = _parse_back(str(cfg), _vtd_args(argv), monkeypatch)
  assert config.name == "a b;c 'd'" and config.seed == 3


def test_unknown_key_names_the_key(tmp_path, capsys, monkeypatch):
  cfg = _write_config(tmp_path, """
  add(seed=0)
  add(**{"optim.lrr": 1e-3})
  """)
  with pytest.raises(sweep.SweepError, match=r"'optim\.lrr'") as e:
    sweep.expand(str(cfg), "runs")
  assert "\n" not in str(e.value)

  monkeypatch.setattr(sys, "path", list(sys.path))
  assert sweep.main(["--config", str(cfg), "--workdir-root", "runs"]) == 2
  captured = capsys.readouterr()
  assert captured.out == ""  # Nothing half-printed before the error.
  assert captured.err.strip().count("\n") == 0
  assert "optim.lrr" in captured.err


@pytest.mark.parametrize("overrides, message", [
    ({"optim.nesterov": 1}, r"'optim\.nesterov' is a bool"),
    ({"seed": 1.5}, r"'seed' is a int"),
    ({"name": 3}, r"'name' is a str"),
    ({"unset": 1}, r"'unset' has type NoneType"),
    ({"seed.x": 1}, r"unknown config key 'seed\.x'"),
])
def test_bad_overrides_are_rejected(tmp_path, overrides, message):
  cfg = _write_config(tmp_path, f"add(**{overrides!r})\n")
  with pytest.raises(sweep.SweepError, match=message):
    sweep.expand(str(cfg), "runs")


def test_module_without_sweep_is_a_clear_error(tmp_path):
  cfg = _write_config(tmp_path, None)
  with pytest.raises(sweep.SweepError, match=r"defines no sweep\(add\)"):
    sweep.expand(str(cfg), "runs")
  cfg = _write_config(tmp_path, "pass\n", name="empty.py")
  with pytest.raises(sweep.SweepError, match=r"never called add\(\)"):
    sweep.expand(str(cfg), "runs")
  with pytest.raises(sweep.SweepError, match="not found"):
    sweep.expand(str(tmp_path / "missing.py"), "runs")


def test_config_arg_is_passed_and_preserved(tmp_path):
  cfg = _write_config(tmp_path, "add(fast_only=2, seed=0)\n")
  # Without ':fast' get_config() has no fast_only field.
  with pytest.raises(sweep.SweepError, match="'fast_only'"):
    sweep.expand(str(cfg), "runs")
  (cmd,) = sweep.expand(f"{cfg}:fast", "runs")
  assert cmd[3] == f"--config={cfg}:fast"
  assert cmd[4:] == ["--workdir=runs/fast_only=2,seed=0",
                     "--config.fast_only=2", "--config.seed=0"]


def test_sbatch_prefix(tmp_path):
  cfg = _write_config(tmp_path, _SEED_LR_SWEEP)
  cmds = sweep.expand(str(cfg), "runs", sbatch="launch/slurm.sbatch")
  assert len(cmds) == 3
  for cmd in cmds:
    # slurm.sbatch runs `srun python -m vtd.main "$@"` itself.
    assert cmd[:3] == ["sbatch", "launch/slurm.sbatch", f"--config={cfg}"]
    assert "vtd.main" not in cmd
  (cmd, *_) = sweep.expand(str(cfg), "runs", sbatch="job.sbatch",
                           python="/opt/venv/bin/python")
  assert cmd[:3] == ["sbatch", "--export=ALL,PYTHON=/opt/venv/bin/python",
                     "job.sbatch"]


def test_cli_extra_overrides_and_python(tmp_path, capsys, monkeypatch):
  cfg = _write_config(tmp_path, _SEED_LR_SWEEP)
  monkeypatch.setattr(sys, "path", list(sys.path))
  code = sweep.main(["--config", str(cfg), "--workdir-root", "w", "--python",
                     "py3", "--", "--config.train.num_steps=100", "--flag"])
  assert code == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3
  for line in lines:
    argv = shlex.split(line)
    assert argv[:3] == ["py3", "-m", "vtd.main"]
    assert argv[-2:] == ["--config.train.num_steps=100", "--flag"]

  # Trailing overrides are validated too, and may not fight the sweep.
  with pytest.raises(sweep.SweepError, match="'train.num_stepz'"):
    sweep.expand(str(cfg), "w", extra=["--config.train.num_stepz=1"])
  with pytest.raises(sweep.SweepError, match="'seed' is set both"):
    sweep.expand(str(cfg), "w", extra=["--config.seed=5"])


def test_run_names_are_safe_and_unique(tmp_path):
  cfg = _write_config(tmp_path, """
  add(name="a/b")
  add(name="a b")  # Same sanitised name as "a/b": must not share a workdir.
  add(name="x" * 300)
  """)
  runs = sweep.build_runs(str(cfg), "r")
  names = [r.name for r in runs]
  assert names[0] == "name=a_b"
  assert len(set(names)) == 3
  assert all(len(n) <= 120 and "/" not in n for n in names)

  cfg = _write_config(tmp_path, "add(seed=1)\nadd(seed=1)\n", name="dup.py")
  with pytest.raises(sweep.SweepError, match="identical"):
    sweep.expand(str(cfg), "r")


def _fake_python(tmp_path: Path, body: str) -> Path:
  """A bash 'interpreter' that records its argv (one per line)."""
  path = tmp_path / "fake_python"
  path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return path


def test_run_stops_at_first_failure(tmp_path, capsys, monkeypatch):
  cfg = _write_config(tmp_path, _SEED_LR_SWEEP)
  calls = tmp_path / "calls"
  fake = _fake_python(tmp_path, f"""
  echo "$*" >> {shlex.quote(str(calls))}
  for a in "$@"; do [[ "$a" == --config.seed=1 ]] && exit 7; done
  exit 0
  """)
  monkeypatch.setattr(sys, "path", list(sys.path))
  code = sweep.main(["--config", str(cfg), "--workdir-root", "w", "--run",
                     "--python", str(fake)])
  assert code == 7
  # seed=0 ran, seed=1 failed, the third run was never started.
  assert len(calls.read_text().splitlines()) == 2
  err = capsys.readouterr().err
  assert "run 2/3 (seed=1) failed with exit code 7" in err


def test_run_defaults_to_this_interpreter(tmp_path, monkeypatch):
  # `.venv/bin/python launch/sweep.py --run` must not fall back to whatever `python` is on
  # PATH (that one may lack jax); printed commands keep the portable `python`.
  cfg = _write_config(tmp_path, _SEED_LR_SWEEP)
  calls = tmp_path / "calls"
  fake = _fake_python(tmp_path, f'echo "$0" >> {shlex.quote(str(calls))}\n')
  monkeypatch.setattr(sys, "path", list(sys.path))
  monkeypatch.setattr(sys, "executable", str(fake))
  assert sweep.main(["--config", str(cfg), "--workdir-root", "w", "--run"]) == 0
  assert calls.read_text().splitlines() == [str(fake)] * 3


# --------------------------------------------------------------- shell scripts


@pytest.mark.parametrize("script", _SHELL_SCRIPTS)
def test_shell_script_syntax_and_mode(script):
  path = _LAUNCH / script
  subprocess.run(["bash", "-n", str(path)], check=True)
  assert os.access(path, os.X_OK), f"{script} is not executable"
  assert "set -euo pipefail" in path.read_text()


def test_slurm_script_runs_vtd_main_with_srun():
  text = (_LAUNCH / "slurm.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=8" in text
  assert 'srun --kill-on-bad-exit=1 "$PYTHON" -m vtd.main "$@"' in text


def _process_id(args: list[str]) -> int:
  (pid,) = [a.split("=", 1)[1] for a in args
            if a.startswith("--config.distributed.process_id=")]
  return int(pid)


def _run_local(tmp_path: Path, n: int, fake: Path, *extra_env: tuple[str, str],
               args=("--", "--config=c.py:fast", "--workdir=a b")):
  env = {**os.environ, "PYTHON": str(fake),
         "VTD_LOG_DIR": str(tmp_path / "logs"), "REC": str(tmp_path / "rec")}
  env.pop("JAX_PLATFORMS", None)
  env.update(dict(extra_env))
  (tmp_path / "rec").mkdir(exist_ok=True)
  return subprocess.run(
      [str(_LAUNCH / "local_multiprocess.sh"), str(n), "23456", *args],
      env=env, capture_output=True, text=True, timeout=30)


_RECORDING_PYTHON = """
id=""
for a in "$@"; do
  case "$a" in --config.distributed.process_id=*) id=${a#*=};; esac
done
printf '%s\\n' "$@" > "$REC/args_$id"
echo "$JAX_PLATFORMS" > "$REC/platform_$id"
echo "hello from $id"
if [[ "$id" == "${FAIL_ID:-none}" ]]; then echo "boom $id"; exit 3; fi
"""


def test_local_multiprocess_launches_all_ids(tmp_path):
  fake = _fake_python(tmp_path, _RECORDING_PYTHON)
  result = _run_local(tmp_path, 3, fake)
  assert result.returncode == 0, result.stderr
  rec = tmp_path / "rec"
  for i in range(3):
    args = (rec / f"args_{i}").read_text().splitlines()
    assert args == [
        "-m", "vtd.main", "--config=c.py:fast", "--workdir=a b",
        "--config.distributed.mode=on",
        "--config.distributed.coordinator_address=127.0.0.1:23456",
        "--config.distributed.num_processes=3",
        f"--config.distributed.process_id={i}",
    ]
    assert _process_id(args) == i
    assert (rec / f"platform_{i}").read_text().strip() == "cpu"
    log = tmp_path / "logs" / f"process_{i}.log"
    assert log.read_text().strip() == f"hello from {i}"
  assert sorted(p.name for p in rec.glob("args_*")) == [
      "args_0", "args_1", "args_2"]


def test_local_multiprocess_propagates_failure(tmp_path):
  fake = _fake_python(tmp_path, _RECORDING_PYTHON)
  result = _run_local(tmp_path, 3, fake, ("FAIL_ID", "1"),
                      ("JAX_PLATFORMS", "cuda"))
  assert result.returncode != 0
  assert "process 1 failed with exit code 3" in result.stderr
  assert "boom 1" in result.stderr  # The tail of its log is shown.
  assert "process 0 failed" not in result.stderr
  assert "process 2 failed" not in result.stderr
  # All three were started even though one failed; JAX_PLATFORMS is honoured.
  for i in range(3):
    assert (tmp_path / "rec" / f"platform_{i}").read_text().strip() == "cuda"


def test_local_multiprocess_rejects_bad_usage(tmp_path):
  fake = _fake_python(tmp_path, "exit 0\n")
  assert _run_local(tmp_path, 0, fake).returncode == 2
  assert _run_local(tmp_path, 2, fake, args=()).returncode == 0
  result = subprocess.run([str(_LAUNCH / "local_multiprocess.sh")],
                          capture_output=True, text=True, timeout=10)
  assert result.returncode == 2 and "usage" in result.stderr


def test_tpu_pod_quotes_arguments_for_the_workers(tmp_path):
  # A fake gcloud records its argv; then the --command string is run by bash
  # in place of the worker's shell, with a fake python that records argv.
  gcloud = tmp_path / "gcloud"
  gcloud.write_text("#!/usr/bin/env bash\nprintf '%s\\0' \"$@\" > \"$REC\"\n")
  gcloud.chmod(0o755)
  repo = tmp_path / "my repo"
  repo.mkdir()
  fake = _fake_python(tmp_path, """
  pwd > "$OUT"
  printf '%s\\n' "$@" >> "$OUT"
  """)
  args = ["--config=configs/teachtext.py", "--workdir=gs://b/r t",
          "--config.name=it's \"$HOME\" `x` ;|&"]
  env = {**os.environ, "TPU_NAME": "pod", "ZONE": "us-z", "REPO": str(repo),
         "PYTHON": str(fake), "GCLOUD": str(gcloud),
         "REC": str(tmp_path / "gcloud_args")}
  env.pop("PROJECT", None)
  subprocess.run([str(_LAUNCH / "tpu_pod.sh"), *args], env=env, check=True,
                 capture_output=True, timeout=10)
  gargs = (tmp_path / "gcloud_args").read_text().split("\0")[:-1]
  assert gargs[:8] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--zone",
                       "us-z", "--worker=all"]
  assert gargs[8] == "--command"
  out = tmp_path / "out"
  subprocess.run(["bash", "-c", gargs[9]], env={**os.environ, "OUT": str(out)},
                 check=True, timeout=10)
  lines = out.read_text().splitlines()
  assert lines[0] == str(repo)
  assert lines[1:] == ["-m", "vtd.main", *args]


def test_tpu_pod_requires_env(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k not in ("TPU_NAME", "ZONE", "REPO")}
  result = subprocess.run([str(_LAUNCH / "tpu_pod.sh"), "--config=x.py"],
                          env={**env, "ZONE": "z"}, capture_output=True,
                          text=True, timeout=10)
  assert result.returncode == 2
  assert "TPU_NAME" in result.stderr and "REPO" in result.stderr
  assert "ZONE" not in result.stderr.splitlines()[0]
