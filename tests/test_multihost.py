"""Scale out: workdirs through etils.epath, per-process augmentations, the
forgotten-jax.distributed error, and two real processes training together
on CPU (gloo collectives)."""
import hashlib
import json
import os
import socket
import subprocess
import sys

import grain
import numpy as np
import pytest

from conftest import BASE_XLA_FLAGS, ROOT, SMOKE, checkpoint_steps, run_cli
from maskmodel import data
from maskmodel.data import ImageSpec
from maskmodel.data.pipeline import augment_seed, train_augment
from maskmodel.main import launched_processes

# --- Workdirs on a path scheme ------------------------------------------------

# Registers `localfs://`, a test-only epath scheme that resolves to a local
# folder, then runs the CLI. Code that treats the workdir as a plain string
# (os.path.abspath, open) would write into a folder named `localfs:` in the
# current directory instead.
LOCALFS_MAIN = """
import os, sys
from etils import epath
from etils.epath import gpath

@epath.register_path_cls("localfs://")
class LocalFsPath(gpath.PosixGPath):
  def __new__(cls, *parts):
    full = "/".join(os.fspath(p) for p in parts)
    return super().__new__(cls, full.removeprefix("localfs://"))

from absl import app
from maskmodel import main
sys.argv = ["maskmodel.main", *sys.argv[1:]]
app.run(main.main, flags_parser=main.parse_flags)
"""


def _run_localfs(cwd, *args):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [ROOT, os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-c", LOCALFS_MAIN, *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)


def test_workdir_on_a_uri_scheme_writes_and_resumes(tmp_path):
  real, cwd = tmp_path / "bucket" / "run", tmp_path / "cwd"
  cwd.mkdir()
  uri = f"localfs://{real}"
  common = ["--config", SMOKE, "--workdir", uri, "--config.checkpoint_every=2",
            "--config.log_every=2", "--config.optimizer.warmup_steps=1",
            "--config.evals.names=('reconstruction',)"]
  first = _run_localfs(cwd, *common, "--config.total_steps=4")
  assert first.returncode == 0, first.stderr[-3000:]
  assert checkpoint_steps(real) == [2, 4]
  for name in ("metrics.jsonl", "loss_curve.png", "reconstructions.png", "report.md"):
    assert (real / name).stat().st_size > 0, name
  assert any(p.name.startswith("events") for p in (real / "tensorboard").iterdir())
  again = _run_localfs(cwd, *common, "--config.total_steps=6")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step 4" in again.stdout
  assert checkpoint_steps(real) == [2, 4, 6]
  steps = [json.loads(l)["step"] for l in open(real / "metrics.jsonl")
           if "train/loss" in l]
  assert steps == [2, 4, 6]
  assert list(cwd.iterdir()) == []  # nothing went to a local folder "localfs:"


def test_workdir_of_an_unknown_scheme_is_one_error_line(tmp_path):
  proc = run_cli("--config", SMOKE, "--workdir", "nosuch://bucket/run")
  _assert_one_error_line(proc, "--workdir 'nosuch://bucket/run'", "gs://",
                         "local path")


def test_local_workdir_paths_stay_absolute_local(tmp_path, monkeypatch):
  from maskmodel.paths import workdir_path  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  assert str(workdir_path("run")) == str(tmp_path / "run")
  assert str(workdir_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"


# --- Augmentations per process ------------------------------------------------

SPEC = ImageSpec(size=28, mean=(0.5,), std=(0.5,))


class _SameImage:
  """Every record is the same image: pipelines can differ only in their
  random crops and flips."""

  def __init__(self, n=64):
    self.image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), np.uint8)
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": self.image, "label": 0}


def _pipeline(source, process_index, process_count=2):
  return data.train_dataset(source, batch_size=4, seed=0, spec=SPEC,
                            crop_scale=(0.2, 1.0), flip=True,
                            process_index=process_index,
                            process_count=process_count)


def test_processes_draw_different_augmentations():
  src = _SameImage()
  a, b = _pipeline(src, 0)[0]["image"], _pipeline(src, 1)[0]["image"]
  for k in range(4):  # the same local index, another crop on each process
    assert not np.array_equal(a[k], b[k]), k


def test_process_zero_draws_what_a_single_process_drew_before():
  src = data.get_source("mnist5k", "train")
  augment = lambda r, rng: train_augment(r, rng, SPEC, (0.2, 1.0), True)
  # The pipeline as it was before seeds were per process.
  before = (grain.MapDataset.source(src).shuffle(seed=0).repeat(None)
            .random_map(augment, seed=0).batch(4, drop_remainder=True))
  now = _pipeline(src, 0, process_count=1)
  for i in range(3):
    np.testing.assert_array_equal(before[i]["image"], now[i]["image"])
  assert augment_seed(0, 0) == 0 and augment_seed(7, 0) == 7
  assert len({augment_seed(0, i) for i in range(64)}) == 64


# --- A multi-process launch without jax.distributed ---------------------------

def _assert_one_error_line(proc, *needles):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  err = proc.stderr.strip().splitlines()[-1]
  assert err.startswith("error: "), err
  for n in needles:
    assert n in err, err


@pytest.mark.parametrize("env,needle", [
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "one of 4 processes (OMPI_COMM_WORLD_SIZE=4)"),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, "TPU_WORKER_HOSTNAMES lists 2 hosts"),
])
def test_forgotten_jax_distributed_is_one_error_line(tmp_path, env, needle):
  proc = run_cli("--config", SMOKE, "--workdir", str(tmp_path / "w"), env=env)
  _assert_one_error_line(proc, needle, "--distributed_auto", "--coordinator_address")
  assert not (tmp_path / "w").exists()  # stopped before touching the workdir


