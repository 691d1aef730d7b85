"""Shared helpers: config loading and running the CLI as a user would."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "mae", "mnist_vit_tiny.py") + ":smoke"


def load_config(path_arg):
  """Loads `configs/...py[:arg]` the way `--config` does."""
  path, _, arg = path_arg.partition(":")
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg or None)


def run_cli(*args, env=None, timeout=600):
  """Runs `python -m maskmodel.main ARGS`; returns the CompletedProcess."""
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, "-m", "maskmodel.main", *args],
                        cwd=ROOT, env=full_env, capture_output=True, text=True,
                        timeout=timeout)


def checkpoint_steps(workdir):
  """The steps saved under `workdir/checkpoints`, sorted."""
  return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints"))
                if p.isdigit())


@pytest.fixture
def smoke_config():
  return load_config(SMOKE)
