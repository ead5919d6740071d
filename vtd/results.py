r"""Results: one run's `results.json` (written by every method), and tables over several runs.

  python -m vtd.results runs/tt_sweep/*/results.json
  python -m vtd.results --eval=test --metrics=t2v --models=student_baseline,student_teachtext \
      runs/tt_sweep/*/results.json

results.json (see `report`):
  method      the method that wrote it
  evaluators  name -> {type, split, ..., columns, headers}: what was evaluated, and the order
              and headers of its metric columns (from the evaluator, not from a fixed list)
  models      model (stage) -> evaluator name -> {column: value}
  stages      stage -> its full result (as in its stage.json)

The CLI prints one table per evaluator: rows are models, cells the mean ± std over the files
(ddof = 1, as the official log parser), ready to paste into a README.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np
from etils import epath

from vtd import artifacts
from vtd import cli
from vtd import metric_writers
from vtd.evaluators import common as evaluators_lib

RESULTS_FILE = "results.json"


def report(workdir: Any, config: ml_collections.ConfigDict, stage_results: Mapping[str, Any],
           evaluators: Mapping[str, Any], *, title: str) -> dict[str, Any]:
  """Writes results.json, the run's hparams and test metrics to TensorBoard
  (`<workdir>/tb`), and prints one table per evaluator; returns the results.json payload.

  Stages report their evaluations under "evals" (and the validation metrics of their
  selected checkpoint under "val").
  """
  workdir = epath.Path(workdir)
  described = evaluators_lib.describe(evaluators, config.evals)
  models: dict[str, dict[str, Any]] = {}
  for stage, result in stage_results.items():
    if not isinstance(result, Mapping):
      continue
    evals = dict(result.get("evals", {}))
    if evaluators_lib.VALIDATION in described and result.get("val"):
      evals[evaluators_lib.VALIDATION] = result["val"]
    if evals:
      models[stage] = evals
  payload = {"method": config.method, "evaluators": described, "models": models,
             "stages": dict(stage_results)}
  # Unsorted: the rows keep the pipeline's order (teachers before students, Table 1's order).
  artifacts.write_json_atomic(workdir / RESULTS_FILE, payload, sort_keys=False)
  _to_tensorboard(workdir, config, payload)
  for name in _reported(described):
    print(format_table(payload, name, title=f"{title}: {name} ({workdir})"))
    print()
  return payload


def _reported(described: Mapping[str, Any]) -> list[str]:
  """Evaluators shown by default: all but validation, 'test' first."""
  return sorted((n for n in described if n != evaluators_lib.VALIDATION),
                key=lambda n: (n != "test", n))


def _to_tensorboard(workdir: epath.Path, config, payload: Mapping[str, Any]) -> None:
  """hparams (the flattened config) and every evaluator's metrics, at step 0."""
  writer = metric_writers.MetricWriter(workdir, tensorboard=True, jsonl=False)
  # TensorBoard tag characters ([-\w./]); e.g. the UTS row "student/RMAC+GV" -> RMAC_GV.
  metrics = {re.sub(r"[^-\w./]", "_", f"{ev}/{model}/{col}"): value
             for model, evals in payload["models"].items()
             for ev, per_eval in evals.items() for col, value in per_eval.items()
             if isinstance(value, (int, float))}
  writer.write_hparams(_flatten(config.to_dict()), metrics)
  writer.write_scalars(0, metrics)
  writer.close()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def curves(payload: Mapping[str, Any], kind: str, evaluator: str) -> dict[str, Any]:
  """{model: curves of `kind`} of one evaluator (e.g. 'recall_at_k' of 'test')."""
  out = {}
  for stage, result in payload["stages"].items():
    found = (result.get("eval_curves", {}).get(evaluator, {}).get(kind)
             if isinstance(result, Mapping) else None)
    if found:
      out[stage] = found
  return out


def format_table(payload: Mapping[str, Any], evaluator: str, *, title: str = "",
                 models: Sequence[str] | None = None, prefixes: Sequence[str] = ()) -> str:
  """One run's metrics of `evaluator` as a markdown table."""
  values = {m: {c: [v] for c, v in evals.get(evaluator, {}).items()}
            for m, evals in payload["models"].items()}
  return format_aggregate(values, payload["evaluators"][evaluator], title=title,
                          models=models, prefixes=prefixes)


def _columns(described: Mapping[str, Any], prefixes: Sequence[str]) -> list[tuple[str, str]]:
  pairs = list(zip(described["columns"], described["headers"]))
  return [(c, h) for c, h in pairs if not prefixes or c.split("/")[0] in prefixes]


