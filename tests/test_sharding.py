"""Data parallelism: a train step on 8 (simulated) devices equals the same
step on one device."""
import os
import re
import signal
import subprocess
import sys
import textwrap

from conftest import ROOT, SMOKE, checkpoint_steps

SCRIPT = textwrap.dedent(f"""
  import functools, sys
  import jax, numpy as np
  sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
  from conftest import load_config
  from maskmodel import data, sharding, train
  from maskmodel.tasks import get_task

  assert jax.device_count() == 8, jax.devices()
  config = load_config({SMOKE!r})
  task = get_task(config)
  src = data.get_source("mnist5k", "train")
  ds = data.train_dataset(src, batch_size=32, seed=0, spec=data.image_spec(config.data))
  state0, tx, schedule = train.initial_state(config, task, ds[0])

  def run(devices):
    mesh = sharding.make_mesh(devices)
    repl, dsh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step = jax.jit(functools.partial(train.train_step, task, tx, schedule),
                   in_shardings=(repl, dsh), out_shardings=(repl, repl))
    state = jax.device_put(state0, repl)
    for i in range(3):
      batch = sharding.shard_batch(ds[i], dsh)
      assert len(batch["image"].sharding.device_set) == len(devices)
      state, metrics = step(state, batch)
    return jax.device_get(state["params"]), float(metrics["loss"])

  p8, l8 = run(jax.devices())
  p1, l1 = run(jax.devices()[:1])
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  # Reductions run in another order on 8 devices, and Adam's first steps
  # (update ~ lr * sign(g)) magnify tiny gradient differences, so compare at
  # a small fraction of the learning rate.
  diff = max(float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(p8), jax.tree.leaves(p1)))
  print("max |p8 - p1| =", diff)
  assert diff < 1e-5, diff
  moved = max(float(np.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(p8), jax.tree.leaves(jax.device_get(state0["params"]))))
  assert moved > 1e-4  # the steps did change the params
  print("OK", l8, l1)
""")


def test_sharded_step_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK" in proc.stdout


def _two_processes(workdir, *args):
  """Starts the CLI as processes 0 and 1 of one run (gloo collectives on CPU)."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [subprocess.Popen(
      [sys.executable, "-m", "maskmodel.main", "--config", SMOKE, "--workdir", str(workdir),
       "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
       "--process_id", str(i), *args],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def test_two_process_run(tmp_path):
  """Two JAX processes train, checkpoint and evaluate one run together
  through the CLI."""
  wd = tmp_path / "run"
  procs = _two_processes(wd, "--config.total_steps=10", "--config.evals.names=('knn',)")
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "devices=2" in outs[0][0] and "final: knn_accuracy=" in outs[0][0]
  assert "step 5/10" not in outs[1][0]  # only process 0 logs progress
  assert (wd / "report.md").exists()
  assert checkpoint_steps(wd) == [10]


def test_two_process_preemption_notice(tmp_path):
  """SIGTERM to one process only: both agree on a step, checkpoint it
  together and exit with 143."""
  wd = tmp_path / "run"
  procs = _two_processes(wd, "--config.total_steps=1000", "--config.evals.names=()",
                         "--config.checkpoint_every=0")
  for line in procs[0].stdout:
    m = re.match(r"step (\d+)/1000", line)
    if m and int(m.group(1)) >= 20:
      procs[1].send_signal(signal.SIGTERM)
      break
  outs = [p.communicate(timeout=300) for p in procs]
  steps = []
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    steps += [int(m) for m in re.findall(r"preempted: saved a checkpoint at step (\d+)", out)]
  assert len(steps) == 2 and steps[0] == steps[1] < 1000, outs
  assert checkpoint_steps(wd) == [steps[0]]
