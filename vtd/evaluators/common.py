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
  evaluator.interface       (optional) the method a model must have to be scored by it, e.g.
                            "masks" (segmentation) or "score_candidates" (mask_scoring); the
                            evaluators run on a model are those whose interface it has
                            (`for_model`); without the attribute, every model is scored
  evaluator.formats         (optional) {column: format spec} for tables, e.g. {"r": ".2f"}
                            (default ".1f")

`model` is what the method trains (a TeachText scorer, a segmentation predictor or mask scorer,
UTS feature extractors) and `context` the method's data; each evaluator module documents what
it needs of both. Adding an evaluator touches its module and a config, nothing else:
pipelines run what the config lists, and `results.json` / `python -m vtd.results` take the
column names from here.
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
  `python -m vtd.evaluate --split=...` runs on an exported model.

  Entries that differ only in their split (a val and a test copy of one evaluator) would give
  the same numbers twice; one is kept, the one already on `split` (else the first).
  """
  plain = evals_cfg.to_dict() if hasattr(evals_cfg, "to_dict") else dict(evals_cfg)
  chosen: dict[str, str] = {}  # settings without the split -> the entry kept for them
  for name, spec in plain.items():
    if name == VALIDATION or "split" not in spec:
      continue
    settings = repr(sorted((k, v) for k, v in spec.items() if k != "split"))
    if settings not in chosen or (spec["split"] == split
                                  and plain[chosen[settings]]["split"] != split):
      chosen[settings] = name
  kept = set(chosen.values())
  return {name: {**spec, "split": split} for name, spec in plain.items() if name in kept}


def reporting(evals_cfg) -> tuple[str, ...]:
  """Names of the evaluators whose changes only re-evaluate (all but `val`)."""
  return tuple(n for n in evals_cfg if n != VALIDATION)


def describe(evaluators: Mapping[str, Evaluator], evals_cfg) -> dict[str, dict[str, Any]]:
  """{name: {type, columns, headers, [formats], **settings}} for results.json (what
  vtd.results reads)."""
  plain = evals_cfg.to_dict() if hasattr(evals_cfg, "to_dict") else dict(evals_cfg)
  out = {}
  for name, ev in evaluators.items():
    out[name] = {**plain[name], "columns": list(ev.columns), "headers": list(ev.headers)}
    if getattr(ev, "formats", None):
      out[name]["formats"] = dict(ev.formats)
  return out


def accepts(evaluator: Evaluator, model: Any) -> bool:
  """Whether `evaluator` scores `model`: it has the evaluator's `interface` (if it names one)."""
  interface = getattr(evaluator, "interface", None)
  return interface is None or hasattr(model, interface)


def for_model(evaluators: Mapping[str, Evaluator], model: Any) -> dict[str, Evaluator]:
  """The evaluators of `evaluators` that score `model` (e.g. P / J for a mask predictor,
  mask-scoring quality for EvalSeg-Net)."""
  return {name: ev for name, ev in evaluators.items() if accepts(ev, model)}


def config_keys(evals_cfg, interface: str) -> tuple[str, ...]:
  """`evals.<name>` of the enabled evaluators whose interface is `interface`: the evaluation
  keys of a stage whose model has that interface (a change to another evaluator leaves the
  stage alone)."""
  return tuple(f"evals.{name}" for name, ev in from_config(evals_cfg).items()
               if getattr(ev, "interface", None) == interface)


def run_all(evaluators: Mapping[str, Evaluator], model: Any, context: Any
            ) -> dict[str, EvalResult]:
  """{name: result} of the evaluators that score `model` (`for_model`)."""
  return {name: ev.run(model, context) for name, ev in for_model(evaluators, model).items()}


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