def test_num_processes_without_a_coordinator(tmp_path):
  proc = run_cli("--config", SMOKE, "--workdir", str(tmp_path / "w"),
                 "--num_processes=2")
  _assert_one_error_line(proc, "--num_processes=2 needs --coordinator_address")


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "8"}, None),  # one task of many
    ({"WORLD_SIZE": "1", "OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
    ({"SLURM_STEP_NUM_TASKS": "16"}, (16, "SLURM_STEP_NUM_TASKS=16")),
    ({"PMI_SIZE": "2"}, (2, "PMI_SIZE=2")),
    ({"WORLD_SIZE": "8"}, (8, "WORLD_SIZE=8")),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},
     (0, "JAX_COORDINATOR_ADDRESS=10.0.0.1:1234")),
])
def test_launched_processes(env, expected):
  assert launched_processes(env) == expected


# --- Two processes on localhost -----------------------------------------------

# Each process runs the CLI (which joins the run through
# jax.distributed.initialize with gloo CPU collectives) with hooks that record
# what it trained on: the source images it read, the RNG state its
# augmentations started from, and the losses the loop fetched.
TWO_PROCESS_MAIN = """
import hashlib, json, sys
from absl import app
import jax
import numpy as np
from maskmodel import main, metrics, train
import maskmodel.data as data_lib

seen = {"images": set(), "rngs": set(), "eval": set()}
losses = {}
build = data_lib.train_dataset

def recording_dataset(source, *, preprocess, **kw):
  def recorded(record, rng):
    seen["images"].add(hashlib.sha1(record["image"].tobytes()).hexdigest())
    seen["rngs"].add(hashlib.sha1(repr(rng.bit_generator.state).encode()).hexdigest())
    return preprocess(record, rng)
  return build(source, preprocess=recorded, **kw)

class RecordingWriter(metrics.MetricWriter):
  def write(self, step, scalars):
    if "train/loss" in scalars:
      losses[int(step)] = float(scalars["train/loss"])
    super().write(step, scalars)

data_lib.train_dataset = recording_dataset

import maskmodel.evaluators.features as features_lib
real_eval_batches = features_lib.eval_batches

def recording_eval_batches(source, **kw):
  for batch, n in real_eval_batches(source, **kw):
    for image in batch["image"]:
      seen["eval"].add(hashlib.sha1(image.tobytes()).hexdigest())
    yield batch, n

features_lib.eval_batches = recording_eval_batches
train.MetricWriter = RecordingWriter
real_train = train.train_and_evaluate

def recorded_train(config, workdir):
  out = real_train(config, workdir)
  params = jax.tree.leaves(out["state"]["params"])
  digest = float(sum(np.asarray(x.addressable_data(0), np.float64).sum() for x in params))
  print("RESULT " + json.dumps({
      "process": jax.process_index(), "count": jax.process_count(),
      "losses": losses, "params": digest,
      "images": sorted(seen["images"]), "rngs": sorted(seen["rngs"])}), flush=True)
  # To a file: on stdout, thousands of hashes would fill the pipe while the
  # test reads the other process, and the two would wait on each other.
  with open(f"{workdir}/eval_images_{jax.process_index()}.json", "w") as f:
    json.dump(sorted(seen["eval"]), f)
  return out

train.train_and_evaluate = recorded_train
sys.argv = ["maskmodel.main", *sys.argv[1:]]
app.run(main.main, flags_parser=main.parse_flags)
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_together(tmp_path):
  wd, port = tmp_path / "run", _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [ROOT, os.environ.get("PYTHONPATH", "")]))
  env["XLA_FLAGS"] = BASE_XLA_FLAGS  # one CPU device per process
  procs = [subprocess.Popen(
      [sys.executable, "-c", TWO_PROCESS_MAIN, "--config", SMOKE,
       "--workdir", str(wd), f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}", "--config.total_steps=4",
       "--config.log_every=1", "--config.checkpoint_every=0",
       "--config.batch_size=8", "--config.optimizer.warmup_steps=1",
       "--config.evals.names=('knn',)", "--config.evals.compare_random_init=False",
       "--config.evals.compare_pixels=False"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=240)
      assert p.returncode == 0, err[-3000:]
      outs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  results = [json.loads(l[len("RESULT "):]) for out in outs
             for l in out.splitlines() if l.startswith("RESULT ")]
  r0, r1 = sorted(results, key=lambda r: r["process"])
  assert (r0["process"], r1["process"], r0["count"]) == (0, 1, 2)
  # One model: the same loss at every step, the same params at the end.
  assert list(r0["losses"]) == ["1", "2", "3", "4"]
  assert r0["losses"] == r1["losses"]
  assert all(np.isfinite(v) for v in r0["losses"].values())
  assert r0["params"] == r1["params"]
  # Two shards of the data, and augmentations drawn from two seeds.
  assert r0["images"] and r1["images"]
  assert not set(r0["images"]) & set(r1["images"])
  assert r0["rngs"] and not set(r0["rngs"]) & set(r1["rngs"])
  # The evals: each process decoded about half of the split's images (only
  # the padding of a last batch may repeat the last image on both).
  e0, e1 = (set(json.loads((wd / f"eval_images_{i}.json").read_text()))
            for i in (0, 1))
  assert len(e0 & e1) <= 1, len(e0 & e1)
  assert 0.4 < len(e0) / len(e0 | e1) < 0.6, (len(e0), len(e1))
  # One workdir: process 0 logged, evaluated the run together with process
  # 1 and wrote the metrics and the report; both wrote the checkpoint.
  assert "final: knn_accuracy=" in outs[0] and "step 2/4" not in outs[1]
  assert (wd / "report.md").exists()
  assert checkpoint_steps(wd) == [4]
  assert sum("train/loss" in l for l in open(wd / "metrics.jsonl")) == 4
