r"""Evaluate an exported artifact on a split, without any training state.

  python -m vtd.evaluate --artifact=exports/tt_student --split=test --output=metrics.json

The data are those named by the artifact's config (the embedded dataset is regenerated
deterministically); `--data_path` points a `source=npz` model at another copy of its data.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vtd import artifacts
from vtd import results
from vtd.errors import UserError

# metadata['method'] -> module with evaluate_artifact(variables, config, metadata, split).
EVALUATORS = {"teachtext": "vtd.teachtext.train"}


def evaluate_artifact(artifact_dir: str, split: str, data_path: str | None = None) -> dict:
  variables, config, metadata = artifacts.load_artifact(artifact_dir)
  if data_path:
    config.data.path = data_path
  method = metadata.get("method")
  if method not in EVALUATORS:
    raise UserError(f"{artifact_dir}: unknown method {method!r}")
  module = importlib.import_module(EVALUATORS[method])
  metrics = module.evaluate_artifact(variables, config, metadata, split)
  return {"artifact": artifact_dir, "model_name": metadata.get("model_name"), "split": split,
          "metrics": metrics}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m vtd.evaluate",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--artifact", required=True, help="Artifact directory (from vtd.export).")
  parser.add_argument("--split", default="test", choices=["train", "val", "test"])
  parser.add_argument("--output", required=True, help="Metrics JSON to write.")
  parser.add_argument("--data_path", default=None, help="Override config.data.path.")
  args = parser.parse_args(argv)
  try:
    result = evaluate_artifact(args.artifact, args.split, args.data_path)
  except (UserError, FileNotFoundError) as e:
    sys.exit(f"vtd.evaluate: error: {e}")
  artifacts.write_json_atomic(args.output, result)
  print(results.format_table({result["model_name"]: result["metrics"]},
                             title=f"{args.split} metrics of {args.artifact}"))


if __name__ == "__main__":
  main()
