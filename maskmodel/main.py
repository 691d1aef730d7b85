"""Command line: python -m maskmodel.main --config FILE.py[:arg] --workdir DIR
[--config.key=value ...]. Rerunning the same command resumes the run.

On SIGTERM (a scheduler's preemption notice) the run checkpoints the step it
is at and exits with status 143; rerunning resumes from that step."""
from __future__ import annotations

import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (file.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, report).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-process runs: host:port of process 0. With --num_processes and "
    "--process_id; on TPU pods use --distributed_auto instead.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED_AUTO = flags.DEFINE_bool(
    "distributed_auto", False, "Call jax.distributed.initialize() with the "
    "cluster's own discovery (TPU pods, SLURM).")

def _fail(msg):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl parsing with a one-line error for unknown or bad config overrides."""
  for i, a in enumerate(argv):
    if a.startswith("--config=") or a == "--config":
      if "=" in a:
        value = a.split("=", 1)[1]
      else:
        value = argv[i + 1] if i + 1 < len(argv) else ""
      path = value.split(":")[0]
      if not path or path.startswith("-"):  # absl would take the next flag as the file
        _fail("--config needs a config file, e.g. --config "
              "configs/mae/mnist_vit_tiny.py.")
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


def init_distributed():
  """Joins a multi-process run before any JAX computation."""
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED_AUTO.value:
    jax.distributed.initialize()
  elif _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      _fail("--coordinator_address needs --num_processes and --process_id.")
    # Cross-process collectives for the CPU backend; GPU/TPU ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep orbax's per-save INFO lines out
  if _CONFIG.value is None or _WORKDIR.value is None:
    _fail("--config and --workdir are required, e.g. --config "
          "configs/mae/mnist_vit_tiny.py --workdir /tmp/mae_mnist.")
  init_distributed()
  from maskmodel import checkpoint, train  # pylint: disable=g-import-not-at-top
  from maskmodel.config import ConfigError  # pylint: disable=g-import-not-at-top
  from maskmodel.data import DataError  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, DataError, checkpoint.CheckpointError) as e:
    _fail(str(e))
  except train.Preempted as e:
    print(e, flush=True)
    # Not 0: a scheduler must not take a preempted run for a finished one.
    sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
