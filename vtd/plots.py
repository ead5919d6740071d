"""PNG figures every run writes, so results can be looked at without reading JSON.

* `training_curves`: per trained stage, `<stage>/curves.png`: the training loss terms and the
  validation metric against the step, with the selected checkpoint marked.
* `recall_at_k`: TeachText, `<workdir>/plots/recall_at_k.png`: R@K against K for every model,
  text-to-video and video-to-text.
* `precision_recall`: UTS, `<workdir>/plots/precision_recall.png`: FIVR precision-recall curves
  per task and aggregation.

matplotlib with the non-interactive Agg backend; files are written through `artifacts`
(atomic, epath), so they also land on object-store workdirs.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # No display on training machines; must precede pyplot.
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

import numpy as np  # noqa: E402

from vtd import artifacts  # noqa: E402
from vtd import metric_writers  # noqa: E402

_DPI = 110


def _save(fig, path: Any) -> None:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
  plt.close(fig)
  artifacts.write_atomic(path, lambda f: f.write(buffer.getvalue()))


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
  if not points:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*points)
  return np.asarray(steps), np.asarray(values, float)


def training_curves(metrics_file: Any, out: Any, *, title: str, val_metric: str = "",
                    selected_step: int | None = None, max_terms: int = 4) -> bool:
  """Loss terms (left) and validation metric (right) against the step; False if no rows."""
  rows = metric_writers.read_jsonl(metrics_file)
  train_keys = sorted({k for r in rows for k in r if k.startswith("train/")
                       and k not in ("train/steps_per_sec", "train/grad_norm")},
                      key=lambda k: (k != "train/loss", k))[:max_terms]
  if not train_keys:
    return False
  val_keys = ([f"val/{val_metric}"] if val_metric else
              sorted({k for r in rows for k in r if k.startswith("val/")})[:1])
  val_keys = [k for k in val_keys if _series(rows, k)[0].size]
  fig, axes = plt.subplots(1, 2 if val_keys else 1, figsize=(10 if val_keys else 5.5, 3.6),
                           squeeze=False)
  ax = axes[0, 0]
  for key in train_keys:
    steps, values = _series(rows, key)
    ax.plot(steps, values, label=key[len("train/"):], lw=1.5)
  ax.set(xlabel="step", ylabel="training loss (mean over the log interval)")
  if all(_series(rows, k)[1].min() > 0 for k in train_keys):
    ax.set_yscale("log")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  if val_keys:
    ax = axes[0, 1]
    steps, values = _series(rows, val_keys[0])
    ax.plot(steps, values, "o-", lw=1.5, ms=3, color="tab:green")
    if selected_step is not None and selected_step in steps:
      ax.axvline(selected_step, color="0.5", ls="--", lw=1)
      ax.plot([selected_step], [values[list(steps).index(selected_step)]], "*", ms=12,
              color="tab:red", label=f"selected (step {selected_step})")
      ax.legend(fontsize=8)
    ax.set(xlabel="step", ylabel=val_keys[0])
    ax.grid(alpha=0.3)
  fig.suptitle(title, fontsize=10)
  _save(fig, out)
  return True


def recall_at_k(recalls: Mapping[str, Mapping[str, np.ndarray]], out: Any, *,
                title: str) -> None:
  """recalls[model][direction] = R@K in percent for K = 1..len -> one panel per direction."""
  directions = sorted({d for per_model in recalls.values() for d in per_model})
  fig, axes = plt.subplots(1, len(directions), figsize=(5.2 * len(directions), 3.8),
                           squeeze=False)
  for ax, direction in zip(axes[0], directions):
    for model, per_model in recalls.items():
      if direction in per_model:
        curve = np.asarray(per_model[direction], float)
        ax.plot(np.arange(1, curve.size + 1), curve, label=model, lw=1.5)
    ax.set_xscale("log")
    ax.set(xlabel="K (log scale)", ylabel="R@K (%)", ylim=(0, 100), title=direction)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
  fig.suptitle(title, fontsize=10)
  _save(fig, out)


def precision_recall(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                     out: Any, *, title: str) -> None:
  """curves[task][label] = (recall, precision) -> one panel per task (DSVR, CSVR, ISVR)."""
  tasks = list(curves)
  fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.9), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for label, (recall, precision) in curves[task].items():
      ax.plot(recall, precision, label=label, lw=1.4)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=task)
    ax.grid(alpha=0.3)
  # One legend for all panels (the same rows), beside them, so it never covers a curve.
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.02),
             ncol=min(len(labels), 6), frameon=False)
  fig.suptitle(title, fontsize=10)
  _save(fig, out)
