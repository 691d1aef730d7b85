"""Command line: python -m maskmodel.main --config FILE.py[:arg] --workdir DIR
[--config.key=value ...]. Rerunning the same command resumes the run."""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (file.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, report).")

def _fail(msg):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl parsing with a one-line error for unknown or bad config overrides."""
  for a in argv[1:]:
    if a.startswith("--config=") or (a == "--config"):
      path = (a.split("=", 1)[1] if "=" in a else
              argv[argv.index(a) + 1]).split(":")[0]
      if not os.path.exists(path):
        _fail(f"config file {path!r} does not exist; pass e.g. "
              "--config configs/mae/mnist_vit_tiny.py.")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f"{e}")
  except (AttributeError, KeyError) as e:
    bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    _fail(f"unknown config key in {' '.join(bad)} ({e}); list the keys with "
          "--config FILE --helpfull, or check the config file.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep orbax's per-save INFO lines out
  if _CONFIG.value is None or _WORKDIR.value is None:
    _fail("--config and --workdir are required, e.g. --config "
          "configs/mae/mnist_vit_tiny.py --workdir /tmp/mae_mnist.")
  from maskmodel import checkpoint, train  # pylint: disable=g-import-not-at-top
  from maskmodel.config import ConfigError  # pylint: disable=g-import-not-at-top
  from maskmodel.data import DataError  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, DataError, checkpoint.CheckpointError) as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
