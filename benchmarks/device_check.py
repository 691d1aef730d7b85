"""The one-call device check: everything about the kernels that needs a GPU.

Run once whenever a GPU is lent, then copy the card and the figures into
`maskmodel/kernels/README.md` and set `dispatch.VALIDATED_PLATFORMS` from
`validated` (see "Device check" there):

  python benchmarks/device_check.py --out device_check.json   # < 8 minutes

It writes one JSON document, rewritten after each section so that a run cut
short keeps what it measured:

1. `correctness`: `impl="pallas"` against the references (forward, the
   gradients of q, k, v and the bias, the statistics; f32 and bf16; odd
   lengths, Nq != Nk, head dims 32-128; bias, key mask, causal, rows that
   see no key), the token-matching kernel (indices exact), and the `xla`
   path as lowered for the device (`jax.nn.dot_product_attention`) and
   cuDNN's attention beside it.
2. `attention`: fwd and fwd+bwd time of the kernel, cuDNN
   (`jax.nn.dot_product_attention(implementation="cudnn")`) and XLA's
   attention, N = 197 ... 16,384, H = 12, D = 64, bf16, ToMe's bias, about
   32k tokens per call (`benchmarks/kernels.py`).
3. `matching`: the token-matching kernel against the XLA path.
4. `memory`: the bytes XLA allocates for attention fwd+bwd against N (from
   the compiled programs' `memory_analysis`), with a linear fit for the
   kernel.
5. `mae_step`: the MAE ViT-B/16 train step in bf16 (the loop's
   `train_step`), img/s and MFU against this chip's measured bf16 matmul
   peak, with the XLA attention and with the kernel.
6. `targets`: the issue's targets, each with its measured value, and
   `validated`: the ops whose every correctness check passed.

`--smoke` runs every section on CPU at toy sizes with the kernels in the
Pallas interpreter; the test suite runs it so this script does not rot
before a GPU comes.
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from maskmodel import sharding  # pylint: disable=g-import-not-at-top
from maskmodel.kernels import (attention, attention_reference,  # pylint: disable=g-import-not-at-top
                               token_matching, token_matching_reference)
from maskmodel.kernels import dispatch  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-bad-import-order,g-import-not-at-top
import kernels as kernel_bench  # pylint: disable=g-bad-import-order,g-import-not-at-top
import mae_step  # pylint: disable=g-bad-import-order,g-import-not-at-top

# (batch, nq, nk, heads, dim, causal, bias, mask); mask "empty" also hides
# every key of batch row 0, so its queries see nothing.
ATTENTION_CASES = (
    (2, 197, 197, 4, 64, False, True, True),   # ViT-B/16, ToMe bias + mask.
    (2, 197, 197, 4, 64, True, True, False),
    (2, 37, 37, 3, 32, True, True, True),      # Odd lengths.
    (2, 20, 45, 2, 48, True, True, "empty"),   # Nq < Nk, D = 48.
    (1, 45, 20, 2, 64, True, False, True),     # Nq > Nk.
    (1, 300, 129, 2, 128, False, True, True),  # D = 128.
    (2, 1000, 1000, 2, 80, False, True, False),  # D = 80 (padded to 128).
)
SMOKE_ATTENTION_CASES = ((2, 20, 37, 2, 32, True, True, "empty"),)
MATCHING_CASES = ((4, 99, 98, 64), (2, 577, 576, 64), (1, 2048, 2048, 64))
SMOKE_MATCHING_CASES = ((2, 20, 19, 16),)
# The README's tolerances for compiled kernels: TF32/bf16 matmuls inside.
OUT_TOL, GRAD_TOL, PROB_ATOL, MASS_RTOL = 0.02, 0.05, 2e-3, 2e-2
# Targets of the kernels issue.
ATTENTION_VS_CUDNN, MATCHING_SPEEDUP, MAE_MFU, FROM_N = 1.25, 2.0, 0.40, 1024


def _rel_err(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _attention_inputs(case, dtype, seed=0):
  batch, nq, nk, heads, dim, _, bias, mask = case
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(batch, n, heads, dim)), dtype)
             for n in (nq, nk, nk))
  b = jnp.asarray(rng.normal(size=(batch, nk)), jnp.float32) if bias else None
  m = None
  if mask:
    m = rng.random((batch, nk)) > 0.4
    m[:, 0] = True
    if mask == "empty":
      m[0] = False
    m = jnp.asarray(m)
  cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  return q, k, v, b, m, cot


def _out_and_grads(fn, q, k, v, bias, cot):
  """fn's output and the gradients of <fn(q, k, v, bias), cot>; a case
  without bias gets zeros, which leave every logit as it was."""
  def loss(q, k, v, bias):
    out = fn(q, k, v, bias)
    return jnp.sum(out.astype(jnp.float32) * cot), out
  args = (q, k, v, jnp.zeros(q.shape[:1] + k.shape[1:2]) if bias is None
          else bias)
  (_, out), grads = jax.jit(jax.value_and_grad(
      loss, argnums=(0, 1, 2, 3), has_aux=True))(*args)
  return out, grads


def check_attention(case, dtype, kernel_impl):
  """One attention case: the kernel's errors against the f32 reference."""
  q, k, v, bias, mask, cot = _attention_inputs(case, dtype)
  causal = case[5]
  up = lambda x: x.astype(jnp.float32)
  with jax.default_matmul_precision("highest"):
    ref_fn = lambda q, k, v, b: attention_reference(q, k, v, bias=b,
                                                    kv_mask=mask, causal=causal)
    want, want_grads = _out_and_grads(ref_fn, up(q), up(k), up(v), bias, cot)
    _, (want_cls, want_mass) = jax.jit(functools.partial(
        attention_reference, kv_mask=mask, causal=causal,
        return_stats=True))(up(q), up(k), up(v), bias=bias)
  got, grads = _out_and_grads(
      lambda q, k, v, b: attention(q, k, v, bias=b, kv_mask=mask,
                                   causal=causal, impl=kernel_impl),
      q, k, v, bias, cot)
  _, stats = jax.jit(functools.partial(
      attention, kv_mask=mask, causal=causal, impl=kernel_impl,
      return_stats=True))(q, k, v, bias=bias)
  errors = {"out": _rel_err(got, want)}
  errors.update({f"d{n}": _rel_err(g, w)
                 for n, g, w in zip(("q", "k", "v", "bias"), grads, want_grads)})
  errors["cls_probs_abs"] = float(jnp.abs(stats.cls_probs - want_cls).max())
  mass_excess = jnp.abs(stats.key_mass - want_mass) - PROB_ATOL
  errors["key_mass_rel"] = float(
      jnp.max(mass_excess / jnp.maximum(jnp.abs(want_mass), 1e-30)))
  ok = (errors["out"] <= OUT_TOL
        and all(errors[f"d{n}"] <= GRAD_TOL for n in ("q", "k", "v", "bias"))
        and errors["cls_probs_abs"] <= PROB_ATOL
        and errors["key_mass_rel"] <= MASS_RTOL)
  return dict(op="attention", case=case, dtype=jnp.dtype(dtype).name,
              ok=bool(ok), errors={k: float(f"{v:.3g}") for k, v in errors.items()})


