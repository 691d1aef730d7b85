"""The Pallas Triton kernels compiled for each GPU architecture, without a GPU.

Lowers the kernels through their public entry points (`impl="pallas"`,
lowered for `cuda`), compiles each kernel's Triton IR to PTX with the Triton
compiler that XLA's CUDA plugin ships (`jax-cuda13-plugin`,
`jax-cuda13-pjrt`), and the PTX to cubin with the CUDA toolkit's
`ptxas -v` for sm_80, sm_86, sm_89 and sm_90a (`maskmodel.aot`). Prints one
JSON document with, per kernel x dtype x head dim x arch: the shared memory
a launch asks for and the arch's limit, registers per thread, stack frame
and spill bytes per thread, and ptxas' warnings.

Cases: the attention gradient with the ToMe bias and the statistics
(kernels forward, dK/dV, dQ, key mass) at N = 1,024, and token matching
(ToMe's metric, C = the head dim) at 512 x 512 rows; with `--masked`, the
attention gradient with a key mask and the causal mask as well. Each arch's
kernels are traced under `dispatch.compiling_for_gpu(arch)`, so they have
that arch's configuration. `--markdown JSON` prints the README's table.

  PYTHONPATH=.venv/cuda-aot JAX_PLATFORMS=cpu \
      python benchmarks/gpu_compile.py --out gpu_compile.json

`make install` puts the CUDA plugin in `.venv/cuda-aot`, off the
environment's path (`maskmodel.aot.cuda_plugin_dir`). Without a GPU the
plugin registers its Triton compiler only when its CUDA version check is
skipped, which `JAX_PLATFORMS=cpu` does (the script sets it when unset). Head dims that pad to the same power of two compile to
the same kernel and are compiled once.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from maskmodel import aot  # pylint: disable=g-import-not-at-top,wrong-import-position
from maskmodel.kernels import attention, dispatch, token_matching  # pylint: disable=g-import-not-at-top,wrong-import-position
from maskmodel.kernels import flash_attention as flash  # pylint: disable=g-import-not-at-top,wrong-import-position
from maskmodel.kernels import matching as matching_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

import common  # pylint: disable=g-bad-import-order,g-import-not-at-top,wrong-import-position

HEAD_DIMS = (32, 64, 80, 96, 128)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def attention_grad(q, k, v, bias, kv_mask=None, causal=False):
  """Forward, statistics and the gradients of q, k, v and the bias."""
  def loss(q, k, v, bias):
    out, stats = attention(q, k, v, bias=bias, kv_mask=kv_mask,
                           causal=causal, impl="pallas", return_stats=True)
    return (out.astype(jnp.float32).sum() + stats.cls_probs.sum()
            + stats.key_mass.sum())
  return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)


def masked_attention_grad(q, k, v, bias, kv_mask):
  """The same with a key mask and the causal mask (more live values)."""
  return attention_grad(q, k, v, bias, kv_mask, causal=True)


def matching(a, b):
  return token_matching(a, b, class_token=True, impl="pallas")


def case_kernels(dtype, dim, arch, masked=False, n=1024, heads=2):
  """Every Triton kernel of the attention gradient and of matching, as
  configured for `arch`; `masked`: the attention gradient with a key mask
  and the causal mask instead, and no matching."""
  q = jax.ShapeDtypeStruct((1, n, heads, dim), dtype)
  bias = jax.ShapeDtypeStruct((1, n), jnp.float32)
  a = jax.ShapeDtypeStruct((1, n // 2, dim), dtype)
  with dispatch.compiling_for_gpu(arch):
    if masked:
      return aot.triton_kernels(masked_attention_grad, q, q, q, bias,
                                jax.ShapeDtypeStruct((1, n), jnp.bool_))
    return (aot.triton_kernels(attention_grad, q, q, q, bias)
            + aot.triton_kernels(matching, a, a))


def _configuration(arch, dtype, dim):
  """What the lowering depends on the arch through (it is otherwise the
  same for every arch): lower once per distinct configuration."""
  padded = max(16, 1 << (dim - 1).bit_length())
  return (flash.triton_tuning(arch, dtype, padded),
          matching_lib.triton_matching_tuning(arch, dtype, padded))


def reports(dtypes=tuple(DTYPES), head_dims=HEAD_DIMS,
            archs=tuple(aot.GPU_ARCHS), kernels=None, masked=False,
            workers=2):
  """Rows of {kernel, dtype, head_dim, arch, smem, registers, spills, ...};
  `kernels`: names to keep (default all). Kernels with the same Triton IR
  and launch parameters are compiled once per arch."""
  jobs, lowered, futures = [], {}, {}
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for dtype in dtypes:
      for dim in head_dims:
        for arch in archs:
          config = (dtype, dim, _configuration(arch, DTYPES[dtype], dim))
          if config not in lowered:
            lowered[config] = case_kernels(DTYPES[dtype], dim, arch, masked)
          for kernel in lowered[config]:
            if kernels and kernel.name not in kernels:
              continue
            key = (hashlib.sha1(kernel.ir).hexdigest(), kernel.num_warps,
                   kernel.num_stages, arch)
            if key not in futures:
              futures[key] = pool.submit(aot.gpu_kernel_report, kernel, arch)
            jobs.append((dict(dtype=dtype, head_dim=dim), key))
    return [dict(case, **futures[key].result()) for case, key in jobs]


def old_f32_d128(arch):
  """The kernels of the attention gradient, f32 at D = 128, with the tiles
  used before the per-dtype tuning (128 x 64 forward, 64 x 64 backward,
  8 warps, 2 stages), compiled for `arch`."""
  old = flash.TritonTuning(flash.BlockSizes(128, 64, 64, 64), num_warps=8,
                           num_warps_bwd=8, num_stages=2)

  def grad(q, k, v, bias):
    def loss(q, k, v, bias):
      return flash.flash_attention(q, k, v, bias, tuning=old).sum()
    return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)

  q = jax.ShapeDtypeStruct((1, 1024, 2, 128), jnp.float32)
  bias = jax.ShapeDtypeStruct((1, 1024), jnp.float32)
  return [aot.gpu_kernel_report(k, arch)
          for k in aot.triton_kernels(grad, q, q, q, bias)]


def markdown(rows):
  """A table with a row per kernel, dtype and head dim (head dims that
  compile alike share a row) and a column per arch: registers / spill
  stores (bytes per thread) / shared memory (bytes); "(s)": ptxas reports
  serialized wgmma."""
  archs = list(dict.fromkeys(r["arch"] for r in rows))
  cells = {}
  for r in rows:
    cell = f'{r["registers"]} / {r["spill_stores"]} / {r["smem"]:,}'
    if any("wgmma" in w for w in r["warnings"]):
      cell += " (s)"
    cells.setdefault((r["name"], r["dtype"], r["head_dim"]), {})[
        r["arch"]] = (r["num_warps"], cell)
  merged = {}
  for (name, dtype, dim), by_arch in cells.items():
    key = (name, dtype, tuple(by_arch.get(a) for a in archs))
    merged.setdefault(key, []).append(dim)
  lines = ["| kernel | dtype | D | warps | " + " | ".join(archs) + " |",
           "|---" * (4 + len(archs)) + "|"]
  for (name, dtype, by_arch), dims in merged.items():
    warps = sorted({w for w, _ in filter(None, by_arch)})
    lines.append(
        f"| {name.replace('flash_attention_', '')} | {dtype} | "
        f"{', '.join(map(str, dims))} | {'/'.join(map(str, warps))} | "
        + " | ".join(c[1] if c else "" for c in by_arch) + " |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dtypes", default=",".join(DTYPES))
  p.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)))
  p.add_argument("--archs", default=",".join(aot.GPU_ARCHS))
  p.add_argument("--kernels", default="",
                 help="comma-separated kernel names to keep (default all)")
  p.add_argument("--out", default=None, help="also write the JSON here")
  p.add_argument("--masked", action="store_true",
                 help="attention with a key mask and the causal mask")
  p.add_argument("--markdown", default=None, metavar="JSON",
                 help="print the table of a JSON this script wrote, and exit")
  args = p.parse_args(argv)
  if args.markdown:
    print(markdown(json.loads(pathlib.Path(args.markdown).read_text())["rows"]))
    return None
  if not aot.cuda_compiler_available():
    sys.exit("the CUDA plugin's Triton compiler is not registered: install "
             "jax-cuda13-plugin and jax-cuda13-pjrt (`make install` puts "
             "them in .venv/cuda-aot) and run with them on PYTHONPATH and "
             "JAX_PLATFORMS=cpu")
  start = time.perf_counter()
  rows = reports(args.dtypes.split(","),
                 [int(d) for d in args.head_dims.split(",")],
                 args.archs.split(","),
                 kernels=set(filter(None, args.kernels.split(","))),
                 masked=args.masked)
  doc = dict(jax=jax.__version__, masked=args.masked,
             seconds=round(time.perf_counter() - start, 1), rows=rows)
  common.emit_json(doc, args.out)
  return doc


if __name__ == "__main__":
  main()
