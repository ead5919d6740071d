"""Results tables: one run's `results.json`, or mean +- std over several (seeds).

  python -m vtd.results [--models=a,b] [--directions=t2v,v2t] runs/sweep/*/results.json

prints, per direction, each model's R@1/5/10/50, MdR, MnR and the geometric mean of R@1/5/10
as mean +- std (ddof = 1, as the official log parser), ready to paste into the README.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Mapping, Sequence

import numpy as np

COLUMNS = ("R1", "R5", "R10", "R50", "MdR", "MnR", "geometric_mean_R1-R5-R10")
HEADERS = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "Geom")


def format_table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]], *,
                 title: str = "", directions: Sequence[str] = ("t2v", "v2t")) -> str:
  """metrics[model][direction][column] -> markdown table (one run)."""
  return format_aggregate({m: {d: {c: [v] for c, v in cols.items()} for d, cols in dirs.items()}
                           for m, dirs in metrics.items()}, title=title, directions=directions)


def format_aggregate(values: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]], *,
                     title: str = "", directions: Sequence[str] = ("t2v", "v2t")) -> str:
  """values[model][direction][column] = per-seed list -> markdown table of mean (+- std)."""
  header = ["model"] + [f"{d} {h}" for d in directions for h in HEADERS]
  lines = ([f"{title}", ""] if title else []) + [
      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for model, dirs in values.items():
    cells = [model]
    for d in directions:
      for c in COLUMNS:
        xs = np.asarray(dirs.get(d, {}).get(c, []), float)
        if xs.size == 0:
          cells.append("-")
        elif xs.size == 1:
          cells.append(f"{xs[0]:.1f}")
        else:
          cells.append(f"{xs.mean():.1f} ± {xs.std(ddof=1):.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def collect(results_files: Sequence[str], split: str = "test"
            ) -> dict[str, dict[str, dict[str, list[float]]]]:
  """Reads several results.json files -> values[model][direction][column] lists."""
  values: dict[str, Any] = {}
  for path in results_files:
    with open(path, encoding="utf-8") as f:
      run = json.load(f)
    for model, res in run.items():
      for d, cols in res[split].items():
        for c, v in cols.items():
          values.setdefault(model, {}).setdefault(d, {}).setdefault(c, []).append(v)
  return values


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m vtd.results",
                                   description="mean ± std table over results.json files")
  parser.add_argument("files", nargs="+", help="results.json files (one per seed/run)")
  parser.add_argument("--models", default="",
                      help="comma-separated rows to show, in this order (default: all)")
  parser.add_argument("--directions", default="t2v,v2t",
                      help="comma-separated retrieval directions; one table each")
  parser.add_argument("--split", default="test")
  args = parser.parse_args(argv)
  values = collect(args.files, args.split)
  if args.models:
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in values]
    if unknown:
      sys.exit(f"vtd.results: error: no model {unknown} in the files (have {sorted(values)})")
    values = {m: values[m] for m in wanted}
  for d in args.directions.split(","):
    print(format_aggregate(values, directions=(d,), title=(
        f"{args.split} {d}, mean ± std over {len(args.files)} run(s)")))
    print()


if __name__ == "__main__":
  main()
