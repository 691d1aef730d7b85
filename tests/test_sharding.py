"""Two processes of one run: a preemption notice to one of them checkpoints
the same step in both. (A step on any mesh against one device is in
test_scaleout.py; two processes training together in test_multihost.py.)"""
import re
import signal
import subprocess
import sys

from conftest import ROOT, SMOKE, checkpoint_steps


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
