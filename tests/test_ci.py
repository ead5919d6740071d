"""The CI script runs exactly the README's test command and fails when pytest fails."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    lines = [l for l in f.read().splitlines() if l and not l.startswith("#")]
  test_command = lines[-1]
  assert "pytest" in test_command
  assert any(test_command == block.strip() for block in _readme_commands()), (
      "the last line of .ci/run must be the README's test command, verbatim")
  assert "|| true" not in test_command and "set -euo pipefail" in lines
