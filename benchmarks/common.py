"""What every benchmark script shares: how it reports, and its line fits."""
from __future__ import annotations

import json
import pathlib

import numpy as np


def emit_json(doc, out=None, indent=1):
  """Prints `doc` as one JSON document, and also writes it to `out` if set."""
  text = json.dumps(doc, indent=indent)
  print(text)
  if out:
    pathlib.Path(out).write_text(text + "\n")


def linear_fit(x, y):
  """Least-squares `y = intercept + slope * x`; returns (intercept, slope,
  the largest |residual|)."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  slope, intercept = np.polyfit(x, y, 1)
  return (float(intercept), float(slope),
          float(np.abs(intercept + slope * x - y).max()))
