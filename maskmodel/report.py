"""The run report: `report.md` with the loss-curve PNG and eval numbers."""
from __future__ import annotations

import os

from maskmodel.evaluators.plots import loss_curve


def write(workdir, config, final: dict, baseline: dict, *, train_seconds: float,
          steps_run: int):
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  loss_curve(metrics_path, os.path.join(workdir, "loss_curve.png"))
  lines = [
      f"# {config.task.name} on {config.data.name}",
      "",
      f"- model: ViT width {config.model.width}, depth {config.model.depth}, "
      f"patch {config.model.patch_size}, image {config.data.image_size}",
      f"- steps: {config.total_steps} at batch {config.batch_size} "
      f"({steps_run} run in this process, {train_seconds:.0f} s of training)",
      "",
      "## Evaluation",
      "",
  ]
  if baseline:
    lines += ["| metric | trained | random init |", "|---|---|---|"]
    for k, v in final.items():
      b = f"{baseline[k]:.4f}" if k in baseline else "-"
      lines.append(f"| {k} | {v:.4f} | {b} |")
  else:
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in final.items()]
  lines += ["", "![loss curve](loss_curve.png)", ""]
  if os.path.exists(os.path.join(workdir, "reconstructions.png")):
    lines += ["![original / masked / reconstructed](reconstructions.png)", ""]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines))