def format_aggregate(values: Mapping[str, Mapping[str, Sequence[float]]],
                     described: Mapping[str, Any], *, title: str = "",
                     models: Sequence[str] | None = None, prefixes: Sequence[str] = ()) -> str:
  """values[model][column] = per-run list -> markdown table of mean (± std), each column in
  its evaluator's format (`described["formats"]`, default one decimal)."""
  columns = _columns(described, prefixes)
  formats = described.get("formats", {})
  lines = ([title, ""] if title else []) + [
      "| model | " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * (len(columns) + 1)]
  for model in (models or list(values)):
    cols = values.get(model, {})
    if not any(c in cols for c, _ in columns):
      continue
    cells = []
    for c, _ in columns:
      xs = np.asarray(cols.get(c, []), float)
      spec = formats.get(c, ".1f")
      cells.append("-" if xs.size == 0 else f"{xs[0]:{spec}}" if xs.size == 1
                   else f"{xs.mean():{spec}} ± {xs.std(ddof=1):{spec}}")
    lines.append(f"| {model} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def load(path: str) -> dict[str, Any]:
  """A results.json, or a one-line error naming what is wrong with it."""
  try:
    payload = json.loads(epath.Path(path).read_text())
  except FileNotFoundError:
    raise ValueError(f"{path}: no such file") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable results.json ({e})") from None
  if not isinstance(payload, dict) or not {"method", "evaluators", "models"} <= set(payload):
    raise ValueError(f"{path}: not a vtd results.json (written by an older vtd?); re-run "
                     "the pipeline on its workdir to rewrite it")
  return payload


def collect(payloads: Sequence[Mapping[str, Any]], evaluator: str
            ) -> dict[str, dict[str, list[float]]]:
  """values[model][column] = list over runs, for one evaluator."""
  values: dict[str, dict[str, list[float]]] = {}
  for payload in payloads:
    for model, evals in payload["models"].items():
      for column, value in evals.get(evaluator, {}).items():
        values.setdefault(model, {}).setdefault(column, []).append(value)
  return values


def main(argv: Sequence[str] | None = None) -> None:
  parser = cli.parser("python -m vtd.results",
                      "Mean ± std tables over results.json files (one per run or seed).",
                      "python -m vtd.results --eval=test --metrics=t2v "
                      "runs/tt_sweep/*/results.json")
  cli.add(parser, "files", nargs="+", help="results.json files of one method")
  cli.add(parser, "--eval", default="",
                      help="comma-separated evaluators to show (default: all but val)")
  cli.add(parser, "--models", default="", help="comma-separated rows, in this order")
  cli.add(parser, "--metrics", default="",
                      help="comma-separated column groups, e.g. t2v (default: all)")
  args = parser.parse_args(argv)
  try:
    payloads = [load(f) for f in args.files]
  except ValueError as e:
    parser.error(str(e))
  methods = sorted({p["method"] for p in payloads})
  if len(methods) > 1:
    parser.error(f"the files come from different methods ({', '.join(methods)}); give the "
                 "results of one method at a time")
  described = payloads[0]["evaluators"]
  names = [n.strip() for n in args.eval.split(",") if n.strip()] or _reported(described)
  unknown = [n for n in names if n not in described]
  if unknown:
    parser.error(f"no evaluator {unknown} in the files (have {sorted(described)})")
  prefixes = [p.strip() for p in args.metrics.split(",") if p.strip()]
  groups = {c.split("/")[0] for n in names for c in described[n]["columns"]}
  if set(prefixes) - groups:
    parser.error(f"no metric group {sorted(set(prefixes) - groups)} (have {sorted(groups)})")
  models = [m.strip() for m in args.models.split(",") if m.strip()] or None
  # Evaluators may score different models (segmentation: P / J of the mask predictors,
  # mask-scoring quality of EvalSeg-Net): a requested row must be in one of them, and a table
  # without any requested row or column is left out.
  per_eval = {name: collect(payloads, name) for name in names}
  have = sorted({m for values in per_eval.values() for m in values})
  missing = [m for m in models or [] if m not in have]
  if missing:
    parser.error(f"no model {missing} with {' / '.join(repr(n) for n in names)} metrics "
                 f"(have {have})")
  for name, values in per_eval.items():
    if not _columns(described[name], prefixes) or (models and not set(models) & set(values)):
      continue
    print(format_aggregate(values, described[name], models=models, prefixes=prefixes,
                           title=f"{name} ({described[name].get('split', '')}), mean ± std "
                                 f"over {len(payloads)} run(s)"))
    print()


if __name__ == "__main__":
  main()
