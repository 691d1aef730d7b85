"""`experiments/mergedna/run.py` end to end at toy size: one seed of the
fixed 2-mer run, its table with balanced accuracy, and its token lengths."""
import json

import pytest

from conftest import load_experiment


def test_table_runs_and_reports_balanced_accuracy(tmp_path):
  runner = load_experiment("mergedna")
  out = tmp_path / "out"
  runner.main(["--smoke", "--seeds", "0", "--runs", "fixed_kmer",
               "--out", str(out)])
  results = json.loads((out / "results.json").read_text())
  [row] = results["rows"]
  assert (row["name"], row["seed"], row["steps"]) == ("fixed_kmer", 0, 20)
  assert (out / "runs" / "fixed_kmer" / "seed0" / "checkpoints").is_dir()
  trained = results["table"]["fixed_kmer"]["trained"]
  for part in ("trained", "random_init", "kmer_counts"):
    for m in ("knn", "linear_probe"):
      cell = results["table"]["fixed_kmer"][part][f"{m}_balanced_accuracy"]
      assert 0.0 <= cell["mean"] <= 1.0 and cell["n"] == 1 and cell["std"] == 0
  # A fixed 2-mer tokenizer: every token holds two bases, at L = N/2.
  assert trained["compression"]["mean"] == 0.5
  [lengths] = results["token_length"]["fixed_kmer"]
  assert lengths["coding_mean_length"] == lengths["noncoding_mean_length"] == 2.0
  text = (out / "results.md").read_text()
  assert "Balanced accuracy" in text and "| fixed_kmer | 20 |" in text
  for bad in (["--runs", "bpe"], ["--seeds", "a"]):
    with pytest.raises(SystemExit):
      runner.main(["--out", str(out), *bad])
