"""Which library should run a ViT-B forward's dense matmuls on CPU?

XLA's CPU backend hands each dot to YNNPACK by default. With
`maskmodel.kernels.dispatch.CPU_XLA_DOTS` the dots run in XLA's own dot
thunk (Eigen) instead. This script times, for several row counts M (batch x
tokens), the four dense matmuls of a ViT-B block (qkv 768->2304, proj
768->768, MLP 768->3072 and 3072->768, float32) compiled both ways,
round-robin, and reports the summed medians and their ratio. The smallest M
from which XLA's dot thunk wins at every larger M measured is where
`inference_compiler_options` switches (`CPU_XLA_DOTS_MIN_ROWS`). Prints one
JSON document.

  python benchmarks/cpu_dots.py --repeats 15
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from maskmodel.kernels import dispatch  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-bad-import-order,g-import-not-at-top

SHAPES = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072),
          "fc2": (3072, 768)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", default="197,256,394,512,640,788,1024,1576,3152")
  p.add_argument("--repeats", type=int, default=15)
  p.add_argument("--out", default=None, help="also write the JSON here")
  args = p.parse_args(argv)

  results = {}
  for m in (int(r) for r in args.rows.split(",")):
    runs = {}
    for name, (k, n) in SHAPES.items():
      a = jax.random.normal(jax.random.PRNGKey(m), (m, k), jnp.float32)
      b = jax.random.normal(jax.random.PRNGKey(k + n), (k, n), jnp.float32)
      for lib, options in dispatch.CPU_DOT_LIBRARIES.items():
        fn = jax.jit(jnp.dot, compiler_options=options).lower(a, b).compile()
        jax.block_until_ready(fn(a, b))
        runs[lib, name] = (fn, a, b, [])
    for _ in range(args.repeats):
      for fn, a, b, seconds in runs.values():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(a, b))
        seconds.append(time.perf_counter() - t0)
    ms = {lib: sum(1e3 * statistics.median(runs[lib, name][3]) for name in SHAPES)
          for lib in dispatch.CPU_DOT_LIBRARIES}
    results[str(m)] = dict(ynn_ms=round(ms["ynn"], 3), xla_ms=round(ms["xla"], 3),
                           xla_speedup=round(ms["ynn"] / ms["xla"], 3))

  rows = sorted(int(m) for m in results)
  wins = [m for i, m in enumerate(rows)
          if all(results[str(n)]["xla_speedup"] > 1 for n in rows[i:])]
  common.emit_json(dict(
      benchmark="cpu_dots", shapes=SHAPES, repeats=args.repeats,
      results=results, xla_wins_from_rows=wins[0] if wins else None,
      min_rows_in_maskmodel=dispatch.CPU_XLA_DOTS_MIN_ROWS,
      device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
      jax=jax.__version__), args.out)


if __name__ == "__main__":
  main()
