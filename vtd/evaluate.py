r"""Evaluate an exported model on a split, without any training code or state.

  python -m vtd.export --workdir=runs/tt --model=student_teachtext --out=exports/tt_student
  python -m vtd.evaluate --artifact=exports/tt_student --split=test --output=metrics.json

Runs the evaluators of the artifact's own config (`config.evals`, all but `val`) that score
its kind of model (segmentation: P / J / CorLoc of a mask predictor, mask-scoring quality of
EvalSeg-Net), pointed at `--split`. The data are those the artifact's config names (the embedded dataset is regenerated
deterministically); `--data_path` points a model trained on files at another copy of them.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from vtd import artifacts
from vtd import cli
from vtd import results
from vtd.errors import UserError
from vtd.evaluators import common as evaluators_lib

# Each method's `vtd.<method>.evaluate.load_for_evaluation(variables, config, metadata,
# data_path)` returns (model, context) for its evaluators.
METHODS = ("teachtext", "segmentation", "uts")


def evaluate_artifact(artifact_dir: str, split: str, data_path: str | None = None
                      ) -> dict[str, Any]:
  """{'artifact', 'model_name', 'split', 'evaluators', 'metrics'} of an exported model."""
  try:
    variables, config, metadata = artifacts.load_artifact(artifact_dir)
  except FileNotFoundError as e:
    raise UserError(str(e)) from None
  method = metadata.get("method")
  if method not in METHODS:
    raise UserError(f"{artifact_dir}: unknown method {method!r} (expected one of {METHODS})")
  module = importlib.import_module(f"vtd.{method}.evaluate")
  evals_cfg = evaluators_lib.on_split(config.evals, split)
  evaluators = evaluators_lib.from_config(evals_cfg)
  model, context = module.load_for_evaluation(variables, config, metadata, data_path)
  name = metadata.get("model_name")
  # A method may score one artifact as several rows (UTS: {retrieval method: model}).
  models = ({f"{name}/{k}": m for k, m in model.items()} if isinstance(model, Mapping)
            else {name: model})
  evaluators = {n: e for n, e in evaluators.items()
                if any(evaluators_lib.accepts(e, m) for m in models.values())}
  if not evaluators:
    raise UserError(f"{artifact_dir}: none of the evaluators of its config.evals scores a "
                    f"{metadata.get('kind') or method} model; re-export it from a workdir of "
                    "this vtd")
  rows = {row: evaluators_lib.to_json(evaluators_lib.run_all(evaluators, m, context))
          for row, m in models.items()}
  out = {"artifact": artifact_dir, "model_name": name, "split": split,
         "evaluators": evaluators_lib.describe(evaluators, evals_cfg)}
  if isinstance(model, Mapping):
    return {**out, "rows": rows}
  return {**out, "metrics": rows[name]}


def main(argv: list[str] | None = None) -> None:
  parser = cli.parser("python -m vtd.evaluate", __doc__.split("\n")[0],
                      "python -m vtd.evaluate --artifact=exports/tt_student --split=test "
                      "--output=metrics.json")
  cli.add(parser, "--artifact", required=True, help="Artifact directory (from vtd.export).")
  cli.add(parser, "--split", default="test", choices=["train", "val", "test"])
  cli.add(parser, "--output", required=True, help="Metrics JSON to write.")
  cli.add(parser, "--data_path", default=None,
                      help="Where the data are now, if not where the config says.")
  args = parser.parse_args(argv)
  try:
    result = evaluate_artifact(args.artifact, args.split, args.data_path)
  except UserError as e:
    parser.error(str(e))
  artifacts.write_json_atomic(args.output, result)
  rows = result.get("rows", {result["model_name"]: result.get("metrics")})
  payload = {"models": {row: metrics["evals"] for row, metrics in rows.items()},
             "evaluators": result["evaluators"]}
  for name in result["evaluators"]:
    print(results.format_table(payload, name,
                               title=f"{name} on the {args.split} split of {args.artifact}"))


if __name__ == "__main__":
  main()
