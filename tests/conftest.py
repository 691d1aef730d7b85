"""Shared helpers: config loading and running the CLI as a user would."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

# One persistent XLA compilation cache for the whole session, this process,
# the xdist workers and every subprocess a test starts: many tests compile
# the same small programs (the smoke configs' steps and evals, a resumed run
# the program its first run compiled). Set before anything imports jax; a
# cache the caller chose is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  _CACHE = tempfile.mkdtemp(prefix="maskmodel-tests-xla-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

# The test programs are tiny, so compiling them costs far more than running
# them: LLVM at -O0 cuts XLA:CPU's compile times by a third to a half, and
# XLA:CPU's older loop emitters (no fusion emitters) halve a training step's
# compile again (the whole suite: 676 s -> 574 s on 2 cores). Neither
# changes a result the suite checks beyond float rounding. Set before jax
# starts and inherited by every subprocess; `xla_env` adds a simulated
# device count on top.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                  "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = " ".join(
    f for f in (os.environ.get("XLA_FLAGS", ""), TEST_XLA_FLAGS) if f)
BASE_XLA_FLAGS = os.environ["XLA_FLAGS"]


def xla_env(devices=8, **extra):
  """os.environ for a subprocess with `devices` simulated CPU devices."""
  flags = f"{BASE_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"
  return dict(os.environ, XLA_FLAGS=flags, **extra)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "mae", "mnist_vit_tiny.py") + ":smoke"


def load_config(path_arg):
  """Loads `configs/...py[:arg]` the way `--config` does."""
  path, _, arg = path_arg.partition(":")
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg or None)


def load_experiment(name, script="run.py"):
  """`experiments/<name>/<script>` imported as a module (they are scripts,
  not a package), for tests of their functions and `main`."""
  path = os.path.join(ROOT, "experiments", name, script)
  spec = importlib.util.spec_from_file_location(f"{name}_{script[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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


def random_byte_windows(rng, batch, seq_len, lengths=None):
  """`(tokens, mask)`: byte-tokenizer windows ([CLS] ... [SEP] + padding) of
  random content, `lengths[b]` real tokens each (default: full)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from maskmodel.data.tokenizers import get_tokenizer  # pylint: disable=g-import-not-at-top
  tok = get_tokenizer("bytes")
  tokens = np.zeros((batch, seq_len), np.int32)
  mask = np.zeros((batch, seq_len), bool)
  for b in range(batch):
    n = seq_len if lengths is None else int(lengths[b])
    tokens[b], mask[b] = tok.window(rng.randint(0, 256, n - 2), seq_len)
  return tokens, mask


@pytest.fixture
def smoke_config():
  return load_config(SMOKE)


RESUME_SCRIPT = """
import json, os, shutil, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from conftest import load_config
from maskmodel import train

assert jax.device_count() == 8
for path, workdir in json.loads(sys.argv[1]):
  config = load_config(path)
  config.total_steps, config.checkpoint_every = 6, 3
  # The random-init and pixel baselines, the probe and the low-label
  # fine-tunes are tested on their own; here they would only multiply the
  # evals (and compile a fine-tuning step on 8 devices). One k-NN round at
  # the end, on part of each split: the evals only have to run.
  config.evals.compare_random_init = config.evals.compare_pixels = False
  config.evals.names = tuple(n for n in config.evals.names
                             if n not in ("linear_probe", "low_label"))
  config.evals.knn.every = 0
  config.data.train_examples = min(config.data.train_examples or 1000, 1000)
  config.data.test_examples = min(config.data.test_examples or 500, 500)
  result = train.train_and_evaluate(config, workdir)
  first = jax.device_get(result["state"])
  print("FINAL " + json.dumps(result["final"]))
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))  # resume from 3
  config.evals.names = ()
  again = jax.device_get(train.train_and_evaluate(config, workdir)["state"])
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
print("OK")
"""


def assert_resumes_bit_exactly(config_path, workdir, *more):
  """Trains `config_path` for 6 steps on 8 simulated devices with its evals
  (k-NN at the end only, on part of each split; no linear probe, no
  random-init or pixel baselines), then again from its step-3 checkpoint,
  checks that the two final states are equal, and returns the first run's
  final eval metrics. `more` are further (config_path, workdir) pairs
  checked in the same process (one JAX start-up); then a list of the
  metrics of each comes back."""
  runs = [(config_path, str(workdir))] + [(c, str(w)) for c, w in more]
  script = RESUME_SCRIPT.format(tests=os.path.join(ROOT, "tests"))
  proc = subprocess.run([sys.executable, "-c", script, json.dumps(runs)],
                        env=xla_env(8),
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK" in proc.stdout
  finals = [json.loads(l[len("FINAL "):]) for l in proc.stdout.splitlines()
            if l.startswith("FINAL ")]
  assert len(finals) == len(runs), proc.stdout[-2000:]
  return finals if more else finals[0]


# The slowest test files (by `pytest --durations`), started first: with
# `-n 2 --dist loadfile` a worker takes whole files in collection order, so
# a long file that starts last keeps one worker busy while the other idles.
SLOW_FILES_FIRST = ("test_scaleout.py", "test_checkpoint.py", "test_colabs.py",
                    "test_tokens.py", "test_ijepa.py", "test_multihost.py",
                    "test_lut.py", "test_imagenet_configs.py", "test_mlm.py",
                    "test_salt.py", "test_mergedna.py", "test_cae.py",
                    "test_meap.py", "test_mergedna_table.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
