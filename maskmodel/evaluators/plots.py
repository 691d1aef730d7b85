"""Figures for the run report: loss curve and reconstruction grid.

Paths are `etils.epath` paths or strings, local or on cloud storage.
Figures are drawn with matplotlib's object API, never pyplot, so importing
maskmodel leaves a notebook's backend alone; matplotlib itself loads on the
first figure, not with the training loop.
"""
from __future__ import annotations

import json

import numpy as np

from maskmodel.paths import workdir_path


def loss_curve(metrics_jsonl, out_png, key="loss"):
  steps, values = [], []
  with workdir_path(metrics_jsonl).open() as f:
    for line in f:
      rec = json.loads(line)
      if f"train/{key}" in rec:
        steps.append(rec["step"])
        values.append(rec[f"train/{key}"])
  fig = _figure(figsize=(5, 3.2), dpi=120)
  ax = fig.subplots()
  ax.plot(steps, values)
  ax.set_xlabel("step")
  ax.set_ylabel(f"train {key}")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  _save(fig, out_png)


def image_grid(rows: dict, out_png, mean, std):
  """`rows` maps a title to images [n, H, W, C] (normalized); one row each."""
  names = list(rows)
  n = len(next(iter(rows.values())))
  fig = _figure(figsize=(1.2 * n, 1.3 * len(names)), dpi=120)
  axes = fig.subplots(len(names), n, squeeze=False)
  for r, name in enumerate(names):
    imgs = np.clip(rows[name] * np.asarray(std) + np.asarray(mean), 0, 1)
    for c in range(n):
      ax = axes[r, c]
      img = imgs[c]
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray",
                vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[r, 0].set_ylabel(name, fontsize=8)
  fig.tight_layout()
  _save(fig, out_png)


def _figure(**kwargs):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(**kwargs)


def _save(fig, out_png):
  """Saves `fig` as a PNG through epath (a local or gs:// path)."""
  with workdir_path(out_png).open("wb") as f:
    fig.savefig(f, format="png")
