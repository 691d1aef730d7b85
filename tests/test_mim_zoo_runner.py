"""`experiments/mim_zoo/run.py` without training: the configs it builds, the
two-stage budgets, the table's means over seeds with the baseline rows, the
claim verdicts, and `--report`, which reads finished and recorded runs
only."""
import json
import sys

import pytest

from conftest import load_experiment


@pytest.fixture(scope="module")
def zoo():
  return load_experiment("mim_zoo")


def _result(variant, seed, knn, random_init=None, pixels=None):
  """A run's result.json as `run_one` writes it (test input, not a result)."""
  return {"variant": variant, "dataset": "mnist5k", "seed": seed, "steps": 500,
          "final": {"knn_accuracy": knn, "linear_probe_accuracy": knn},
          "random_init": random_init or {}, "pixels": pixels or {},
          "wall_seconds_last_invocation": 60.0}


def test_configs_share_the_budget_and_split_two_stage_variants(zoo):
  assert zoo.stage_steps("mae", 500) == (0, 500)
  assert zoo.stage_steps("salt", 500) == (100, 400)
  assert zoo.stage_steps("salt_teacher_heavy", 500) == (400, 100)
  assert zoo.stage_steps("salt_long_teacher", 500) == (500, 400)
  mae = zoo.run_config("mae", "fashion_mnist", 2, 500)
  assert (mae.seed, mae.total_steps, mae.batch_size) == (2, 500, zoo.BATCH)
  assert mae.data.name == "fashion_mnist" and mae.model.pool == "gap"
  assert mae.evals.compare_random_init and mae.evals.compare_pixels
  salt = zoo.run_config("salt_small_teacher", "mnist5k", 0, 500, "stage1/dir")
  assert salt.total_steps == 400 and salt.task.teacher_workdir == "stage1/dir"
  assert not salt.evals.compare_pixels
  teacher = zoo.stage1_config("salt_small_teacher", "mnist5k", 0, 500)
  assert (teacher.model.width, teacher.model.depth) == (48, 2)
  assert teacher.total_steps == 100 and teacher.evals.names == ()
  fine = zoo.run_config("simmim_fine", "mnist5k", 0, 500)
  assert fine.task.mask_patch_size == 4


def test_table_means_seeds_and_claims_judge_by_the_spread(zoo):
  results = [
      _result("mae", 0, 0.60, {"knn_accuracy": 0.40}, {"knn_accuracy": 0.90}),
      _result("mae", 1, 0.62, {"knn_accuracy": 0.42}, {"knn_accuracy": 0.90}),
      _result("hpm", 0, 0.70), _result("hpm", 1, 0.72),
      _result("spark", 0, 0.30, {"knn_accuracy": 0.20}),
      _result("colormae", 0, 0.65)]
  table = zoo.summarize(results)["mnist5k"]
  assert table["mae"]["knn_accuracy"]["mean"] == pytest.approx(0.61)
  assert table["mae"]["knn_accuracy"]["n"] == 2
  assert table["random_init_vit"]["knn_accuracy"]["mean"] == pytest.approx(0.41)
  assert table["random_init_convnet"]["knn_accuracy"]["n"] == 1
  assert table["pixels"]["knn_accuracy"]["mean"] == pytest.approx(0.90)
  verdicts = {(c["better"], c["metric"]): c["verdict"]
              for c in zoo.claims({"mnist5k": table})}
  # HPM ahead by 0.10 with a spread (sample std) of 0.014 + 0.014 on two
  # seeds: holds.
  assert verdicts[("hpm", "linear_probe_accuracy")] == "holds"
  # ColorMAE has one seed: no spread, only the side it is on.
  assert verdicts[("colormae", "linear_probe_accuracy")] == "ahead on one seed"
  text = zoo.markdown({"mnist5k": table}, zoo.claims({"mnist5k": table}),
                      500, 600.0, summed=True)
  assert "the runs' wall times added: 10.0 min" in text
  assert "| hpm | HPM, hard patches mined | 0.710 ± 0.014 |" in text


def test_report_reads_finished_and_recorded_runs_and_trains_nothing(
    zoo, tmp_path, monkeypatch):
  workdir, out = tmp_path / "runs", tmp_path / "out"
  done = workdir / "mnist5k" / "mae" / "seed0"
  done.mkdir(parents=True)
  (done / "result.json").write_text(json.dumps(
      _result("mae", 0, 0.6, {"knn_accuracy": 0.4}, {"knn_accuracy": 0.9})))
  (workdir / "mnist5k" / "hpm" / "seed0").mkdir(parents=True)  # unfinished
  # Recorded in --out from a workdir that is gone: kept, not run again. A
  # record at another budget is not this run.
  out.mkdir()
  other_budget = dict(_result("colormae", 0, 0.5), steps=1000)
  (out / "results.json").write_text(json.dumps(
      {"runs": [_result("hpm", 1, 0.7), other_budget]}))
  def run_one(variant, dataset, seed, steps, wd):
    raise AssertionError(f"--report started {variant} seed {seed}")
  monkeypatch.setattr(zoo, "run_one", run_one)
  monkeypatch.setattr(sys, "argv", [
      "run.py", "--workdir", str(workdir), "--out", str(out), "--report",
      "--datasets", "mnist5k", "--seeds", "0,1",
      "--methods", "mae,hpm,colormae"])
  zoo.main()
  results = json.loads((out / "results.json").read_text())
  assert [(r["variant"], r["seed"]) for r in results["runs"]] == [
      ("mae", 0), ("hpm", 1)]
  assert results["table"]["mnist5k"]["hpm"]["knn_accuracy"]["mean"] == 0.7
  assert "wall times added: 2.0 min" in (out / "results.md").read_text()
