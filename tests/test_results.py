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
