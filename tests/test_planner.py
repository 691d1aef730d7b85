"""The planner (`maskmodel/planner.py`): the loop's train step compiled for a
compile-only TPU slice, with memory per chip; and its one-line errors.

Needs `libtpu` (`make install` puts it in `.venv/libtpu-aot`); skipped
without it, as tests/test_tpu_compile.py is.
"""
import functools
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import SMOKE, load_config

from maskmodel import aot, planner
from maskmodel.config import ConfigError

if not aot.libtpu_available():
  pytest.skip("compile-only TPU checks need libtpu: make install puts it in "
              ".venv/libtpu-aot", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(fsdp, batch_size=32, data=None):
  c = load_config(SMOKE)
  c.batch_size = batch_size
  c.mesh = (("data", data if data is not None else -1), ("fsdp", fsdp),
            ("tensor", 1))
  return c


@functools.cache
def _plan(fsdp):
  return planner.plan(_config(fsdp), "v5e:2x2")


def _params_and_optimizer(p):
  return p["bytes"]["params"] + p["bytes"]["optimizer"]


def test_plan_reports_positive_memory_and_flops():
  p = _plan(4)
  assert p["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert p["devices"] == p["chips"] == 4
  assert p["hbm_bytes"] == 16 * 2**30
  b = p["bytes"]
  for key in ("params", "optimizer", "argument", "output", "temp",
              "generated_code", "total"):
    assert b[key] > 0, key
  assert b["total"] == (b["argument"] + b["output"] - b["alias"] + b["temp"]
                        + b["generated_code"])
  assert b["alias"] > 0  # the loop's step donates the state
  assert p["fits"] is True
  assert p["flops_per_device"] > 0
  assert any(r["spec"] == "auto_fsdp" and r["params"] for r in p["rules"])
  text = planner.format_plan(p)
  assert "fits" in text and "FLOPs per step" in text


def test_fsdp_splits_params_and_optimizer_four_ways():
  one, four = _plan(1), _plan(4)
  assert one["sharded"] == {"per_device": 0, "global": 0}
  split = four["sharded"]
  assert split["global"] > 0
  assert split["per_device"] * 4 == split["global"]  # every split is even
  # What fsdp=4 saves per device is 3/4 of the split leaves: the rest
  # (norms, biases, tokens, position embeddings) stays whole.
  saved = _params_and_optimizer(one) - _params_and_optimizer(four)
  assert saved == split["global"] - split["per_device"]
  assert _params_and_optimizer(four) < _params_and_optimizer(one)


@pytest.mark.parametrize("topology, match", [
    ("v9:2x2", "unknown TPU topology 'v9:2x2'"),
    ("v5e", "unknown TPU topology"),
    ("v5e:3x3", "libtpu does not know the topology 'v5e:3x3'"),
])
def test_bad_topology(topology, match):
  with pytest.raises(ConfigError, match=match):
    planner.plan(_config(1), topology)


def test_mesh_that_does_not_fit_the_slice():
  with pytest.raises(ConfigError, match="spans 8 devices but there are 4"):
    planner.plan(_config(8, data=1), "v5e:2x2")


def test_batch_not_divisible():
  with pytest.raises(ConfigError, match="batch_size=30 is not divisible by the 4"):
    planner.plan(_config(4, batch_size=30), "v5e:2x2")


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  return subprocess.run([sys.executable, "-m", "maskmodel.aot", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)


def test_cli_prints_the_plan():
  run = _cli("--config", SMOKE, "--topology", "v5e:2x2",
             "--config.mesh=(('data', 2), ('fsdp', 2), ('tensor', 1))")
  assert run.returncode == 0, run.stderr[-2000:]
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in run.stdout
  assert "fits" in run.stdout and "temporaries" in run.stdout


def test_cli_error_is_one_line():
  run = _cli("--config", SMOKE, "--topology", "v5e:2x2",
             "--config.mesh=(('data', 3), ('fsdp', 1), ('tensor', 1))")
  assert run.returncode == 2
  assert "Traceback" not in run.stderr
  errors = [l for l in run.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "spans 3 devices but there are 4" in errors[0]
