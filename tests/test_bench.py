"""Every benchmark script runs end to end in its --quick mode (tiny sizes) and prints its
goal line and tables. Speed goals themselves are checked by running the scripts at full size
(README "Benchmarks"), never in tests."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# script -> a line its output must contain
BENCHES = {
    "retrieval_metrics.py": "metrics identical to NumPy counting (plain): yes",
    "lsh_encode.py": "codes vtd vs numpy: identical",
    "qbnorm_dis.py": "GT ranks (of 1000) differing from the float64 reference",
    "videopca.py": "vtd clips batched vs one per call",
    "frame_retrieval.py": "faiss binary indexes vs gallery size",
    "teachtext_step.py": "+ distillation, 1 teachers cached (default)",
    "segmentation_students.py": "VideoPCA teacher (T = 32)",
}


def test_every_bench_script_is_listed():
  scripts = {f for f in os.listdir(os.path.join(REPO, "bench"))
             if f.endswith(".py") and f != "measure.py"}
  assert scripts == set(BENCHES)


@pytest.mark.parametrize("script", sorted(BENCHES))
def test_bench_quick(script):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the scripts choose their own device count
  out = subprocess.run([sys.executable, os.path.join("bench", script), "--quick"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert BENCHES[script] in out.stdout, out.stdout[-3000:]
  if script not in ("teachtext_step.py", "segmentation_students.py"):  # (no scaling in quick)
    assert "fitted exponent" in out.stdout
