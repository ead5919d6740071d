"""Evaluators by config, after big_vision's `evaluators/common.py`.

A method's config lists what to evaluate:

  config.evals.test = dict(type="retrieval", split="test")
  config.evals.qbnorm = dict(type="qbnorm", split="test", bank="train", beta=20.0)

`type` names a module `vtd.evaluators.<type>`; its class `Evaluator` is built with the other
fields as keyword arguments (plus `enabled`, consumed here: False skips it). Every evaluator has
one interface:

  evaluator.columns         ordered metric names, e.g. ("t2v/R1", ..., "v2t/MnR")
  evaluator.headers         the same as short table headers ("t2v R@1", ...)
  evaluator.run(model, context) -> EvalResult(metrics={name: float}, curves={...})

`model` is what the method trains (a TeachText scorer, a segmentation predictor, UTS feature
extractors) and `context` the method's data; each evaluator module documents what it needs of
both. Adding an evaluator touches its module and a config, nothing else: pipelines run what the
config lists, and `results.json` / `python -m vtd.results` take the column names from here.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping, Protocol, Sequence

import ml_collections

from vtd.errors import UserError

VALIDATION = "val"  # The evaluator that selects checkpoints during training.


@dataclasses.dataclass
class EvalResult:
  """metrics: flat {column: value}; curves: JSON-able series for plots; info: other facts
  worth keeping next to the metrics (e.g. the querybank size)."""
  metrics: dict[str, float]
  curves: dict[str, Any] = dataclasses.field(default_factory=dict)
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Evaluator(Protocol):
  columns: Sequence[str]
  headers: Sequence[str]

  def run(self, model: Any, context: Any) -> EvalResult:
    ...


def from_config(evals_cfg: ml_collections.ConfigDict | Mapping[str, Any],
                names: Sequence[str] | None = None) -> dict[str, Evaluator]:
  """{name: evaluator} for the enabled entries of `config.evals` (in config order)."""
  plain = evals_cfg.to_dict() if hasattr(evals_cfg, "to_dict") else dict(evals_cfg)
  out = {}
  for name, spec in plain.items():
    if names is not None and name not in names:
      continue
    spec = dict(spec)
    kind = spec.pop("type", "")
    if not spec.pop("enabled", True):
      continue
    try:
      module = importlib.import_module(f"vtd.evaluators.{kind}")
    except ModuleNotFoundError:
      raise UserError(f"config.evals.{name}.type={kind!r} is not an evaluator (no module "
                      f"vtd.evaluators.{kind}); see vtd/evaluators/") from None
    try:
      out[name] = module.Evaluator(**spec)
    except TypeError as e:
      raise UserError(f"config.evals.{name}: {e}; see vtd.evaluators.{kind}.Evaluator") from None
  return out


def on_split(evals_cfg, split: str) -> dict[str, dict[str, Any]]:
  """The reporting evaluators of `config.evals` (all but `val`), pointed at `split`: what
  `python -m vtd.evaluate --split=...` runs on an exported model."""
  plain = evals_cfg.to_dict() if hasattr(evals_cfg, "to_dict") else dict(evals_cfg)
  return {name: {**spec, "split": split} for name, spec in plain.items()
          if name != VALIDATION and "split" in spec}


def reporting(evals_cfg) -> tuple[str, ...]:
  """Names of the evaluators whose changes only re-evaluate (all but `val`)."""
  return tuple(n for n in evals_cfg if n != VALIDATION)


def describe(evaluators: Mapping[str, Evaluator], evals_cfg) -> dict[str, dict[str, Any]]:
  """{name: {type, columns, headers, **settings}} for results.json (what vtd.results reads)."""
  plain = evals_cfg.to_dict() if hasattr(evals_cfg, "to_dict") else dict(evals_cfg)
  return {name: {**plain[name], "columns": list(ev.columns), "headers": list(ev.headers)}
          for name, ev in evaluators.items()}


def run_all(evaluators: Mapping[str, Evaluator], model: Any, context: Any
            ) -> dict[str, EvalResult]:
  return {name: ev.run(model, context) for name, ev in evaluators.items()}


def to_json(results: Mapping[str, EvalResult]) -> dict[str, Any]:
  """A stage result's part for its evaluations: {"evals": {name: metrics}, "eval_curves":
  {name: curves}, "eval_info": {name: info}} (empty parts left out)."""
  out = {"evals": {n: r.metrics for n, r in results.items()}}
  curves = {n: r.curves for n, r in results.items() if r.curves}
  info = {n: r.info for n, r in results.items() if r.info}
  if curves:
    out["eval_curves"] = curves
  if info:
    out["eval_info"] = info
  return out
