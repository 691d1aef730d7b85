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
from etils.epath import register


def workdir_path(path) -> epath.Path:
  """`path` (a str or path, local or a `scheme://` URI) as an `epath.Path`.

  Raises ValueError, naming the schemes epath knows, for any other URI.
  """
  try:
    out = epath.Path(path)
  except KeyError:
    known = ", ".join(sorted(register._URI_PREFIXES_TO_CLS))  # pylint: disable=protected-access
    raise ValueError(
        f"{os.fspath(path)!r}: its scheme is not one etils.epath can open; use "
        f"a local path or one of {known}") from None
  if "://" not in os.fspath(out):
    out = epath.Path(os.path.abspath(os.fspath(out)))
  return out
