"""Stage graphs: every method's pipeline is a list of `Stage`s that `run_pipeline` runs.

A stage is a directory under the workdir (`Stage.name`, e.g. `teacher_w2v` or `gen1/evalseg`).
It declares what its result depends on:
  * `config_keys`: the config subtrees it reads (dotted paths, e.g. `optim` or `data.synthetic`);
  * `eval_keys`: config subtrees read only to *evaluate* (a change re-evaluates, never retrains);
  * `inputs`: the stages whose outputs it reads;
  * `uses_data`: whether it reads the method's input data (fingerprinted once per run).
The stage function sees only a *view* of the config holding those subtrees (plus `method`,
`runtime`, `distributed`), so reading an undeclared key fails loudly instead of silently going
stale.

Provenance. Before a stage starts, `provenance.json` records the fingerprints of its declared
config values (minus `NON_RESULT_KEYS`: logging and checkpoint cadence), of its inputs and of
the data. `stage.json` is written last, with the provenance and the stage's JSON result, so its
presence means every output is complete. On a later run, per stage:
  * same fingerprints                -> reused;
  * only evaluation keys differ      -> the stage runs again in place: its training loop
                                        resumes at its last step, so only evaluation is redone;
  * anything else differs            -> the old directory is moved to
                                        `<workdir>/superseded/<time>/<name>` (never deleted)
                                        and the stage reruns; stages downstream see a changed
                                        input and rerun too;
  * an unfinished stage, same fingerprints -> resumes from its checkpoints.
Each decision is one console line naming the differing keys. `runtime.reuse=strict` stops with
that line instead of rerunning anything.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import hashlib
import json
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
from absl import logging
from etils import epath

from vtd import artifacts
from vtd import sharding
from vtd.errors import UserError

DONE_FILE = "stage.json"
STARTED_FILE = "provenance.json"
SUPERSEDED_DIR = "superseded"
# Visible to every stage, never part of a fingerprint (process-level settings).
ALWAYS_VISIBLE = ("method", "runtime", "distributed")
# Keys that cannot change any result: they are left out of every fingerprint.
NON_RESULT_KEYS = ("runtime", "distributed", "train.log_every_steps",
                   "train.checkpoint_every_steps", "train.keep_last",
                   "train.async_checkpointing", "train.tensorboard")
REUSE_MODES = ("changed", "strict")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One node of a method's stage graph.

  Attributes:
    name: directory under the workdir ('/' allowed); unique in the graph.
    run: ctx -> JSON-serialisable result dict (written to stage.json).
    config_keys: dotted config paths whose values the result depends on.
    eval_keys: dotted config paths read only by evaluation.
    inputs: names of earlier stages whose outputs `run` reads.
    uses_data: the result depends on the method's input data.
    extra: more JSON that the result depends on (e.g. fingerprints of external artifacts).
    title: a few words for the console ("teacher, text embedding w2v").
  """
  name: str
  run: Callable[["StageContext"], dict[str, Any]]
  config_keys: tuple[str, ...]
  eval_keys: tuple[str, ...] = ()
  inputs: tuple[str, ...] = ()
  uses_data: bool = True
  extra: Any = None
  title: str = ""


@dataclasses.dataclass
class StageContext:
  """What a running stage gets.

  Attributes:
    name: the stage's name.
    dir: its directory (an `epath.Path`; local or an object store).
    workdir: the run's workdir.
    config: a locked view of the config with only the declared keys.
    inputs: name -> result dict of each declared input stage.
  """
  name: str
  dir: epath.Path
  workdir: epath.Path
  config: ml_collections.ConfigDict
  inputs: dict[str, dict[str, Any]]

  def input_dir(self, name: str) -> epath.Path:
    """Directory of a declared input stage."""
    if name not in self.inputs:
      raise KeyError(f"stage {self.name} did not declare input {name!r}")
    return self.workdir / name

  def rel(self, path: Any) -> str:
    """`path` relative to the workdir (as stored in results), absolute if outside it."""
    return relative_to(path, self.workdir)


def relative_to(path: Any, root: Any) -> str:
  """`path` as a string relative to `root` when inside it, else unchanged."""
  path, root = str(path), str(root).rstrip("/")
  if path == root:
    return "."
  return path[len(root) + 1:] if path.startswith(root + "/") else path