def check_xla_paths(case, dtype):
  """The `xla` impl as lowered here, and cuDNN's attention, against the
  reference (forward only): whether cuDNN could back the `xla` path."""
  q, k, v, bias, mask, _ = _attention_inputs(case, dtype)
  causal = case[5]
  up = lambda x: x.astype(jnp.float32)
  with jax.default_matmul_precision("highest"):
    want = attention_reference(up(q), up(k), up(v), bias=bias, kv_mask=mask,
                               causal=causal)
  row = dict(op="attention_xla_paths", case=case, dtype=jnp.dtype(dtype).name)
  got = jax.jit(functools.partial(attention, kv_mask=mask, causal=causal,
                                  impl="xla"))(q, k, v, bias=bias)
  row["xla_out"] = float(f"{_rel_err(got, want):.3g}")
  try:
    cudnn = jax.jit(lambda q, k, v, b: jax.nn.dot_product_attention(
        q, k, v, bias=b[:, None, None, :].astype(q.dtype),
        mask=None if mask is None else mask[:, None, None, :],
        is_causal=causal, implementation="cudnn"))
    row["cudnn_out"] = float(f"{_rel_err(cudnn(q, k, v, bias), want):.3g}")
  except Exception as e:  # pylint: disable=broad-except
    row["cudnn_error"] = f"{type(e).__name__}: {e}"[:200]
  row["ok"] = row["xla_out"] <= OUT_TOL
  return row


