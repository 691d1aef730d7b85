"""`python -m maskmodel.experiments`: list, run --check, --record and errors.

Nothing here trains: the fake experiments' commands are python one-liners
that write a results file.
"""
import argparse
import json
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT
from maskmodel import experiments


def write_experiment(root, name="fake", new=0.9, recorded=0.9, tolerance=0.02,
                     **overrides):
  """An experiment whose command writes {"accuracy": new, "baseline": 0.5}
  and whose recorded results have accuracy `recorded` (None: nothing)."""
  folder = root / name
  folder.mkdir(parents=True)
  command = ("python -c \"import json, sys; json.dump({'scores': [{'name': "
             f"'accuracy', 'value': {new}}}], 'baseline': 0.5}}, "
             "open(sys.argv[1] + '/results.json', 'w'))\" {out}")
  spec = dict(
      name=name, claim="Training beats the baseline.", command=command,
      results="results.json",
      metrics={"accuracy": {"path": ["scores", {"name": "accuracy"}, "value"],
                            "tolerance": tolerance},
               "baseline": {"path": ["baseline"], "tolerance": 0.0}},
      verdict=["accuracy > baseline"])
  spec.update(overrides)
  (folder / "experiment.json").write_text(json.dumps(spec))
  if recorded is not None:
    (folder / "results.json").write_text(json.dumps(
        {"scores": [{"name": "accuracy", "value": recorded}], "baseline": 0.5}))
  return folder


def run_main(capsys, root, *args):
  rc = experiments.main(["--root", str(root), *args])
  out, err = capsys.readouterr()
  return rc, out, err


def assert_one_line_error(rc, err, *needles):
  assert rc == 2
  assert len(err.strip().splitlines()) == 1, err
  assert err.startswith("error: "), err
  for needle in needles:
    assert needle in err, err


def list_blocks(out):
  """`list`'s output as {name: {"claim": ..., "command": ..., "verdict": ...}}."""
  blocks = {}
  for line in out.splitlines():
    if line.startswith("  "):
      key, _, value = line.strip().partition(":")
      blocks[name][key] = value.strip()
    elif not line.startswith("Rerun one with"):
      name = line
      blocks[name] = {}
  return blocks


