"""Metric writing: JSONL (one record per line) plus TensorBoard event files."""
from __future__ import annotations

import json
import os

import jax


class MetricWriter:
  """Writes `{"step": s, "train/loss": ...}` lines to `metrics.jsonl` and the
  same scalars to TensorBoard. Only process 0 writes."""

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict):
    if not self.active:
      return
    rec = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(rec) + "\n")
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), step)

  def close(self):
    if self._tb is not None:
      self._tb.close()

  def truncate_after(self, step: int):
    """Drops records newer than `step`: after a resume they will be redone."""
    if not self.active or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      keep = [l for l in f if json.loads(l)["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, self.path)
