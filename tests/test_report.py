"""The report writer: the baseline columns and the sentence that says
whether raw pixels or the trained encoder wins, from the numbers given."""
import json

from conftest import SMOKE, load_config
from maskmodel import report


def _write(tmp_path, final, baselines, config=SMOKE):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step, loss in ((1, 1.0), (2, 0.5)):
      f.write(json.dumps({"step": step, "train/loss": loss}) + "\n")
  report.write(str(tmp_path), load_config(config), final, baselines,
               train_seconds=1.0, steps_run=2)
  return (tmp_path / "report.md").read_text()


def test_report_has_a_pixel_column_and_says_where_pixels_win(tmp_path):
  final = {"knn_accuracy": 0.74, "linear_probe_accuracy": 0.95,
           "reconstruction_mse_pixels": 0.26}
  text = _write(tmp_path, final, {
      "random_init": {"knn_accuracy": 0.473, "linear_probe_accuracy": 0.73},
      "pixels": {"knn_accuracy": 0.947, "linear_probe_accuracy": 0.9}})
  assert "| metric | trained | random init | raw pixels |" in text
  assert "| knn_accuracy | 0.7400 | 0.4730 | 0.9470 |" in text
  assert "| linear_probe_accuracy | 0.9500 | 0.7300 | 0.9000 |" in text
  assert "| reconstruction_mse_pixels | 0.2600 | - | - |" in text
  assert "Raw pixels beat the trained encoder on k-NN (0.9470 vs 0.7400)." in text
  assert ("The trained encoder beats raw pixels on linear probe (0.9500 vs 0.9000)."
          in text)
  assert "Raw pixels beat the trained encoder on linear probe" not in text
  assert "The trained encoder beats raw pixels on k-NN" not in text


def test_report_says_where_the_encoder_wins_without_random_init(tmp_path):
  text = _write(tmp_path, {"knn_accuracy": 0.98, "linear_probe_accuracy": 0.5},
                {"pixels": {"knn_accuracy": 0.9, "linear_probe_accuracy": 0.5}})
  assert "| metric | trained | raw pixels |" in text
  assert "| knn_accuracy | 0.9800 | 0.9000 |" in text
  assert "The trained encoder beats raw pixels on k-NN (0.9800 vs 0.9000)." in text
  assert "The trained encoder and raw pixels tie on linear probe (0.5000)." in text
  assert "Raw pixels beat" not in text


def test_report_without_baselines_has_no_verdict(tmp_path):
  text = _write(tmp_path, {"test_accuracy": 0.97}, {})
  assert "| metric | trained |\n|---|---|\n| test_accuracy | 0.9700 |" in text
  assert "raw pixels" not in text


def test_report_has_the_low_label_rows_in_every_column(tmp_path):
  final = {"knn_accuracy": 0.74, "low_label_1%": 0.61, "low_label_10%": 0.9}
  text = _write(tmp_path, final, {
      "random_init": {"knn_accuracy": 0.473, "low_label_1%": 0.4,
                      "low_label_10%": 0.7},
      "pixels": {"knn_accuracy": 0.947, "low_label_1%": 0.668,
                 "low_label_10%": 0.853}})
  assert "| low_label_1% | 0.6100 | 0.4000 | 0.6680 |" in text
  assert "| low_label_10% | 0.9000 | 0.7000 | 0.8530 |" in text
  assert ("Raw pixels beat the trained encoder on the 1%-label fine-tune "
          "(0.6680 vs 0.6100).") in text
  assert ("The trained encoder beats raw pixels on the 10%-label fine-tune "
          "(0.9000 vs 0.8530).") in text
  assert "on raw pixels, the linear head alone" in text


def test_a_sequence_run_names_its_no_encoder_baseline(tmp_path):
  """For sequences the no-encoder baseline is a bag of k-mers of the token
  ids, and the report says so instead of "raw pixels"."""
  import os  # pylint: disable=g-import-not-at-top
  from conftest import ROOT  # pylint: disable=g-import-not-at-top
  text = _write(tmp_path, {"knn_accuracy": 0.6},
                {"pixels": {"knn_accuracy": 0.7}},
                os.path.join(ROOT, "configs", "mlm", "genome_tiny.py"))
  assert "| metric | trained | bag of 3-mers |" in text, text
  assert "Bag of 3-mers beat the trained encoder on k-NN (0.7000 vs 0.6000)." in text
  assert "pixels" not in text.replace("reconstruction_mse_pixels", "")
