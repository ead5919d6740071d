"""results.json tables: columns from the evaluators, mean ± std, one-line errors."""

import json

import numpy as np
import pytest

from vtd import results

EVALUATORS = {"test": {"type": "retrieval", "split": "test",
                       "columns": ["t2v/R1", "t2v/MdR", "v2t/R1"],
                       "headers": ["t2v R@1", "t2v MdR", "v2t R@1"]},
              "val": {"type": "retrieval", "split": "val", "columns": ["t2v/R1"],
                      "headers": ["t2v R@1"]}}


def _write(tmp_path, name, method="teachtext", r1=10.0):
  payload = {"method": method, "evaluators": EVALUATORS,
             "models": {"student": {"test": {"t2v/R1": r1, "t2v/MdR": 3.0, "v2t/R1": 2 * r1,
                                             "t2v/num_queries": 100.0},
                                    "val": {"t2v/R1": r1 + 1, "t2v/num_queries": 40.0}}},
             "stages": {}}
  path = tmp_path / name
  path.write_text(json.dumps(payload))
  return str(path)


def test_mean_std_with_columns_from_the_evaluators(tmp_path, capsys):
  paths = [_write(tmp_path, f"{s}.json", r1=r1) for s, r1 in enumerate([10.0, 12.0, 14.0])]
  results.main(paths)
  out = capsys.readouterr().out
  assert "| model | t2v R@1 | t2v MdR | v2t R@1 |" in out
  assert "| student | 12.0 ± 2.0 | 3.0 ± 0.0 | 24.0 ± 4.0 |" in out  # ddof = 1.
  assert "num_queries" not in out and "val (val)" not in out  # val only when asked for.
  assert np.isclose(np.std([10, 12, 14], ddof=1), 2.0)
  results.main(["--eval=val", *paths])
  out = capsys.readouterr().out
  assert "| student | 13.0 ± 2.0 |" in out and "num_queries" not in out
  results.main(["--metrics=v2t", *paths])
  assert "| model | v2t R@1 |" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--metrics=t2w"], "no metric group ['t2w'] (have ['t2v', 'v2t'])"),
    (["--eval=qbnorm"], "no evaluator ['qbnorm'] in the files (have ['test', 'val'])"),
    (["--models=teacher"], "no model ['teacher'] with 'test' metrics (have ['student'])"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, args, message):
  with pytest.raises(SystemExit) as e:
    results.main([*args, _write(tmp_path, "a.json")])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_missing_file_and_mixed_methods(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    results.main([str(tmp_path / "nope.json")])
  assert e.value.code == 2 and "nope.json: no such file" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    results.main([_write(tmp_path, "a.json"), _write(tmp_path, "b.json", method="uts")])
  assert "different methods (teachtext, uts)" in capsys.readouterr().err


def _segmentation_payload(tmp_path, name, rho):
  """A segmentation results.json: P / J of the students, mask scoring of EvalSeg-Net."""
  evaluators = {
      "test": {"type": "segmentation", "split": "test", "columns": ["P", "J"],
               "headers": ["P", "J"]},
      "scoring_test": {"type": "mask_scoring", "split": "test",
                       "columns": ["score_vs_J/spearman", "J/all", "J/kept"],
                       "headers": ["Spearman(score, J)", "J all", "J kept"],
                       "formats": {"score_vs_J/spearman": ".2f"}}}
  payload = {"method": "segmentation", "evaluators": evaluators,
             "models": {"gen1/fconv": {"test": {"P": 80.0, "J": 40.0}},
                        "gen1/evalseg": {"scoring_test": {"score_vs_J/spearman": rho,
                                                          "J/all": 40.0, "J/kept": 55.0}}},
             "stages": {}}
  path = tmp_path / name
  path.write_text(json.dumps(payload))
  return str(path)


def test_evaluator_formats_and_rows_of_different_evaluators(tmp_path, capsys):
  paths = [_segmentation_payload(tmp_path, f"{s}.json", rho) for s, rho in
           enumerate([0.41, 0.45])]
  results.main(paths)
  out = capsys.readouterr().out
  assert "| gen1/fconv | 80.0 ± 0.0 | 40.0 ± 0.0 |" in out  # The default: one decimal.
  assert "| model | Spearman(score, J) | J all | J kept |" in out
  assert "| gen1/evalseg | 0.43 ± 0.03 | 40.0 ± 0.0 | 55.0 ± 0.0 |" in out
  # A row of one evaluator only: the other evaluator's table is left out, not an error.
  results.main(["--models=gen1/evalseg", *paths])
  out = capsys.readouterr().out
  assert "gen1/evalseg" in out and "| model | P | J |" not in out
  with pytest.raises(SystemExit):
    results.main(["--models=gen2/fconv", *paths])
  assert capsys.readouterr().err.strip().endswith(
      "error: no model ['gen2/fconv'] with 'test' / 'scoring_test' metrics (have "
      "['gen1/evalseg', 'gen1/fconv'])")