# ---- config views and fingerprints -------------------------------------------------------


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
  node: Any = tree
  for part in dotted.split("."):
    if not isinstance(node, Mapping) or part not in node:
      raise KeyError(dotted)
    node = node[part]
  return node


def _assign(tree: dict[str, Any], dotted: str, value: Any) -> None:
  parts = dotted.split(".")
  for part in parts[:-1]:
    tree = tree.setdefault(part, {})
  tree[parts[-1]] = value


def config_view(config: ml_collections.ConfigDict, keys: Sequence[str]
                ) -> ml_collections.ConfigDict:
  """A locked ConfigDict with only the dotted `keys` (and `ALWAYS_VISIBLE`) of `config`."""
  plain = config.to_dict()
  view: dict[str, Any] = {}
  for key in sorted(set(keys) | {k for k in ALWAYS_VISIBLE if k in plain}):
    _assign(view, key, _lookup(plain, key))
  out = ml_collections.ConfigDict(view)
  out.lock()
  return out


def _is_listed(path: str, patterns: Sequence[str]) -> bool:
  """Whether dotted `path` matches one of `patterns` ('*' matches one component)."""
  return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _drop(tree: Any, patterns: Sequence[str], prefix: str = "") -> Any:
  if not isinstance(tree, Mapping):
    return tree
  return {k: _drop(v, patterns, f"{prefix}{k}.") for k, v in tree.items()
          if not _is_listed(f"{prefix}{k}", patterns)}


def declared_values(config: ml_collections.ConfigDict, keys: Sequence[str],
                    non_result: Sequence[str] = NON_RESULT_KEYS) -> dict[str, Any]:
  """{dotted key: value} of the declared keys, without the non-result ones (JSON-normalised;
  `non_result` entries may use '*' for one path component, e.g. 'evals.*.query_chunk')."""
  plain = config.to_dict()
  values = {key: _drop(_lookup(plain, key), non_result, key + ".")
            for key in sorted(set(keys)) if not _is_listed(key, non_result)}
  return json.loads(json.dumps(values, default=artifacts.json_default))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  if not isinstance(tree, Mapping) or not tree:
    return {prefix.rstrip("."): tree} if prefix else {}
  out = {}
  for k, v in tree.items():
    out.update(flatten(v, f"{prefix}{k}."))
  return out


def digest(payload: Any) -> str:
  blob = json.dumps(payload, sort_keys=True, default=artifacts.json_default)
  return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _short(value: Any, width: int = 40) -> str:
  text = json.dumps(value, default=artifacts.json_default)
  return text if len(text) <= width else text[:width - 3] + "..."


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 4) -> str:
  """'optim.lr 0.001 -> 0.01, seed 0 -> 3' for the flattened keys that differ."""
  a, b = flatten(old), flatten(new)
  changed = [k for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]
  parts = [f"{k} {_short(a.get(k, '<unset>'))} -> {_short(b.get(k, '<unset>'))}"
           for k in changed[:limit]]
  if len(changed) > limit:
    parts.append(f"+{len(changed) - limit} more")
  return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class Provenance:
  """What a stage's result depends on, as recorded in provenance.json and stage.json."""
  config: dict[str, Any]
  eval_config: dict[str, Any]
  inputs: dict[str, str]  # input stage -> its fingerprint
  data: Any
  extra: Any = None

  @property
  def fingerprint(self) -> str:
    return digest({"config": self.config, "inputs": self.inputs, "data": self.data,
                   "extra": self.extra})

  @property
  def eval_fingerprint(self) -> str:
    return digest(self.eval_config)

  def to_json(self) -> dict[str, Any]:
    return {"config": self.config, "eval_config": self.eval_config, "inputs": self.inputs,
            "data": self.data, "extra": self.extra, "fingerprint": self.fingerprint,
            "eval_fingerprint": self.eval_fingerprint}


