import json

import numpy as np

from vtd import results


def test_aggregate_mean_std(tmp_path):
  paths = []
  for seed, r1 in enumerate([10.0, 12.0, 14.0]):
    run = {"student": {"test": {"t2v": {c: r1 for c in results.COLUMNS}}}}
    path = tmp_path / f"{seed}.json"
    path.write_text(json.dumps(run))
    paths.append(str(path))
  values = results.collect(paths)
  assert values["student"]["t2v"]["R1"] == [10.0, 12.0, 14.0]
  table = results.format_aggregate(values, directions=("t2v",))
  assert "| student | 12.0 ± 2.0 |" in table  # std with ddof=1, as the official log parser.
  assert np.isclose(np.std([10, 12, 14], ddof=1), 2.0)


def test_flat_metrics_and_non_model_entries(tmp_path, capsys):
  paths = []
  for seed, j in enumerate([50.0, 54.0]):
    run = {"data": "synthetic", "teacher": {"test": {"P": 90.0, "J": j}},
           "gen1/evalseg": {"selection": {"kept": {"J": 70.0}}}}
    path = tmp_path / f"{seed}.json"
    path.write_text(json.dumps(run))
    paths.append(str(path))
  values = results.collect(paths)
  assert values == {"teacher": {results.FLAT: {"P": [90.0, 90.0], "J": [50.0, 54.0]}}}
  results.main(paths)
  out = capsys.readouterr().out
  assert "| model | P | J |" in out
  assert "| teacher | 90.0 ± 0.0 | 52.0 ± 2.8 |" in out
