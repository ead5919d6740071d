"""An exported UTS network (teacher, teacher_random or student) as `python -m vtd.evaluate` sees it.

Evaluating a network means extracting its frame features over the collection, running the
three retrieval methods (GV, RMAC+GV, FRP) and scoring each with the `fivr` evaluators. The
network's own stage does not read the retrieval settings (LSH, search backend, evaluators),
so `vtd.export` completes the artifact's config with those the workdir's retrieval stage used
(`export_config`): the exported model then reproduces that run's rows.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import ml_collections
from etils import epath

from vtd.errors import UserError
from vtd.uts import extract as extract_lib
from vtd.uts import input_pipeline
from vtd.uts import retrieval as retrieval_lib
from vtd.uts import trainer

RETRIEVAL_STAGE = "retrieval"
# Config groups an exported network takes from the retrieval stage's evaluation config.
FROM_RETRIEVAL = ("seed", "lsh", "retrieval", "evals")


def export_config(config: ml_collections.ConfigDict, metadata: dict[str, Any],
                  workdir: Any) -> ml_collections.ConfigDict:
  """The artifact's config plus the retrieval settings of `<workdir>/retrieval` (for vtd.export)."""
  del metadata
  path = epath.Path(workdir) / RETRIEVAL_STAGE / trainer.EVAL_CONFIG
  try:
    used = json.loads(path.read_text())
  except FileNotFoundError:
    raise UserError(f"{path} not found: a UTS network is exported with the retrieval settings "
                    "it was scored with; run the pipeline to its end first") from None
  merged = config.to_dict()
  for key in FROM_RETRIEVAL:
    merged[key] = used[key]
  return ml_collections.ConfigDict(merged)


def load_for_evaluation(variables: Any, config: ml_collections.ConfigDict,
                        metadata: dict[str, Any], data_path: str | None = None
                        ) -> tuple[dict[str, retrieval_lib.MethodScores], Any]:
  """({method: MethodScores}, the collection) of an exported network: one row per method."""
  for key in FROM_RETRIEVAL:
    if key not in config:
      raise UserError(f"the artifact's config has no {key!r}: export it with python -m "
                      "vtd.export, which adds the retrieval settings")
  if data_path:
    config.data.source, config.data.root = "directory", data_path
  collection = input_pipeline.load_collection(config)
  embed = trainer.embed_fn(config, metadata["model_name"], variables)
  with tempfile.TemporaryDirectory(prefix="vtd-uts-eval-") as shards:
    features = extract_lib.extract(collection, embed, shards,
                                   shard_videos=config.extract.shard_videos,
                                   batch_frames=config.extract.batch_frames)
  scores, _ = retrieval_lib.retrieve(config, collection, features,
                                     trainer.stage_seed(config.seed, RETRIEVAL_STAGE))
  return scores, collection
