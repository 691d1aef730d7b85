"""How a ViT-B/16 forward's time scales with its token count, block by block.

Token reduction can speed a ViT up by its FLOPs ratio only if time is
proportional to FLOPs. This script measures how far it is: it times one
jitted, warm ViT-B/16 block (`maskmodel.models.vit.Block`: width 768, 12
heads, MLP 3072, float32) on `[batch, N, 768]` for several token counts N,
round-robin, and fits the medians to

    time(N) = fixed_ms_per_block + ms_per_gflop * GFLOPs(N),

with GFLOPs(N) the block's analytic matmul FLOPs at that batch
(`maskmodel.tokens.block_flops`, the count of `vit_flops`). It also times the part of the model outside
the blocks (patch embedding, class token, position embedding, final
LayerNorm and head: the same ViT at depth 0). The forward's time at any
schedule is then about `fixed_ms_forward + ms_per_gflop * GFLOPs`, where

    fixed_ms_forward = depth * fixed_ms_per_block
                       + outside_blocks_ms - ms_per_gflop * outside_gflops

is the time no token count removes; it bounds every reducer's speed-up
(compare `bound_fit` in `tome_speed.py --bound`, whose slope is per
GFLOP per image). Prints one JSON document.

  python benchmarks/block_scaling.py --repeats 20
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from maskmodel import tokens  # pylint: disable=g-import-not-at-top
from maskmodel.models import build  # pylint: disable=g-import-not-at-top
from maskmodel.models import vit  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-bad-import-order,g-import-not-at-top
from tome_speed import (CLASSES, DEPTH, HEADS, IMAGE, MLP_RATIO, PATCH,  # pylint: disable=g-bad-import-order,g-import-not-at-top
                        WIDTH, vit_b16_config)


def block_gflops(batch, n):
  """Matmul GFLOPs of one block on `[batch, n, WIDTH]`, no reduction."""
  return batch * sum(tokens.block_flops(n, n, WIDTH, MLP_RATIO).values()) / 1e9


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--tokens", default="197,165,133,101,69,37,21")
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--attn-impl", default="auto")
  p.add_argument("--out", default=None, help="also write the JSON here")
  args = p.parse_args(argv)
  counts = [int(n) for n in args.tokens.split(",")]
  if len(set(counts)) < 2 or min(counts) < 1:
    p.error(f"--tokens={args.tokens!r}: give at least two different token "
            "counts >= 1 to fit, e.g. 197,101,21.")

  runs = {}
  block = vit.Block(HEADS, int(WIDTH * MLP_RATIO), args.attn_impl)
  apply = jax.jit(block.apply)
  for n in counts:
    x = jax.random.normal(jax.random.PRNGKey(n), (args.batch, n, WIDTH))
    params = jax.jit(block.init)(jax.random.PRNGKey(0), x)
    runs[n] = lambda params=params, x=x: apply(params, x).block_until_ready()
  m = vit_b16_config(args.attn_impl)
  m.depth = 0
  stem = build.vit(m, num_classes=CLASSES)
  images = jax.random.normal(jax.random.PRNGKey(1), (args.batch, IMAGE, IMAGE, 3))
  stem_params = jax.jit(stem.init)(jax.random.PRNGKey(0), images)
  stem_fn = jax.jit(lambda p, x: stem.apply(p, x)["logits"])
  runs["outside_blocks"] = lambda: stem_fn(stem_params, images).block_until_ready()

  for run in runs.values():   # compile and warm up
    run()
    run()
  seconds = {name: [] for name in runs}
  for _ in range(args.repeats):
    for name, run in runs.items():
      t0 = time.perf_counter()
      run()
      seconds[name].append(time.perf_counter() - t0)
  med_ms = {name: 1e3 * statistics.median(s) for name, s in seconds.items()}

  gflops = [block_gflops(args.batch, n) for n in counts]
  ms = [med_ms[n] for n in counts]
  fixed, slope, residual = common.linear_fit(gflops, ms)
  outside_gflops = args.batch * tokens.vit_flops(
      IMAGE, PATCH, 0, WIDTH, MLP_RATIO, HEADS, [], num_classes=CLASSES) / 1e9
  blocks = {str(n): dict(gflops=round(g, 3), median_ms=round(t, 2),
                         gflop_per_s=round(g / t * 1e3, 1))
            for n, g, t in zip(counts, gflops, ms)}
  doc = dict(
      benchmark="block_scaling", model="ViT-B/16 block", batch=args.batch,
      dtype="float32", attn_impl=args.attn_impl, repeats=args.repeats,
      device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
      jax=jax.__version__, blocks=blocks,
      fit=dict(fixed_ms_per_block=round(fixed, 2), ms_per_gflop=round(slope, 3),
               gflop_per_s_marginal=round(1e3 / slope, 1),
               max_residual_ms=round(residual, 2)),
      outside_blocks_ms=round(med_ms["outside_blocks"], 2),
      outside_gflops=round(outside_gflops, 3),
      fixed_ms_forward=round(DEPTH * fixed + med_ms["outside_blocks"]
                             - slope * outside_gflops, 1))
  common.emit_json(doc, args.out)


if __name__ == "__main__":
  main()
