r"""Export a trained model as a self-contained artifact.

  python -m vtd.export --workdir=runs/tt --model=student_teachtext --out=exports/tt_student

copies `<workdir>/<model>/model` (params + config + metadata, no optimiser or training state)
to `--out`, recording where it came from. `python -m vtd.evaluate` reads it back. Every
finished stage that trained a model can be exported; `--model=list` lists them.
"""

from __future__ import annotations

import importlib
from typing import Any

from etils import epath

from vtd import artifacts
from vtd import cli
from vtd import stages
from vtd.errors import UserError

MODEL_DIR = "model"


def exportable(workdir: Any) -> list[str]:
  """Names of the finished stages of `workdir` that hold a model artifact."""
  root = epath.Path(workdir)
  if not root.is_dir():
    return []
  found = []
  # Stage names have one or two levels (teacher_w2v, gen1/basic_unet).
  metas = [m for pattern in ("*", "*/*") for m in root.glob(f"{pattern}/{MODEL_DIR}/"
                                                              f"{artifacts.METADATA}")]
  for meta in sorted(metas):
    stage_dir = meta.parent.parent
    name = stages.relative_to(stage_dir, root)
    if not name.startswith(stages.SUPERSEDED_DIR) and stages.is_done(stage_dir):
      found.append(name)
  return found


def export(workdir: str, model: str, out: str) -> dict:
  """Writes the artifact of stage `model` of `workdir` to `out`; returns its metadata."""
  available = exportable(workdir)
  if model not in available:
    raise UserError(f"no exportable model {model!r} in {workdir}; exportable: "
                    f"{', '.join(available) or 'none (is the run finished?)'}")
  stage_dir = epath.Path(workdir) / model
  variables, config, metadata = artifacts.load_artifact(stage_dir / MODEL_DIR)
  config = _completed_config(config, metadata, workdir)
  metadata = {**metadata, "exported_from": str(stage_dir.resolve())}
  metadata.pop("shapes", None)
  artifacts.save_artifact(out, variables, config, metadata)
  return metadata


def _completed_config(config, metadata: dict, workdir: str):
  """The artifact's config, completed by the method where its evaluation needs more than the
  stage that trained it read (`vtd.<method>.evaluate.export_config`, e.g. UTS: the retrieval
  settings of the run)."""
  try:
    module = importlib.import_module(f"vtd.{metadata.get('method')}.evaluate")
  except ModuleNotFoundError:
    return config
  complete = getattr(module, "export_config", None)
  return complete(config, metadata, workdir) if complete else config


def main(argv: list[str] | None = None) -> None:
  parser = cli.parser("python -m vtd.export", __doc__.split("\n")[0],
                      "python -m vtd.export --workdir=runs/tt --model=student_teachtext "
                      "--out=exports/tt_student")
  cli.add(parser, "--workdir", required=True, help="The training run's workdir.")
  cli.add(parser, "--model", required=True,
                      help="Stage to export, e.g. student_teachtext; 'list' lists them.")
  cli.add(parser, "--out", default="", help="Artifact directory to write.")
  args = parser.parse_args(argv)
  if args.model == "list":
    print("\n".join(exportable(args.workdir)))
    return
  if not args.out:
    parser.error("--out is required (the artifact directory to write)")
  try:
    meta = export(args.workdir, args.model, args.out)
  except UserError as e:
    parser.error(str(e))
  print(f"exported {meta['model_name']} (step {meta.get('step')}, {meta['num_params']} params) "
        f"to {args.out}")


if __name__ == "__main__":
  main()
