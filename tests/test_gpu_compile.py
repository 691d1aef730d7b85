"""The Pallas Triton kernels compiled for sm_80, sm_86 and sm_90a, without
a GPU. sm_89 has sm_86's shared memory and gets its tiles, and compiles to
the same figures (`benchmarks/results/gpu_compile.json`, which the benchmark
writes for all four), so the suite leaves it out.

Each kernel's Triton IR goes to PTX through the Triton compiler of XLA's
CUDA plugin (`jax-cuda13-plugin`, `jax-cuda13-pjrt`; `make install` puts it
in `.venv/cuda-aot`), and the PTX to cubin through the CUDA toolkit's
`ptxas -v` (`maskmodel.aot`, `benchmarks/gpu_compile.py`). Skipped where
either is missing. The compiles run in a child process with
`JAX_PLATFORMS=cpu`, the one setting in which the plugin registers its
compiler on a host without CUDA libraries.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from maskmodel import aot

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = aot.cuda_compile_env()
pytestmark = [
    pytest.mark.skipif(shutil.which("ptxas") is None,
                       reason="needs the CUDA toolkit's ptxas on the PATH"),
    pytest.mark.skipif(ENV is None, reason="needs jax-cuda13-plugin and "
                       "jax-cuda13-pjrt (make install: .venv/cuda-aot)"),
]

# Spill stores per thread that each kernel may reach at f32/bf16 and head
# dims 64 and 128, on any of the four archs (`maskmodel/kernels/README.md`
# has every figure). The configurations before these spilled up to 9.7 KB
# (dK/dV) and 7.3 KB (matching).
SPILL_BOUND = {
    "flash_attention_forward": 0,
    "flash_attention_dkdv": 32,
    "flash_attention_dq": 0,
    "flash_attention_key_mass": 0,
    "token_matching": 112,
}

ARCHS = ("sm_80", "sm_86", "sm_90a")

_CHILD = """
import json, sys
sys.path.insert(0, {benchmarks!r})
import gpu_compile
from maskmodel import aot
assert aot.cuda_compiler_available(), "no Triton compiler registered"
rows = gpu_compile.reports(("float32", "bfloat16"), (64, 128), archs={archs!r})
old = gpu_compile.old_f32_d128("sm_86")
print(json.dumps(dict(rows=rows, old=old)))
"""


@pytest.fixture(scope="module")
def compiled():
  env = dict(ENV)
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  run = subprocess.run(
      [sys.executable, "-c",
       _CHILD.format(benchmarks=str(ROOT / "benchmarks"), archs=ARCHS)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_for_sm80_sm86_sm90a(compiled):
  rows = compiled["rows"]
  seen = {(r["name"], r["dtype"], r["head_dim"], r["arch"]) for r in rows}
  assert len(seen) == len(SPILL_BOUND) * 2 * 2 * len(ARCHS)
  for r in rows:
    where = (r["name"], r["dtype"], r["head_dim"], r["arch"])
    assert 0 < r["smem"] <= r["smem_limit"], where
    assert r["spill_stores"] <= SPILL_BOUND[r["name"]], (where, r)
    assert r["registers"] <= 255, where


def test_shared_memory_check_catches_the_old_tiles(compiled):
  """The earlier f32 tiles at D = 128 (128 x 64 / 64 x 64, 8 warps, 2
  stages) ask sm_86 for more shared memory than one block may have."""
  old = compiled["old"]
  assert {r["name"] for r in old} >= {"flash_attention_forward",
                                      "flash_attention_dkdv"}
  over = {r["name"] for r in old if r["smem"] > r["smem_limit"]}
  assert over == {"flash_attention_forward", "flash_attention_dkdv",
                  "flash_attention_dq"}, old
