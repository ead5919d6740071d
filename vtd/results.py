"""Results tables: one run's `results.json`, or mean +- std over several (seeds).

  python -m vtd.results [--models=a,b] [--directions=t2v,v2t] runs/sweep/*/results.json

Every method's results.json maps model -> {split: metrics}. Metrics are either grouped by
retrieval direction (TeachText: {t2v: {R1: ...}, v2t: {...}}; one table per direction, with
R@1/5/10/50, MdR, MnR and the geometric mean of R@1/5/10) or flat (segmentation {P, J,
CorLoc}, UTS {DSVR, CSVR, ISVR}; one table, columns in FLAT_ORDER, then file order). Cells are mean +- std
(ddof = 1, as the official log parser), ready to paste into the README. Entries without the
split (run descriptions, stage bookkeeping) are ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Mapping, Sequence

import numpy as np

COLUMNS = ("R1", "R5", "R10", "R50", "MdR", "MnR", "geometric_mean_R1-R5-R10")
HEADERS = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "Geom")
FLAT = ""  # The group of flat (not per-direction) metrics.
# Column order of the flat tables (results.json is written with sorted keys); others follow.
FLAT_ORDER = ("P", "J", "CorLoc", "DSVR", "CSVR", "ISVR")


def format_table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]], *,
                 title: str = "", directions: Sequence[str] = ("t2v", "v2t")) -> str:
  """metrics[model][direction][column] -> markdown table (one run)."""
  return format_aggregate({m: {d: {c: [v] for c, v in cols.items()} for d, cols in dirs.items()}
                           for m, dirs in metrics.items()}, title=title, directions=directions)


def format_aggregate(values: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]], *,
                     title: str = "", directions: Sequence[str] = ("t2v", "v2t")) -> str:
  """values[model][direction][column] = per-seed list -> markdown table of mean (+- std)."""
  def columns(d):
    if d != FLAT:
      return list(zip(COLUMNS, HEADERS))
    seen = dict.fromkeys(c for dirs in values.values() for c in dirs.get(FLAT, {}))
    rank = lambda c: FLAT_ORDER.index(c) if c in FLAT_ORDER else len(FLAT_ORDER)
    return [(c, c) for c in sorted(seen, key=rank)]

  header = ["model"] + [f"{d} {h}".strip() for d in directions for _, h in columns(d)]
  lines = ([f"{title}", ""] if title else []) + [
      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for model, dirs in values.items():
    if not any(d in dirs for d in directions):
      continue
    cells = [model]
    for d in directions:
      for c, _ in columns(d):
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
  """Reads several results.json files -> values[model][direction or FLAT][column] lists."""
  values: dict[str, Any] = {}
  for path in results_files:
    with open(path, encoding="utf-8") as f:
      run = json.load(f)
    for model, res in run.items():
      if not isinstance(res, dict) or not isinstance(res.get(split), dict):
        continue
      for key, val in res[split].items():
        group, cols = (key, val) if isinstance(val, dict) else (FLAT, {key: val})
        for c, v in cols.items():
          values.setdefault(model, {}).setdefault(group, {}).setdefault(c, []).append(v)
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
  groups = [FLAT] if any(FLAT in dirs for dirs in values.values()) else []
  groups += [d for d in args.directions.split(",") if any(d in v for v in values.values())]
  for d in groups:
    print(format_aggregate(values, directions=(d,), title=(
        f"{args.split} {d or 'metrics'}, mean ± std over {len(args.files)} run(s)")))
    print()


if __name__ == "__main__":
  main()