def _difference(old: Mapping[str, Any], new: Provenance) -> str:
  """A short description of why `old` (recorded JSON) differs from `new`."""
  reasons = []
  text = describe_changes(old.get("config", {}), new.config)
  if text:
    reasons.append(f"config changed ({text})")
  changed_inputs = [n for n in sorted(set(old.get("inputs", {})) | set(new.inputs))
                    if old.get("inputs", {}).get(n) != new.inputs.get(n)]
  if changed_inputs:
    reasons.append(f"input stage {', '.join(changed_inputs)} changed")
  if old.get("data") != new.data:
    text = describe_changes(old.get("data") or {}, new.data or {})
    reasons.append(f"data changed ({text or 'fingerprint'})")
  if old.get("extra") != new.extra:
    text = describe_changes(old.get("extra") or {}, new.extra or {})
    reasons.append(f"external inputs changed ({text or 'fingerprint'})")
  return "; ".join(reasons) or "provenance format changed"


# ---- running ---------------------------------------------------------------------------------


def _read_json(path: epath.Path) -> dict[str, Any] | None:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    logging.warning("ignoring unreadable %s (%s)", path, e)
    return None


def is_done(stage_dir: Any) -> bool:
  """Whether `stage_dir` holds a finished stage."""
  return (epath.Path(stage_dir) / DONE_FILE).is_file()


def load_result(stage_dir: Any) -> dict[str, Any]:
  """The result a finished stage recorded in its stage.json."""
  record = _read_json(epath.Path(stage_dir) / DONE_FILE)
  if record is None:
    raise UserError(f"{stage_dir} is not a finished stage (no readable {DONE_FILE}); run the "
                    "pipeline that makes it first")
  return record.get("result", record)


class _Superseder:
  """Moves stale stage directories to `<workdir>/superseded/<time of this run>/<name>`."""

  def __init__(self, workdir: epath.Path):
    self._workdir = workdir
    self._root: epath.Path | None = None

  def move(self, name: str) -> epath.Path:
    if self._root is None:
      stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
      root, n = self._workdir / SUPERSEDED_DIR / stamp, 1
      while root.exists():
        n += 1
        root = self._workdir / SUPERSEDED_DIR / f"{stamp}-{n}"
      self._root = root
    target = self._root / name
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      (self._workdir / name).rename(target)
    return target


def _decide(stage_dir: epath.Path, prov: Provenance) -> tuple[str, str]:
  """(action, reason): reuse | reevaluate | rerun (move aside first) | resume | run."""
  done = _read_json(stage_dir / DONE_FILE)
  if done is not None:
    old = done.get("provenance")
    if old is None:
      return "rerun", "it was recorded by an older vtd, without provenance"
    if old.get("fingerprint") != prov.fingerprint:
      return "rerun", _difference(old, prov)
    if old.get("eval_fingerprint") != prov.eval_fingerprint:
      text = describe_changes(old.get("eval_config", {}), prov.eval_config)
      if not text:
        # The same values recorded under other declared keys (e.g. `evals` split into
        # `evals.test`, `evals.val` when stages began declaring only their own evaluators):
        # nothing would evaluate differently, so nothing is re-evaluated.
        return "reuse", ""
      return "reevaluate", f"evaluation settings changed ({text})"
    return "reuse", ""
  started = _read_json(stage_dir / STARTED_FILE)
  if started is not None:
    if started.get("fingerprint") != prov.fingerprint:
      return "rerun", "unfinished, and " + _difference(started, prov)
    return "resume", ""
  if stage_dir.exists() and any(stage_dir.iterdir()):
    return "rerun", "unfinished, with no provenance (older vtd)"
  return "run", ""