def check_matching(case, kernel_impl):
  batch, na, nb, dim = case
  rng = np.random.default_rng(1)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  a = jnp.asarray(unit(rng.normal(size=(batch, na, dim))), jnp.float32)
  b = jnp.asarray(unit(rng.normal(size=(batch, nb, dim))), jnp.float32)
  # Integer-valued metrics make exact ties: the first index must win.
  ties = (jnp.asarray(rng.integers(-2, 3, size=a.shape), jnp.float32),
          jnp.asarray(rng.integers(-2, 3, size=b.shape), jnp.float32))
  row = dict(op="token_matching", case=case, ok=True)
  for name, (x, y) in (("random", (a, b)), ("ties", ties)):
    got = jax.jit(functools.partial(token_matching, impl=kernel_impl))(x, y)
    want = token_matching_reference(x, y)
    same = float(jnp.mean(got[1] == want[1]))
    err = float(jnp.abs(got[0] - want[0]).max())
    row[f"{name}_index_agreement"], row[f"{name}_max_abs"] = same, err
    row["ok"] = row["ok"] and same == 1.0 and err <= 1e-5
  return row


def section_correctness(args, kernel_impl):
  rows = []
  cases = SMOKE_ATTENTION_CASES if args.smoke else ATTENTION_CASES
  for case in cases:
    for dtype in (jnp.float32, jnp.bfloat16):
      rows.append(_guard(check_attention, case, dtype, kernel_impl,
                         op="attention"))
      _progress(rows[-1])
  for case in cases[:1]:
    rows.append(_guard(check_xla_paths, case, jnp.bfloat16,
                       op="attention_xla_paths"))
    _progress(rows[-1])
  for case in SMOKE_MATCHING_CASES if args.smoke else MATCHING_CASES:
    rows.append(_guard(check_matching, case, kernel_impl, op="token_matching"))
    _progress(rows[-1])
  return rows


