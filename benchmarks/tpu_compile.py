"""Which kernels compile for which TPU generation, from a CPU host.

Compiles the Pallas kernels through their public entry points
(`impl="pallas"`, lowered for TPU) on compile-only devices of each generation
(`maskmodel.aot`, needs `libtpu`), so Mosaic and the VMEM allocator run for
real. Prints one JSON document:

- `vit_b`: attention forward + gradients + statistics at ViT-B/16 shapes
  (batch 8, N = 197, H = 12, D = 64) and token matching (98 x 99 rows, C = 64),
  in f32 and bf16: "ok" or the compiler's first line.
- `longest_n`: the attention gradient at D = 64 (batch 1, H = 2) for
  N = --min-n, 2 --min-n, ... up to --max-n: the longest N that compiles,
  the program's memory there (`memory_analysis`: arguments, outputs,
  temporaries, bytes), and the error at the next N. The kernels stream their
  tiles through VMEM, so what ends the search is HBM (or Mosaic's int32 grid
  step count).

  python benchmarks/tpu_compile.py --out tpu_compile.json   # about 8 minutes
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from maskmodel import aot  # pylint: disable=g-import-not-at-top
from maskmodel.kernels import attention, token_matching  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-bad-import-order,g-import-not-at-top


def attention_grad(q, k, v, bias):
  """Forward, statistics and the gradients of q, k, v and the bias.

  The loss is returned too: the statistics carry no gradient, so without it
  their kernel (key mass) would be dead code and never compiled.
  """
  def loss(q, k, v, bias):
    out, stats = attention(q, k, v, bias=bias, impl="pallas",
                           return_stats=True)
    return (out.astype(jnp.float32).sum() + stats.cls_probs.sum()
            + stats.key_mass.sum())
  return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)


def matching(a, b):
  return token_matching(a, b, class_token=True, impl="pallas")


def compiles(device, fn, *args):
  """"ok", or the compiler's error in one line."""
  return _compile(device, fn, *args)[0]


def _compile(device, fn, *args):
  """("ok", compiled) or (the compiler's error in one line, None)."""
  try:
    return "ok", aot.compile_for(device, fn, *args)
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {str(e).splitlines()[0]}"[:240], None


def attention_args(batch, n, heads, dim, dtype):
  q = jax.ShapeDtypeStruct((batch, n, heads, dim), dtype)
  return q, q, q, jax.ShapeDtypeStruct((batch, n), jnp.float32)


def vit_b(device, dtype):
  a = jax.ShapeDtypeStruct((8, 99, 64), dtype)
  b = jax.ShapeDtypeStruct((8, 98, 64), dtype)
  return dict(
      attention=compiles(device, attention_grad,
                         *attention_args(8, 197, 12, 64, dtype)),
      matching=compiles(device, matching, a, b))


def longest_n(device, dtype, min_n, max_n):
  n, best, memory, error = min_n, None, None, None
  while n <= max_n:
    result, compiled = _compile(device, attention_grad,
                                *attention_args(1, n, 2, 64, dtype))
    if result != "ok":
      error = dict(n=n, error=result)
      break
    stats = compiled.memory_analysis()
    memory = dict(argument_bytes=stats.argument_size_in_bytes,
                  output_bytes=stats.output_size_in_bytes,
                  temp_bytes=stats.temp_size_in_bytes)
    best, n = n, 2 * n
  return dict(longest=best, memory_at_longest=memory, first_failure=error)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--generations", default=",".join(aot.TPU_TOPOLOGIES))
  p.add_argument("--min-n", type=int, default=8192)
  p.add_argument("--max-n", type=int, default=2**25)
  p.add_argument("--out", default=None, help="also write the JSON here")
  args = p.parse_args(argv)
  report = dict(jax=jax.__version__, results={})
  for gen in args.generations.split(","):
    device = aot.tpu_device(gen)
    row = dict(device_kind=device.device_kind)
    for dtype in (jnp.float32, jnp.bfloat16):
      name = jnp.dtype(dtype).name
      row[f"vit_b_{name}"] = vit_b(device, dtype)
      row[f"longest_n_{name}"] = longest_n(device, dtype, args.min_n, args.max_n)
    report["results"][gen] = row
    print(gen, row, file=sys.stderr, flush=True)
  common.emit_json(report, args.out)
  return report


if __name__ == "__main__":
  main()