def run_pipeline(config: ml_collections.ConfigDict, workdir: Any, graph: Sequence[Stage], *,
                 data_fingerprint: Any = None,
                 non_result_keys: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
  """Runs (or reuses) every stage of `graph` in order; returns {stage name: result}.

  Args:
    config: the full run config.
    workdir: the run's directory (local path or object-store URI).
    graph: stages in execution order; each input must come earlier.
    data_fingerprint: JSON describing the method's input data (generator spec or file
      fingerprints); part of the provenance of stages with `uses_data`.
    non_result_keys: method-specific keys to leave out of fingerprints, on top of
      `NON_RESULT_KEYS`.
  """
  workdir = epath.Path(workdir)
  mode = config.runtime.get("reuse", "changed")
  if mode not in REUSE_MODES:
    raise UserError(f"config.runtime.reuse must be one of {REUSE_MODES}, got {mode!r}")
  check_graph(config, graph)
  skip = tuple(NON_RESULT_KEYS) + tuple(non_result_keys)
  superseder = _Superseder(workdir)
  fingerprints: dict[str, str] = {}
  results: dict[str, dict[str, Any]] = {}
  for index, stage in enumerate(graph, start=1):
    label = f"stage {index}/{len(graph)} {stage.name}" + (f" ({stage.title})" if stage.title
                                                          else "")
    stage_dir = workdir / stage.name
    prov = Provenance(config=declared_values(config, stage.config_keys, skip),
                      eval_config=declared_values(config, stage.eval_keys, skip),
                      inputs={n: fingerprints[n] for n in stage.inputs},
                      data=data_fingerprint if stage.uses_data else None,
                      extra=json.loads(json.dumps(stage.extra, default=artifacts.json_default)))
    action, reason = _decide(stage_dir, prov)
    sharding.sync(f"stage-decided-{stage.name}")  # Everyone has read before anything moves.
    if action in ("rerun", "reevaluate") and mode == "strict":
      raise UserError(f"{label}: {reason}; runtime.reuse=strict keeps the workdir as it is. "
                      "Use another --workdir, or drop runtime.reuse=strict to rerun (old "
                      f"results are kept under {workdir / SUPERSEDED_DIR})")
    if action == "reuse":
      logging.info("%s: finished earlier with the same config, reusing", label)
      results[stage.name] = load_result(stage_dir)
      fingerprints[stage.name] = prov.fingerprint
      continue
    if action == "rerun":
      moved = superseder.move(stage.name)
      logging.info("%s: %s; rerunning (the previous run is kept in %s)", label, reason, moved)
      sharding.sync(f"stage-moved-{stage.name}")
    elif action == "reevaluate":
      logging.info("%s: %s; re-evaluating (training is reused)", label, reason)
    elif action == "resume":
      logging.info("%s: unfinished, resuming", label)
    else:
      logging.info("%s: running", label)
    results[stage.name] = _run_one(stage, stage_dir, workdir, config, prov,
                                   {n: results[n] for n in stage.inputs})
    fingerprints[stage.name] = prov.fingerprint
  return results


def _run_one(stage: Stage, stage_dir: epath.Path, workdir: epath.Path,
             config: ml_collections.ConfigDict, prov: Provenance,
             inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
  if jax.process_index() == 0:
    stage_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(stage_dir / STARTED_FILE, prov.to_json())
  sharding.sync(f"stage-start-{stage.name}")
  ctx = StageContext(name=stage.name, dir=stage_dir, workdir=workdir, inputs=inputs,
                     config=config_view(config, stage.config_keys + stage.eval_keys))
  # Normalise through JSON so a fresh result equals one reloaded from stage.json.
  result = json.loads(json.dumps(stage.run(ctx), default=artifacts.json_default))
  if jax.process_index() == 0:
    artifacts.write_json_atomic(stage_dir / DONE_FILE, {
        "result": result, "provenance": prov.to_json(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
  sharding.sync(f"stage-done-{stage.name}")  # Others may read this stage's outputs next.
  return result


def check_graph(config: ml_collections.ConfigDict, graph: Sequence[Stage]) -> None:
  """Names unique, inputs earlier in the graph, declared keys present in the config."""
  seen: set[str] = set()
  plain = config.to_dict()
  for stage in graph:
    if stage.name in seen:
      raise ValueError(f"stage {stage.name!r} appears twice in the graph")
    missing = [n for n in stage.inputs if n not in seen]
    if missing:
      raise ValueError(f"stage {stage.name!r} reads {missing}, which do not run before it")
    for key in stage.config_keys + stage.eval_keys:
      try:
        _lookup(plain, key)
      except KeyError:
        raise ValueError(f"stage {stage.name!r} declares config key {key!r}, which the "
                         "config does not have") from None
    nested = [n for n in seen if stage.name.startswith(n + "/") or n.startswith(stage.name + "/")]
    if nested:
      raise ValueError(f"stage {stage.name!r} and {nested[0]!r} would nest directories")
    seen.add(stage.name)