def section_attention(args, impls, seq_lens):
  rows = []
  for n in seq_lens:
    batch = max(1, args.tokens // n)
    for impl in impls:
      rows.append(kernel_bench.bench_attention(
          impl, n, batch, 12 if not args.smoke else 2, args.head_dim,
          jnp.bfloat16, args.reps, max_xla_gib=args.max_xla_gib,
          use_bias=not args.no_bias))
      _progress(rows[-1])
  return rows


def section_matching(args, impls, seq_lens):
  rows = []
  for n in seq_lens:
    for impl in impls:
      rows.append(kernel_bench.bench_matching(
          impl, n, max(1, args.tokens // n), args.head_dim, args.reps))
      _progress(rows[-1])
  return rows


def section_memory(args, impls, seq_lens):
  """Bytes of one attention fwd+bwd program against N (B = 1, H = 12)."""
  heads = 12 if not args.smoke else 2
  out = {}
  for impl in impls:
    points = []
    for n in seq_lens:
      shape = jax.ShapeDtypeStruct((1, n, heads, args.head_dim), jnp.bfloat16)
      bias = jax.ShapeDtypeStruct((1, n), jnp.float32)
      fn = kernel_bench._attention_fn(impl)  # pylint: disable=protected-access
      loss = lambda q, k, v, b, fn=fn: jnp.sum(fn(q, k, v, b).astype(jnp.float32))
      try:
        mem = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(
            shape, shape, shape, bias).compile().memory_analysis()
        points.append(dict(n=n, temp_bytes=int(mem.temp_size_in_bytes),
                           total_bytes=int(mem.temp_size_in_bytes
                                           + mem.argument_size_in_bytes
                                           + mem.output_size_in_bytes)))
      except Exception as e:  # pylint: disable=broad-except
        points.append(dict(n=n, error=f"{type(e).__name__}: {e}"[:200]))
      _progress(dict(impl=impl, **points[-1]))
    fit = [p for p in points if "total_bytes" in p]
    entry = dict(points=points)
    if len(fit) >= 3:
      intercept, slope, worst = common.linear_fit(
          [p["n"] for p in fit], [p["total_bytes"] for p in fit])
      entry["linear_fit"] = dict(
          bytes_per_token=round(slope, 1), intercept_bytes=round(intercept),
          max_residual_over_largest=round(worst / fit[-1]["total_bytes"], 4))
    out[impl] = entry
  return out


def _mae_config(args, attn_impl):
  c = mae_step.vit_b16_mae_config(args.mae_batch)
  c.model.dtype = "bfloat16"
  c.model.attn_impl = attn_impl
  if args.smoke:  # Same program, toy size.
    c.model.width, c.model.depth, c.model.num_heads = 32, 1, 2
    c.data.image_size = 32
    c.task.decoder.width, c.task.decoder.depth = 32, 1
    c.task.decoder.num_heads = 2
  return c


def bf16_matmul_peak(size, reps):
  """Best bf16 FLOP/s of one square `jnp.dot` on this device."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(k1, (size, size), jnp.bfloat16)
  b = jax.random.normal(k2, (size, size), jnp.bfloat16)
  dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(dot(a, b))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    best = min(best, time.perf_counter() - t0)
  return 2.0 * size**3 / best


def mae_step_rate(args, attn_impl):
  """The loop's jitted MAE train step: ms per step and XLA's FLOPs."""
  config = _mae_config(args, attn_impl)
  step, state, batch, _ = mae_step.jitted_train_step(config, args.mae_batch)
  mesh = sharding.make_mesh()
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    for _ in range(2):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(args.mae_repeats):
      t0 = time.perf_counter()
      for _ in range(args.mae_steps):
        state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      times.append((time.perf_counter() - t0) / args.mae_steps)
  return dict(attn_impl=attn_impl, step_ms=statistics.median(times) * 1e3,
              xla_flops=float(cost.get("flops", 0.0)), compile_s=compile_s,
              loss=float(metrics["loss"]),
              analytic_flops=mae_step.analytic_step_flops(config)["total"])


def section_mae(args):
  peak = bf16_matmul_peak(256 if args.smoke else 8192, 3 if args.smoke else 10)
  out = dict(batch=args.mae_batch, bf16_matmul_peak_flop_per_s=peak, runs=[])
  for attn_impl in ("xla", "interpret" if args.smoke else "pallas"):
    run = _guard(mae_step_rate, args, attn_impl, op="mae_step")
    out["runs"].append(run)
    _progress(run)
  # MFU counts the model's matmul FLOPs (`mae_step.analytic_step_flops`):
  # XLA's GPU cost analysis leaves out library GEMMs and Triton calls.
  for run in out["runs"]:
    if "step_ms" in run:
      run["img_per_s"] = round(args.mae_batch / run["step_ms"] * 1e3, 1)
      run["mfu"] = round(run["analytic_flops"] / (run["step_ms"] / 1e3)
                         / peak, 4)
  return out


def targets(report):
  """The issue's targets against what this run measured."""
  out = {}
  rows = [r for r in report.get("attention", []) if r.get("status") == "ok"]
  by = {(r["impl"], r["n"]): r for r in rows}
  ratios = {n: by[("pallas", n)]["fwd_bwd_ms"] / by[("cudnn", n)]["fwd_bwd_ms"]
            for (impl, n) in by if impl == "pallas" and ("cudnn", n) in by}
  if ratios:
    worst = max((v for n, v in ratios.items() if n >= FROM_N), default=None)
    out["attention_fwd_bwd_over_cudnn"] = dict(
        by_n={str(n): round(v, 3) for n, v in sorted(ratios.items())},
        target=f"<= {ATTENTION_VS_CUDNN} at N >= {FROM_N}",
        met=worst is not None and worst <= ATTENTION_VS_CUDNN)
  rows = [r for r in report.get("matching", []) if r.get("status") == "ok"]
  by = {(r["impl"], r["n"]): r for r in rows}
  speedups = {n: by[("xla", n)]["ms"] / by[("pallas", n)]["ms"]
              for (impl, n) in by if impl == "pallas" and ("xla", n) in by}
  if speedups:
    worst = min((v for n, v in speedups.items() if n >= FROM_N), default=None)
    out["matching_speedup_over_xla"] = dict(
        by_n={str(n): round(v, 3) for n, v in sorted(speedups.items())},
        target=f">= {MATCHING_SPEEDUP} at N >= {FROM_N}",
        met=worst is not None and worst >= MATCHING_SPEEDUP)
  mfus = {r["attn_impl"]: r["mfu"]
          for r in report.get("mae_step", {}).get("runs", []) if "mfu" in r}
  if mfus:
    out["mae_b16_bf16_mfu"] = dict(by_attn_impl=mfus, target=f">= {MAE_MFU}",
                                   met=max(mfus.values()) >= MAE_MFU)
  return out


def validated(report):
  """Ops whose every correctness check ran and passed on this device."""
  rows = report.get("correctness", [])
  out = {}
  for op in ("attention", "token_matching"):
    mine = [r for r in rows if r.get("op") == op]
    out[op] = bool(mine) and all(r.get("ok") for r in mine)
  return out


def _guard(fn, *args, op):
  """Runs one check; an exception becomes a failed row, not a lost run."""
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    return dict(op=op, ok=False, error=f"{type(e).__name__}: {e}"[:400],
                traceback=traceback.format_exc()[-1500:])


def _progress(row):
  print({k: v for k, v in row.items() if k != "traceback"}, file=sys.stderr,
        flush=True)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--smoke", action="store_true",
                 help="CPU, toy sizes, kernels in the Pallas interpreter")
  p.add_argument("--out", default=None, help="also write the JSON here")
  p.add_argument("--sections",
                 default="correctness,attention,matching,memory,mae_step")
  p.add_argument("--seq-lens", default=None,
                 help="timing sweep; default 197 ... 16384 (smoke: 16,40)")
  p.add_argument("--tokens", type=int, default=None,
                 help="batch = tokens // N; default 32768 (smoke: 64)")
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--no-bias", action="store_true",
                 help="time attention without ToMe's bias (cuDNN takes none)")
  p.add_argument("--reps", type=int, default=None)
  p.add_argument("--max-xla-gib", type=float, default=40.0)
  p.add_argument("--mae-batch", type=int, default=None)
  p.add_argument("--mae-steps", type=int, default=None)
  p.add_argument("--mae-repeats", type=int, default=None)
  p.add_argument("--budget-s", type=float, default=420.0,
                 help="skip the sections that start after this many seconds")
  args = p.parse_args(argv)
  smoke = args.smoke
  pick = lambda value, gpu, cpu: value if value is not None else (
      cpu if smoke else gpu)
  args.seq_lens = [int(s) for s in pick(
      args.seq_lens, ",".join(map(str, kernel_bench.ACCELERATOR_SWEEP)),
      "16,24,40").split(",")]
  args.tokens = pick(args.tokens, 32768, 64)
  args.reps = pick(args.reps, 20, 2)
  args.mae_batch = pick(args.mae_batch, 256, 2)
  args.mae_steps = pick(args.mae_steps, 5, 1)
  args.mae_repeats = pick(args.mae_repeats, 3, 1)
  if args.smoke:
    args.head_dim = 16
  return args


def main(argv=None):
  args = parse_args(argv)
  on_gpu = dispatch.kernel_backend() == "triton"
  if not (on_gpu or args.smoke):
    sys.exit(f"error: the device check needs a GPU, but JAX's backend is "
             f"{jax.default_backend()!r}; use --smoke for the CPU run.")
  kernel_impl = "interpret" if args.smoke else "pallas"
  timed = (kernel_impl, "jax_dpa") if args.smoke else (
      "pallas", "cudnn", "jax_dpa")
  device = jax.devices()[0]
  report = dict(
      jax=jax.__version__, backend=jax.default_backend(),
      device=device.device_kind,
      compute_capability=getattr(device, "compute_capability", None),
      smoke=args.smoke, config={k: v for k, v in vars(args).items()})
  sections = args.sections.split(",")
  start = time.perf_counter()
  runners = {
      "correctness": lambda: section_correctness(args, kernel_impl),
      "attention": lambda: section_attention(args, timed, args.seq_lens),
      "matching": lambda: section_matching(args, (kernel_impl, "xla"),
                                           args.seq_lens),
      "memory": lambda: section_memory(args, (kernel_impl, "jax_dpa"),
                                       args.seq_lens),
      "mae_step": lambda: section_mae(args),
  }
  for name in sections:
    if name not in runners:
      sys.exit(f"error: unknown section {name!r}; use {','.join(runners)}.")
    elapsed = time.perf_counter() - start
    if elapsed > args.budget_s:
      report.setdefault("skipped", []).append(name)
      continue
    print(f"== {name} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
    report[name] = runners[name]()
    report["validated"] = validated(report)
    report["targets"] = targets(report)
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    if args.out:  # Kept up to date, in case the run is cut short.
      pathlib.Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
  common.emit_json(report, args.out)
  return report


if __name__ == "__main__":
  main()
