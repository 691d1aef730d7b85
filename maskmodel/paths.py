"""Workdir paths, local or on cloud storage.

Every file a run writes (checkpoints, `metrics.jsonl`, TensorBoard events,
`report.md`, the figures) goes through `etils.epath`, the path library orbax
uses, so `--workdir gs://BUCKET/run` writes to the bucket and a local
`--workdir` writes to the local folder exactly as before. Local paths are
made absolute (orbax needs absolute local paths); URIs (`gs://`, `s3://`)
are kept as they are.
"""
from __future__ import annotations

import os

from etils import epath


def workdir_path(path) -> epath.Path:
  """`path` (a str or path, local or a `scheme://` URI) as an `epath.Path`."""
  out = epath.Path(path)
  if "://" not in os.fspath(out):
    out = epath.Path(os.path.abspath(os.fspath(out)))
  return out
