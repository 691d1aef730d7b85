"""What every benchmark script shares: how it reports."""
from __future__ import annotations

import json
import pathlib


def emit_json(doc, out=None, indent=1):
  """Prints `doc` as one JSON document, and also writes it to `out` if set."""
  text = json.dumps(doc, indent=indent)
  print(text)
  if out:
    pathlib.Path(out).write_text(text + "\n")
