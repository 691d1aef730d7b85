"""Preemption: a killed run resumes to the same result; a preemption notice
(SIGTERM) checkpoints the current step and the run resumes from it to the
same result; a corrupt latest checkpoint is set aside and the last good one
is used; a checkpoint of another config is one error line, and nothing is
set aside."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, SMOKE, checkpoint_steps, run_cli
from maskmodel import checkpoint

FAST = ["--config.evals.names=()", "--config.checkpoint_every=10",
        "--config.model.depth=2"]


def _final_state(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = mngr.latest_step()
  state = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  return step, state


TOTAL = ["--config.total_steps=150"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The final (step, state) of a 150-step run that nothing interrupts."""
  ref = str(tmp_path_factory.mktemp("ref"))
  assert run_cli("--config", SMOKE, "--workdir", ref, *TOTAL, *FAST).returncode == 0
  return _final_state(ref)


def _start(workdir, *extra):
  return subprocess.Popen(
      [sys.executable, "-m", "maskmodel.main", "--config", SMOKE,
       "--workdir", workdir, *TOTAL, *FAST, *extra],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _resume_and_compare(workdir, from_step, uninterrupted, *extra):
  resumed = run_cli("--config", SMOKE, "--workdir", workdir, *TOTAL, *FAST, *extra)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {from_step}" in resumed.stdout
  (s1, a), (s2, b) = uninterrupted, _final_state(workdir)
  assert s1 == s2 == 150
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_killed_run_resumes_to_identical_params(tmp_path, uninterrupted):
  killed = str(tmp_path / "killed")
  proc = _start(killed)
  deadline = time.time() + 300
  ckpt_dir = os.path.join(killed, "checkpoints")
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(p.isdigit() and int(p) >= 20
                                       for p in os.listdir(ckpt_dir)):
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL, "run ended before it could be killed"
  steps_at_kill = checkpoint_steps(killed)
  assert steps_at_kill and max(steps_at_kill) < 150
  _resume_and_compare(killed, max(steps_at_kill), uninterrupted)


def test_preemption_notice_checkpoints_the_current_step(tmp_path, uninterrupted):
  # No periodic checkpoints: whatever is saved, SIGTERM saved it.
  workdir, no_periodic = str(tmp_path / "preempted"), "--config.checkpoint_every=0"
  proc = _start(workdir, no_periodic)
  for line in proc.stdout:  # the loop logs every 5 steps
    m = re.match(r"step (\d+)/150", line)
    if m and int(m.group(1)) >= 20:
      proc.send_signal(signal.SIGTERM)
      break
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
  m = re.search(r"preempted: saved a checkpoint at step (\d+) of 150", out)
  assert m, out[-2000:]
  step = int(m.group(1))
  assert 20 <= step < 150 and checkpoint_steps(workdir) == [step]
  _resume_and_compare(workdir, step, uninterrupted, no_periodic)


def test_corrupt_latest_checkpoint_falls_back(tmp_path):
  wd = str(tmp_path / "run")
  assert run_cli("--config", SMOKE, "--workdir", wd, "--config.total_steps=30",
                 *FAST).returncode == 0
  assert checkpoint_steps(wd) == [10, 20, 30]
  # Corrupt the newest step: overwrite every file it holds.
  for root, _, files in os.walk(os.path.join(wd, "checkpoints", "30")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\x00garbage")
  proc = run_cli("--config", SMOKE, "--workdir", wd, "--config.total_steps=40", *FAST)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "checkpoint step 30" in proc.stderr and "unreadable" in proc.stderr
  assert "resumed from step 20" in proc.stdout
  assert os.path.isdir(os.path.join(wd, "checkpoints", "30.corrupt"))
  assert checkpoint_steps(wd)[-1] == 40


TINY = ["--config.total_steps=2", "--config.checkpoint_every=1",
        "--config.optimizer.warmup_steps=0", "--config.evals.names=()"]


def test_changed_config_is_one_error_and_keeps_every_step(tmp_path):
  wd = str(tmp_path / "run")
  assert run_cli("--config", SMOKE, "--workdir", wd, *TINY).returncode == 0
  proc = run_cli("--config", SMOKE, "--workdir", wd, *TINY, "--config.model.width=48")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: checkpoint step 2 "), lines
  assert "params/encoder/cls_token has shape (1, 1, 32) there but (1, 1, 48)" in lines[0]
  assert "--workdir" in lines[0]
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["1", "2"]


def _tiny_state(value):
  return {"step": jnp.int32(value), "params": {"w": jnp.full((4,), value, jnp.float32)}}


def test_damaged_arrays_are_set_aside_and_shape_changes_are_not(tmp_path):
  """Step 2's array files are garbage but its metadata reads: set aside, step 1
  restored. A target of other shapes is an error that renames nothing."""
  directory = str(tmp_path / "ckpt")
  ckpt = checkpoint.Checkpointer(directory)
  for step in (1, 2):
    ckpt.save(step, _tiny_state(step), {"pos": step})
  ckpt.wait()
  wider = {"step": jnp.int32(0), "params": {"w": jnp.zeros((5,), jnp.float32)}}
  with pytest.raises(checkpoint.CheckpointError, match=r"params/w has shape \(4,\) "
                     r"there but \(5,\) in the config.*new --workdir"):
    checkpoint.Checkpointer(directory).restore_latest(wider)
  assert sorted(os.listdir(directory)) == ["1", "2"]

  # The array data (OCDBT's `d/` folders); the tree metadata stays intact.
  for root, _, files in os.walk(os.path.join(directory, "2", "state")):
    for f in files:
      if os.path.basename(root) == "d":
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"\x00garbage")
  with pytest.warns(UserWarning, match="checkpoint step 2 .* is unreadable"):
    state, data = checkpoint.Checkpointer(directory).restore_latest(_tiny_state(0))
  assert int(state["step"]) == 1 and data == {"pos": 1}
  np.testing.assert_array_equal(state["params"]["w"], np.ones(4))
  assert sorted(os.listdir(directory)) == ["1", "2.corrupt"]


def _state_with_teacher(value):
  return {"step": jnp.int32(value),
          "params": {"w": jnp.full((4,), value, jnp.float32)},
          "task_state": {"frozen": {"teacher": jnp.arange(6, dtype=jnp.float32)}}}


def _frozen_commit_time(directory):
  return ocp.StandardCheckpointer().metadata(
      os.path.join(directory, checkpoint.FROZEN)).init_timestamp_nsecs


def test_frozen_weights_are_written_once_and_restored_with_every_step(tmp_path):
  directory = str(tmp_path / "ckpt")
  frozen = {"step": False, "params": {"w": False},
            "task_state": {"frozen": {"teacher": True}}}
  ckpt = checkpoint.Checkpointer(directory, frozen=frozen)
  ckpt.save(1, _state_with_teacher(1), {"pos": 1})
  ckpt.wait()
  written = _frozen_commit_time(directory)
  ckpt.save(2, _state_with_teacher(2), {"pos": 2})
  ckpt.wait()
  assert _frozen_commit_time(directory) == written  # not rewritten
  steps = ocp.CheckpointManager(
      directory, item_handlers={"state": ocp.StandardCheckpointHandler()})
  for step in (1, 2):  # the steps hold no teacher
    meta = steps.item_metadata(step)["state"].tree
    assert meta["task_state"]["frozen"]["teacher"] is None
    assert meta["params"]["w"] is not None

  target = jax.tree.map(jnp.zeros_like, _state_with_teacher(0))
  state, data = checkpoint.Checkpointer(directory, frozen=frozen).restore_latest(target)
  assert int(state["step"]) == 2 and data == {"pos": 2}
  np.testing.assert_array_equal(state["task_state"]["frozen"]["teacher"], np.arange(6))
  np.testing.assert_array_equal(state["params"]["w"], np.full(4, 2.0))

  # Another teacher shape, or no frozen folder: one error, nothing moved.
  other = dict(target, task_state={"frozen": {"teacher": jnp.zeros(7)}})
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"frozen weights .*/frozen/teacher has shape \(6,\) there but \(7,\)"):
    checkpoint.Checkpointer(directory, frozen=frozen).restore_latest(other)
  shutil.rmtree(os.path.join(directory, checkpoint.FROZEN))
  with pytest.raises(checkpoint.CheckpointError, match="needs the frozen weights"):
    checkpoint.Checkpointer(directory, frozen=frozen).restore_latest(target)
  assert sorted(os.listdir(directory)) == ["1", "2"]
