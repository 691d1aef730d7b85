"""Kernel timings: attention (fwd and fwd+bwd) and ToMe token matching.

Compares the Pallas kernels with the XLA reference and with
`jax.nn.dot_product_attention`, over a sweep of sequence lengths at ViT-B
head shape (H=12, D=64). Prints one JSON document.

  # On a GPU/TPU: the full sweep, N = 197 .. 16384.
  python benchmarks/kernels.py --impls pallas,xla,jax_dpa
  # On CPU the default is the XLA path only, on a tiny sweep.
  python benchmarks/kernels.py

Batch size is `--tokens // N` (at least 1), so each point processes about the
same number of tokens. The XLA paths materialize `[B, H, N, N]` logits, so
points whose estimated footprint exceeds `--max-xla-gib` are reported as
skipped instead of running out of memory.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from maskmodel.kernels import attention, token_matching  # pylint: disable=g-import-not-at-top
from maskmodel.kernels.dispatch import kernel_backend  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-bad-import-order,g-import-not-at-top

ACCELERATOR_SWEEP = (197, 577, 1024, 2048, 4096, 8192, 16384)
CPU_SWEEP = (197, 256)
ATTENTION_IMPLS = ("pallas", "interpret", "xla", "jax_dpa", "cudnn")
MATCHING_IMPLS = ("pallas", "interpret", "xla")


def _timeit(fn, args, reps):
  """Compiles once, then returns (median_ms, min_ms, compile_s)."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times), min(times), compile_s


def _attention_fn(impl, use_bias=True):
  """`fn(q, k, v, bias)`; with `use_bias=False` it ignores `bias`. cuDNN
  takes no per-key bias (it wants one as long as the queries), so it is
  timed without one."""
  if impl in ("jax_dpa", "cudnn"):
    implementation = None if impl == "jax_dpa" else "cudnn"
    return lambda q, k, v, bias: jax.nn.dot_product_attention(
        q, k, v, bias=bias[:, None, None, :].astype(q.dtype) if use_bias
        else None, implementation=implementation)
  return lambda q, k, v, bias: attention(q, k, v, bias=bias if use_bias
                                         else None, impl=impl)


def bench_attention(impl, n, batch, heads, dim, dtype, reps, max_xla_gib,
                    use_bias=True):
  row = dict(op="attention", impl=impl, n=n, batch=batch, heads=heads,
             head_dim=dim, dtype=jnp.dtype(dtype).name, bias=use_bias)
  if impl in ("xla", "jax_dpa"):
    # Logits, probabilities and their gradients in f32: ~4 [B, H, N, N].
    gib = 4 * batch * heads * n * n * 4 / 2**30
    if gib > max_xla_gib:
      return dict(row, status="skipped",
                  reason=f"[B,H,N,N] buffers need ~{gib:.0f} GiB")
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(batch, n, heads, dim)), dtype)
             for _ in range(3))
  bias = jnp.log(jnp.asarray(rng.integers(1, 4, size=(batch, n)),
                             jnp.float32))  # ToMe: log token sizes.
  if not use_bias:  # Not differentiated either.
    bias = jnp.zeros((batch, n), jnp.float32)
  cot = jnp.asarray(rng.normal(size=q.shape), dtype)
  fn = _attention_fn(impl, use_bias)
  fwd = jax.jit(fn)
  loss = lambda q, k, v, b: jnp.sum((fn(q, k, v, b) * cot).astype(jnp.float32))
  fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
  try:
    fwd_ms, fwd_min, _ = _timeit(fwd, (q, k, v, bias), reps)
    step_ms, step_min, compile_s = _timeit(fwd_bwd, (q, k, v, bias), reps)
  except Exception as e:  # pylint: disable=broad-except
    return dict(row, status="error", reason=f"{type(e).__name__}: {e}"[:300])
  # FlashAttention accounting: 2 matmuls forward, 5 backward (recompute).
  flops_fwd = 4 * batch * heads * n * n * dim
  return dict(row, status="ok", fwd_ms=round(fwd_ms, 3),
              fwd_min_ms=round(fwd_min, 3), fwd_bwd_ms=round(step_ms, 3),
              fwd_bwd_min_ms=round(step_min, 3),
              compile_s=round(compile_s, 2),
              fwd_tflops=float(f"{flops_fwd / fwd_ms / 1e9:.3g}"),
              fwd_bwd_tflops=float(f"{3.5 * flops_fwd / step_ms / 1e9:.3g}"))


def bench_matching(impl, n, batch, dim, reps):
  na, nb = (n + 1) // 2, n // 2  # ToMe's alternating A/B split.
  row = dict(op="token_matching", impl=impl, n=n, na=na, nb=nb, batch=batch,
             dim=dim)
  rng = np.random.default_rng(1)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  a = jnp.asarray(unit(rng.normal(size=(batch, na, dim))), jnp.float32)
  b = jnp.asarray(unit(rng.normal(size=(batch, nb, dim))), jnp.float32)
  fn = jax.jit(lambda a, b: token_matching(a, b, class_token=True, impl=impl))
  try:
    ms, ms_min, compile_s = _timeit(fn, (a, b), reps)
  except Exception as e:  # pylint: disable=broad-except
    return dict(row, status="error", reason=f"{type(e).__name__}: {e}"[:300])
  return dict(row, status="ok", ms=round(ms, 3), min_ms=round(ms_min, 3),
              compile_s=round(compile_s, 2))


def main(argv=None):
  on_accelerator = kernel_backend() is not None
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--impls", default="pallas,xla,jax_dpa" if on_accelerator else "xla",
      help=f"comma-separated subset of {ATTENTION_IMPLS}; matching runs the "
      f"ones in {MATCHING_IMPLS}")
  parser.add_argument(
      "--seq-lens",
      default=",".join(map(str, ACCELERATOR_SWEEP if on_accelerator
                           else CPU_SWEEP)))
  parser.add_argument("--ops", default="attention,matching")
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--dtype", default="bfloat16" if on_accelerator
                      else "float32")
  parser.add_argument("--tokens", type=int,
                      default=32768 if on_accelerator else 256,
                      help="batch = max(1, tokens // N)")
  parser.add_argument("--reps", type=int, default=20 if on_accelerator else 3)
  parser.add_argument("--max-xla-gib", type=float, default=40.0)
  parser.add_argument("--out", help="also write the JSON here")
  args = parser.parse_args(argv)

  impls = [s for s in args.impls.split(",") if s]
  unknown = set(impls) - set(ATTENTION_IMPLS)
  if unknown:
    parser.error(f"unknown impls {sorted(unknown)}; use {ATTENTION_IMPLS}")
  ops = args.ops.split(",")
  dtype = jnp.dtype(args.dtype)
  results = []
  for n in (int(s) for s in args.seq_lens.split(",")):
    batch = max(1, args.tokens // n)
    for impl in impls:
      if "attention" in ops:
        results.append(bench_attention(impl, n, batch, args.heads,
                                       args.head_dim, dtype, args.reps,
                                       args.max_xla_gib))
        print(json.dumps(results[-1]), file=sys.stderr)
      if "matching" in ops and impl in MATCHING_IMPLS:
        results.append(bench_matching(impl, n, batch, args.head_dim,
                                      args.reps))
        print(json.dumps(results[-1]), file=sys.stderr)

  device = jax.devices()[0]
  report = dict(jax_version=jax.__version__, backend=jax.default_backend(),
                device=getattr(device, "device_kind", str(device)),
                num_devices=jax.device_count(), config=vars(args),
                results=results)
  common.emit_json(report, args.out, indent=1)


if __name__ == "__main__":
  main()
