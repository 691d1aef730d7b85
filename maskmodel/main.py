"""Command line: python -m maskmodel.main --config FILE.py[:arg] --workdir DIR
[--config.key=value ...]. Rerunning the same command resumes the run.

On SIGTERM (a scheduler's preemption notice) the run checkpoints the step it
is at and exits with status 143; rerunning resumes from that step.

`--workdir` may be local or on cloud storage (`gs://BUCKET/run`).

Multi-host: pass `--distributed_auto` (TPU pods, SLURM, Open MPI) or
`--coordinator_address --num_processes --process_id`. A launch whose
environment says several processes (srun's SLURM_STEP_NUM_TASKS,
OMPI_COMM_WORLD_SIZE, PMI_SIZE, WORLD_SIZE, TPU_WORKER_HOSTNAMES,
JAX_COORDINATOR_ADDRESS) while JAX runs as one process stops with one line:
otherwise each process would train alone and all would write into one workdir.

A run whose loss or gradient norm becomes NaN or Inf stops with one error line
naming the step (`train.Diverged`); the last good checkpoint is kept."""
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


def launched_processes(env=None):
  """(N, "VAR=value") when the launcher's environment says this is one of
  N > 1 processes, else None. Read from SLURM, Open MPI, MPICH/PMI,
  torchrun-style launchers, Cloud TPU pods and JAX's own variables."""
  env = os.environ if env is None else env
  # srun's per-step count, not SLURM_NTASKS: a batch script that runs one
  # process in a many-task allocation is a single-process run.
  for var in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
              "WORLD_SIZE"):
    value = env.get(var, "").strip()
    if value.isdigit() and int(value) > 1:
      return int(value), f"{var}={value}"
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    return len(hosts), f"TPU_WORKER_HOSTNAMES lists {len(hosts)} hosts"
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return 0, f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']}"
  return None


def init_distributed():
  """Joins a multi-process run before any JAX computation; stops with one
  line when the environment says multi-process but JAX runs as one."""
  import jax  # pylint: disable=g-import-not-at-top
  if _NUM_PROCESSES.value and _NUM_PROCESSES.value > 1 and not _COORDINATOR.value \
      and not _DISTRIBUTED_AUTO.value:
    _fail(f"--num_processes={_NUM_PROCESSES.value} needs --coordinator_address "
          "host:port of process 0 (and --process_id), or --distributed_auto.")
  if _DISTRIBUTED_AUTO.value:
    jax.distributed.initialize()
  elif _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      _fail("--coordinator_address needs --num_processes and --process_id.")
    # Cross-process collectives for the CPU backend; GPU/TPU ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  launched = launched_processes()
  if launched and jax.process_count() == 1:
    n, why = launched
    many = f"one of {n} processes" if n else "part of a multi-process launch"
    _fail(f"this looks like {many} ({why}), but JAX runs as a single process, "
          "so each would train alone and write into one workdir; pass "
          "--distributed_auto (TPU pods, SLURM, Open MPI) or --coordinator_address "
          "HOST:PORT --num_processes N --process_id I.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep orbax's per-save INFO lines out
  if _CONFIG.value is None or _WORKDIR.value is None:
    _fail("--config and --workdir are required, e.g. --config "
          "configs/mae/mnist_vit_tiny.py --workdir /tmp/mae_mnist.")
  from maskmodel.paths import workdir_path  # pylint: disable=g-import-not-at-top
  try:
    workdir_path(_WORKDIR.value)
  except ValueError as e:
    _fail(f"--workdir {e}.")
  init_distributed()
  from maskmodel import checkpoint, train  # pylint: disable=g-import-not-at-top
  from maskmodel.config import ConfigError  # pylint: disable=g-import-not-at-top
  from maskmodel.data import DataError  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, DataError, checkpoint.CheckpointError, train.Diverged) as e:
    _fail(str(e))
  except train.Preempted as e:
    print(e, flush=True)
    # Not 0: a scheduler must not take a preempted run for a finished one.
    sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
