"""The main job end to end through the CLI, at smoke size."""
import json
import re
import shutil

import jax
import numpy as np

from conftest import SMOKE, run_cli
from maskmodel.checkpoint import load_encoder_params


def test_main_job_writes_report(tmp_path):
  wd = tmp_path / "run"
  proc = run_cli("--config", SMOKE, "--workdir", str(wd), "--config.total_steps=12")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "step 5/12" in out and "steps/s" in out and "ETA" in out
  for name in ("metrics.jsonl", "loss_curve.png", "reconstructions.png", "report.md"):
    assert (wd / name).stat().st_size > 0, name
  assert any(p.name.startswith("events") for p in (wd / "tensorboard").iterdir())
  recs = [json.loads(l) for l in open(wd / "metrics.jsonl")]
  train = [r for r in recs if "train/loss" in r]
  assert [r["step"] for r in train] == [5, 10, 12]
  final = recs[-1]
  # The feature evals of the trained encoder, of its init and of raw pixels.
  for prefix in ("eval", "random_init", "pixels"):
    for k in ("knn_accuracy", "linear_probe_accuracy", "low_label_1%",
              "low_label_10%"):
      assert 0.0 <= final[f"{prefix}/{k}"] <= 1.0
  report = (wd / "report.md").read_text()
  assert "| metric | trained | random init | raw pixels |" in report
  assert "| knn_accuracy |" in report and "| linear_probe_accuracy |" in report
  assert re.search(r"\| low_label_1% \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", report)
  assert re.search(r"\| low_label_10% \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", report)
  assert "raw pixels on k-NN" in report or "the trained encoder on k-NN" in report
  # 12 steps with checkpoint_every=10: steps 10 and 12 are kept.
  steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [10, 12]


def test_finetune_from_mae_checkpoint(tmp_path):
  pre, ft = tmp_path / "pre", tmp_path / "ft"
  assert run_cli("--config", SMOKE, "--workdir", str(pre), "--config.total_steps=2",
                 "--config.optimizer.warmup_steps=0",
                 "--config.evals.names=()").returncode == 0
  # One step at lr 1e-3: AdamW moves each value by about lr at most, so the
  # step-1 encoder still shows where it started.
  proc = run_cli("--config", "configs/classify/mnist_vit_tiny.py:smoke",
                 "--workdir", str(ft), f"--config.task.init_from={pre}",
                 "--config.total_steps=1", "--config.optimizer.warmup_steps=0",
                 "--config.optimizer.lr=1e-3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "final: test_accuracy=" in proc.stdout
  mae, tuned = load_encoder_params(str(pre)), load_encoder_params(str(ft))
  assert set(tuned) == set(mae) | {"head"}
  for key in mae:  # a random init is 0.07 to 0.7 off in each of these
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-3),
                 tuned[key], mae[key])
  # The pretraining workdir is gone: the fine-tune still resumes from its
  # own checkpoint, since init_from is read only by a fresh run.
  shutil.rmtree(pre)
  proc = run_cli("--config", "configs/classify/mnist_vit_tiny.py:smoke",
                 "--workdir", str(ft), f"--config.task.init_from={pre}",
                 "--config.total_steps=2", "--config.optimizer.warmup_steps=0",
                 "--config.optimizer.lr=1e-3", "--config.evals.names=()")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from step 1" in proc.stdout
