r"""Export a trained model as a self-contained artifact.

  python -m vtd.export --workdir=runs/tt --model=student_teachtext --out=exports/tt_student

copies `<workdir>/<model>/model` (params + config + metadata, no optimiser or training state)
to `--out`, recording where it came from. `python -m vtd.evaluate` reads it back.
"""

from __future__ import annotations

import argparse
import os
import sys

from vtd import artifacts
from vtd import stages


def export(workdir: str, model: str, out: str) -> dict:
  """Writes the artifact of stage `model` of `workdir` to `out`; returns its metadata."""
  stage_dir = os.path.join(workdir, model)
  if not stages.is_done(stage_dir):
    available = sorted(d for d in os.listdir(workdir) if stages.is_done(os.path.join(workdir, d))
                       ) if os.path.isdir(workdir) else []
    raise FileNotFoundError(f"no finished model {model!r} in {workdir} (finished: {available})")
  variables, config, metadata = artifacts.load_artifact(os.path.join(stage_dir, "model"))
  metadata = {**metadata, "exported_from": os.path.abspath(stage_dir)}
  metadata.pop("shapes", None)
  artifacts.save_artifact(out, variables, config, metadata)
  return metadata


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m vtd.export", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="The training run's workdir.")
  parser.add_argument("--model", required=True, help="Stage to export, e.g. student_teachtext.")
  parser.add_argument("--out", required=True, help="Artifact directory to write.")
  args = parser.parse_args(argv)
  try:
    meta = export(args.workdir, args.model, args.out)
  except FileNotFoundError as e:
    sys.exit(f"vtd.export: error: {e}")
  print(f"exported {meta['model_name']} (step {meta.get('step')}, {meta['num_params']} params) "
        f"to {args.out}")


if __name__ == "__main__":
  main()