def test_list_prints_every_experiment_with_claim_command_and_verdict():
  proc = subprocess.run([sys.executable, "-m", "maskmodel.experiments", "list"],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  blocks = list_blocks(proc.stdout)
  folders = sorted(p.parent.name for p in
                   (pathlib.Path(ROOT) / "experiments").glob("*/experiment.json"))
  assert list(blocks) == folders and "mae_mnist" in folders
  for name, block in blocks.items():
    spec = json.loads((pathlib.Path(ROOT) / "experiments" / name /
                       "experiment.json").read_text())
    assert block["claim"] == spec["claim"]
    assert block["command"] == spec["command"]
    # Both are recorded, and the recorded results bear the claims out.
    assert block["verdict"].startswith("holds ("), block


def test_list_verdicts_from_recorded_results(tmp_path, capsys):
  write_experiment(tmp_path, "a_holds", recorded=0.9)
  write_experiment(tmp_path, "b_fails", recorded=0.4)
  write_experiment(tmp_path, "c_never_run", recorded=None)
  rc, out, _ = run_main(capsys, tmp_path, "list")
  assert rc == 0
  assert {k: v["verdict"] for k, v in list_blocks(out).items()} == {
      "a_holds": "holds (accuracy 0.9000 > baseline 0.5000)",
      "b_fails": "does not hold (accuracy 0.4000 not > baseline 0.5000)",
      "c_never_run": "not run (nothing recorded in results.json)"}


def test_run_check_within_tolerance(tmp_path, capsys):
  folder = write_experiment(tmp_path, new=0.915, recorded=0.9, tolerance=0.02)
  out_dir = tmp_path / "out"
  rc, out, _ = run_main(capsys, tmp_path, "run", "fake", "--check",
                        "--out", str(out_dir))
  assert rc == 0, out
  lines = out.splitlines()
  row = next(l for l in lines if l.startswith("accuracy "))
  assert row.split() == ["accuracy", "0.9000", "0.9150", "+0.0150", "0.0200", "ok"]
  assert lines[-1] == ("check passed: fake: all 2 metrics within tolerance, "
                       "verdict holds as recorded")
  # The run wrote into its own folder; the recorded results are untouched.
  assert json.loads((out_dir / "results.json").read_text())["scores"][0]["value"] == 0.915
  assert json.loads((folder / "results.json").read_text())["scores"][0]["value"] == 0.9


def test_run_check_outside_tolerance_fails(tmp_path, capsys):
  write_experiment(tmp_path, new=0.95, recorded=0.9, tolerance=0.02)
  rc, out, _ = run_main(capsys, tmp_path, "run", "fake", "--check",
                        "--out", str(tmp_path / "out"))
  assert rc == 1
  row = next(l for l in out.splitlines() if l.startswith("accuracy "))
  assert row.split()[-1] == "OUTSIDE"
  assert out.splitlines()[-1] == ("check failed: fake: 1 of 2 metrics outside "
                                  "tolerance (accuracy +0.0500)")


def test_run_check_fails_when_the_verdict_changes(tmp_path, capsys):
  write_experiment(tmp_path, new=0.45, recorded=0.9, tolerance=1.0)
  rc, out, _ = run_main(capsys, tmp_path, "run", "fake", "--check",
                        "--out", str(tmp_path / "out"))
  assert rc == 1
  assert out.splitlines()[-1] == ("check failed: fake: verdict does not hold, "
                                  "recorded holds")


def test_run_record_replaces_the_recorded_results(tmp_path, capsys):
  folder = write_experiment(tmp_path, new=0.8, recorded=None)
  rc, out, _ = run_main(capsys, tmp_path, "run", "fake", "--record",
                        "--out", str(tmp_path / "out"))
  assert rc == 0, out
  assert "verdict: holds (accuracy 0.8000 > baseline 0.5000)" in out
  assert json.loads((folder / "results.json").read_text())["scores"][0]["value"] == 0.8
  rc, out, _ = run_main(capsys, tmp_path, "list")
  assert "verdict: holds" in out


def test_unknown_experiment_names_the_known_ones(tmp_path, capsys):
  write_experiment(tmp_path, "fake")
  write_experiment(tmp_path, "other")
  rc, _, err = run_main(capsys, tmp_path, "run", "nope")
  assert_one_line_error(rc, err, "unknown experiment 'nope'", "known: fake, other")


@pytest.mark.parametrize("spec,needles", [
    (None, ["is not valid JSON"]),
    ({"claim": None}, ["has no field 'claim'", "needs name, claim, command"]),
    ({"verdict": ["accuracy >> baseline"]}, ["is not 'a OP b'"]),
    ({"verdict": []}, ["verdict must be a non-empty list"]),
    ({"tolerence": 0.1}, ["unknown field 'tolerence'"]),
    ({"verdict": ["accuracy > speed"]}, ["names 'speed', which is not a metric"]),
    ({"metrics": {"accuracy": {"path": ["scores"]}}}, ["'accuracy' needs", "'tolerance'"]),
    ({"name": "renamed"}, ["is not the folder's name 'fake'"]),
    ({"command": "python -c pass"}, ["never names {out}"]),
])
def test_malformed_spec(tmp_path, capsys, spec, needles):
  folder = write_experiment(tmp_path)
  path = folder / "experiment.json"
  if spec is None:
    path.write_text(path.read_text()[:-1])
  else:
    data = json.loads(path.read_text())
    data.update(spec)
    data = {k: v for k, v in data.items() if v is not None}
    path.write_text(json.dumps(data))
  rc, _, err = run_main(capsys, tmp_path, "list")
  assert_one_line_error(rc, err, str(path), *needles)


def test_metric_path_missing_from_results(tmp_path, capsys):
  write_experiment(tmp_path, metrics={
      "accuracy": {"path": ["scores", {"name": "top5"}, "value"], "tolerance": 0.1},
      "baseline": {"path": ["baseline"], "tolerance": 0.0}})
  rc, _, err = run_main(capsys, tmp_path, "list")
  assert_one_line_error(rc, err, "0 entries match {'name': 'top5'}")


def test_failing_command_and_nothing_recorded(tmp_path, capsys):
  write_experiment(tmp_path, "crashes", recorded=0.9,
                   command="python -c \"import sys; sys.exit(3)\" {out}")
  rc, _, err = run_main(capsys, tmp_path, "run", "crashes", "--out",
                        str(tmp_path / "out"))
  assert_one_line_error(rc, err, "crashes: its command exited with status 3")
  write_experiment(tmp_path, "fresh", recorded=None)
  rc, _, err = run_main(capsys, tmp_path, "run", "fresh", "--check")
  assert_one_line_error(rc, err, "nothing recorded to check against", "--record")


def test_report_md_is_read_by_its_table(tmp_path):
  report = tmp_path / "report.md"
  report.write_text("# mae\n\n| metric | trained | random init |\n|---|---|---|\n"
                    "| knn_accuracy | 0.7400 | 0.4730 |\n"
                    "| reconstruction_mse_pixels | 0.2615 | - |\n\nafter\n")
  assert experiments.read_results(report) == {
      "knn_accuracy": {"trained": 0.74, "random init": 0.473},
      "reconstruction_mse_pixels": {"trained": 0.2615, "random init": "-"}}


def test_selector_picks_exactly_one_entry():
  rows = {"rows": [{"method": "topk", "prop_attn": True, "accuracy": 0.83},
                   {"method": "topk", "prop_attn": False, "accuracy": 0.82}]}
  assert experiments.lookup(rows, ["rows", {"method": "topk", "prop_attn": False},
                                   "accuracy"], "x") == 0.82
  with pytest.raises(experiments.ExperimentError, match="2 entries match"):
    experiments.lookup(rows, ["rows", {"method": "topk"}, "accuracy"], "x")


def test_seed_list_parses_the_runners_seeds():
  assert experiments.seed_list("0,1,2") == [0, 1, 2]
  assert experiments.seed_list("3,") == [3]
  for bad in ("a", "", "0;1"):
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated"):
      experiments.seed_list(bad)


def test_table_cells_show_the_spread_only_over_several_seeds():
  cell = lambda *v: experiments.mean_std(list(v))
  assert experiments.fmt_mean_std(cell(0.80, 0.82, 0.84)) == "0.820 ± 0.020"
  assert experiments.fmt_mean_std(cell(0.8123), digits=2) == "0.81"
  assert experiments.fmt_mean_std(cell()) == "-"


def test_seed_verdict_judges_by_the_two_stds_added():
  cell = lambda *v: experiments.mean_std(list(v))
  a, b = cell(0.80, 0.82, 0.84), cell(0.70, 0.71, 0.72)  # std 0.02 and 0.01
  got = experiments.seed_verdict(a, b)
  assert got["difference"] == pytest.approx(0.11)
  assert got["std_sum"] == pytest.approx(0.03)
  assert (got["verdict"], got["seeds"]) == ("holds", 3)
  assert experiments.seed_verdict(b, a)["verdict"] == "does not hold"
  assert experiments.seed_verdict(a, cell(0.81, 0.83))["verdict"] == "within noise"
  # Lower is better (a spread): a's larger value is the worse one.
  assert experiments.seed_verdict(a, b, lower_better=True)["verdict"] == (
      "does not hold")
  one = lambda v: cell(v)
  assert experiments.seed_verdict(one(0.5), one(0.4))["verdict"] == (
      "ahead on one seed")
  assert experiments.seed_verdict(one(0.4), one(0.5))["verdict"] == (
      "behind on one seed")
  assert experiments.seed_verdict(one(0.4), one(0.4))["verdict"] == (
      "tied on one seed")
  rows = experiments.claims_markdown(
      [{"claim": "A beats B", "dataset": "d", "metric": "knn", **got}],
      digits=2, metric_name=str.upper)
  assert rows[-1] == "| A beats B | d | KNN | +0.11 | 0.03 | holds | 3 |"
