"""TeachText ablation: every extension against the CE baseline, over seeds, as one table.

  python launch/teachtext_ablation.py --workdir_root=runs/tt_ablation --run      # train + table
  python launch/teachtext_ablation.py --workdir_root=runs/tt_ablation            # table only
  python launch/teachtext_ablation.py ... -- --config.train.num_epochs=10        # extra flags

Per seed, a `base` run trains the three teachers (all video experts), the CE baseline student
and the TeachText student, each also evaluated with QB-Norm. The other runs reuse the base
run's teachers (`--config.teachers.artifact_dirs`) and the same student seed, so every row of
a seed starts from the same initialisation and data order (paired comparisons):

  vmd       video-modality distillation: both students see 2 of the 4 experts
            (appearance, scene); the distilled one learns from the 4-expert teachers
  denoise   TeachText student trained without the captions the teachers rank worst
            (own video at rank >= 100, the reference's recalled "less100" rule)
  denoise_frac10, denoise_frac  the same, dropping the worst 10 % / 20 % of the training
            captions
  caption   TeachText + caption distillation (within-modality, weight 1, temperature 5)
  rkd       RKD (distance + angle, on text embeddings) instead of TeachText's L_d

All runs use the embedded data with 20 % of the training captions replaced by another
video's caption (`wrong_caption_fraction=0.2`), so that denoising has something to find; the
injected labels are only used to report its precision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Sequence

import numpy as np

from vtd import cli

CONFIG = "configs/teachtext.py"
COMMON = ["--config.data.synthetic.wrong_caption_fraction=0.2"]
REDUCED_EXPERTS = "appearance,scene"
RUNS = {
    "base": ["--config.evals.qbnorm.enabled=true"],
    "vmd": ["--config.student.experts=" + REDUCED_EXPERTS],
    "denoise": ["--config.denoise.max_rank=100", "--config.student.train_baseline=false"],
    "denoise_frac": ["--config.denoise.fraction=0.2", "--config.student.train_baseline=false"],
    "denoise_frac10": ["--config.denoise.fraction=0.1", "--config.student.train_baseline=false"],
    "caption": ["--config.within.caption_weight=1.0", "--config.student.train_baseline=false"],
    "rkd": ["--config.distill.method=rkd", "--config.student.train_baseline=false",
            "--config.student.name=student_rkd"],
}
# (row label, run, model, evaluator)
ROWS = (
    ("CE baseline (L_r only)", "base", "student_baseline", "test"),
    ("TeachText", "base", "student_teachtext", "test"),
    ("TeachText + denoising (rank >= 100)", "denoise", "student_teachtext", "test"),
    ("TeachText + denoising (worst 10 %)", "denoise_frac10", "student_teachtext", "test"),
    ("TeachText + denoising (worst 20 %)", "denoise_frac", "student_teachtext", "test"),
    ("TeachText + caption distillation", "caption", "student_teachtext", "test"),
    ("TeachText + QB-Norm", "base", "student_teachtext", "qbnorm"),
    ("CE baseline + QB-Norm", "base", "student_baseline", "qbnorm"),
    ("RKD instead of TeachText", "rkd", "student_rkd", "test"),
    ("2-expert CE baseline", "vmd", "student_baseline", "test"),
    ("2-expert student + video-modality distillation", "vmd", "student_teachtext", "test"),
)
COLUMNS = (("R1", "R@1"), ("R5", "R@5"), ("R10", "R@10"), ("MdR", "MdR"),
           ("geometric_mean_R1-R5-R10", "Geom"))


def commands(root: str, seed: int, extra: Sequence[str], python: str,
             config: str = CONFIG) -> list[list[str]]:
  """The vtd.main command lines of one seed, base run first."""
  base = os.path.join(root, f"seed={seed}", "base")
  teachers = ",".join(os.path.join(base, f"teacher_{e}", "model") for e in ("w2v", "gpt", "gpt_xl"))
  out = []
  for name, flags in RUNS.items():
    reuse = [] if name == "base" else [f"--config.teachers.artifact_dirs={teachers}"]
    out.append([python, "-m", "vtd.main", f"--config={config}",
                f"--workdir={os.path.join(root, f'seed={seed}', name)}", f"--config.seed={seed}",
                *COMMON, *flags, *reuse, *extra])
  return out


def _cell(xs: list[float]) -> str:
  if not xs:
    return "-"
  if len(xs) == 1:
    return f"{xs[0]:.1f}"
  return f"{np.mean(xs):.1f} ± {np.std(xs, ddof=1):.1f}"


def table(root: str, seeds: Sequence[int]) -> str:
  """The ablation table (t2v, mean ± std over the seeds found) plus denoising and cost lines."""
  runs: dict[tuple[int, str], Any] = {}
  for seed in seeds:
    for name in RUNS:
      path = os.path.join(root, f"seed={seed}", name, "results.json")
      if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
          runs[(seed, name)] = json.load(f)
  lines = ["| row | " + " | ".join(h for _, h in COLUMNS) + " | video dims | seeds |",
           "|---" * (len(COLUMNS) + 3) + "|"]
  for label, run, model, key in ROWS:
    found = [(runs[(s, run)]["models"][model][key], runs[(s, run)]["stages"][model])
             for s in seeds if (s, run) in runs
             and key in runs[(s, run)]["models"].get(model, {})]
    cells = [_cell([m[f"t2v/{c}"] for m, _ in found]) for c, _ in COLUMNS]
    dims = {r["test_cost"]["video_input_dims"] for _, r in found}
    lines.append(f"| {label} | " + " | ".join(cells) +
                 f" | {'/'.join(map(str, sorted(dims))) or '-'} | {len(found)} |")
  for run, rule in (("denoise", "rank >= 100"), ("denoise_frac10", "worst 10 %"),
                    ("denoise_frac", "worst 20 %")):
    removal = [runs[(s, run)]["stages"]["denoise"]["removal"] for s in seeds
               if (s, run) in runs]
    if removal:
      lines += ["", f"Denoising ({rule}): removed " + _cell([r["removed"] for r in removal]) +
                " of " + _cell([r["captions"] for r in removal]) + " training captions; "
                "precision " + _cell([100 * r["precision"] for r in removal]) + " %, recall " +
                _cell([100 * r["recall"] for r in removal]) + " % (noise " +
                _cell([100 * r["noise_rate_before"] for r in removal]) + " % -> " +
                _cell([100 * r["noise_rate_after"] for r in removal]) + " %)."]
  costs = [(runs[(s, "vmd")]["stages"]["student_teachtext"]["test_cost"],
            runs[(s, "base")]["stages"]["student_teachtext"]["test_cost"]) for s in seeds
           if (s, "vmd") in runs and (s, "base") in runs]
  if costs:
    lines += ["", "Video encoder at test time (2 vs 4 experts): parameters " +
              f"{costs[0][0]['video_params']} vs {costs[0][1]['video_params']}; ms per 1,000 "
              "videos " + _cell([c[0]["video_encode_ms_per_1k"] for c in costs]) + " vs " +
              _cell([c[1]["video_encode_ms_per_1k"] for c in costs]) + "."]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = cli.parser("launch/teachtext_ablation.py", __doc__.split("\n")[0],
                      "python launch/teachtext_ablation.py --workdir_root=runs/tt_ablation --run")
  cli.add(parser, "--workdir_root", required=True, help="one folder per seed and run below it")
  cli.add(parser, "--seeds", default="0,1,2", help="comma-separated seeds")
  cli.add(parser, "--run", action="store_true", help="train (finished stages are reused)")
  cli.add(parser, "--python", default=sys.executable, help="interpreter for vtd.main")
  cli.add(parser, "--config", default=CONFIG, help="config (preset) every run starts from")
  args, extra = parser.parse_known_args(argv)
  extra = [a for a in extra if a != "--"]
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  if args.run:
    for seed in seeds:
      for cmd in commands(args.workdir_root, seed, extra, args.python, args.config):
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
  print(table(args.workdir_root, seeds))


if __name__ == "__main__":
  main()
