"""Metric writing: JSONL (one record per line) plus TensorBoard event files.

The workdir may be local or on cloud storage (`gs://...`): files are written
through `etils.epath`. Object stores cannot append, so on a `gs://` workdir
each `write` rewrites `metrics.jsonl` whole; the file stays small (one line
per logged step).
"""
from __future__ import annotations

import json
import os

import jax

from maskmodel.paths import workdir_path


class MetricWriter:
  """Writes `{"step": s, "train/loss": ...}` lines to `metrics.jsonl` and the
  same scalars to TensorBoard. Only process 0 writes."""

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    workdir = workdir_path(workdir)
    self.path = workdir / "metrics.jsonl"
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.fspath(workdir / "tensorboard"))

  def write(self, step: int, scalars: dict):
    if not self.active:
      return
    rec = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    line = json.dumps(rec) + "\n"
    if "://" in os.fspath(self.path):  # no appends on object stores
      old = self.path.read_text() if self.path.exists() else ""
      self.path.write_text(old + line)
    else:
      with self.path.open("a") as f:
        f.write(line)
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), step)

  def close(self):
    if self._tb is not None:
      self._tb.close()

  def truncate_after(self, step: int):
    """Drops records newer than `step`: after a resume they will be redone."""
    if not self.active or not self.path.exists():
      return
    keep = [l for l in self.path.read_text().splitlines(keepends=True)
            if json.loads(l)["step"] <= step]
    tmp = self.path.parent / (self.path.name + ".tmp")
    tmp.write_text("".join(keep))
    tmp.replace(self.path)
