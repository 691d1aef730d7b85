"""ToMe inference throughput of maskmodel's ViT-B/16, with timm as the peer.

Times `maskmodel.models.ViT` at ViT-B/16 (width 768, depth 12, 12 heads,
224x224x3, 1000 classes, random weights, float32) on one batch of images,
without token merging (r = 0) and with ToMe (Bolya et al. 2023, constant
schedule, proportional attention) at r = 8, 13 and 16. Each forward is
jitted and warm; the configurations are timed in turn, round-robin, so a
change in the machine's load hits all of them alike, and each reports the
median of its repeats. Prints one JSON document.

  python benchmarks/tome_speed.py                   # batch 8
  python benchmarks/tome_speed.py --timm            # also timm's ViT-B/16
  python benchmarks/tome_speed.py --breakdown       # + time per op class
  python benchmarks/tome_speed.py --bound           # + the truncation bound
  python benchmarks/tome_speed.py --cpu-dots both   # + XLA's default dots

`--bound` also times, at each r > 0, the same schedule with a reducer that
keeps the first tokens and does nothing else (`truncate`, registered here
for the benchmark only, without proportional attention): the speed-up any
reducer with that schedule could reach on this machine, had its own work
no cost.

Each forward is jitted with `maskmodel.kernels.inference_compiler_options`
(`--cpu-dots auto`), which on CPU, from batch 6 up (1,024 token rows), keeps
the dots in XLA's own dot thunk rather than YNNPACK. `--cpu-dots xla` and
`--cpu-dots ynn` force one or the other at any batch; `--cpu-dots both` times
maskmodel's configurations both ways in the same round-robin
(`maskmodel_r*` with XLA's dot thunk, `maskmodel-ynn_r*` with YNNPACK,
XLA's default).

`--timm` times PyTorch timm's `vit_base_patch16_224` (random weights,
eval mode, `torch.inference_mode`) in the same process and the same
round-robin, and the same model with ToMe at each r > 0 (`tome_torch.py`, a
PyTorch port of the paper's timm patch). torch and timm are not dependencies
of maskmodel; install them in the benchmark's environment only:
`pip install torch timm`.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
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

from maskmodel import config as mm  # pylint: disable=g-import-not-at-top
from maskmodel import tokens  # pylint: disable=g-import-not-at-top
from maskmodel.kernels import dispatch, inference_compiler_options  # pylint: disable=g-import-not-at-top
from maskmodel.models import build  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-bad-import-order,g-import-not-at-top
import xla_profile  # pylint: disable=g-bad-import-order,g-import-not-at-top

IMAGE, PATCH, WIDTH, DEPTH, HEADS, CLASSES = 224, 16, 768, 12, 12, 1000
MLP_RATIO = 4.0
NUM_TOKENS = (IMAGE // PATCH) ** 2 + 1


def vit_b16_config(attn_impl):
  m = mm.base_config().model
  m.patch_size, m.width, m.depth, m.num_heads = PATCH, WIDTH, DEPTH, HEADS
  m.mlp_ratio, m.pool, m.attn_impl, m.dtype = MLP_RATIO, "cls", attn_impl, "float32"
  return m


def truncate(x, size, stats, *, keep, class_token=True, source=None):
  """Keeps the first `keep` tokens without looking at them: the cost of a
  reduction schedule with none of the reducer's own work (`--bound`)."""
  del stats, class_token
  slot = jnp.arange(x.shape[1])
  label = jnp.broadcast_to(jnp.where(slot < keep, slot, tokens.PRUNED),
                           x.shape[:2])
  return tokens.Reduced(x[:, :keep], size[:, :keep],
                        tokens.relabel(source, label))


def maskmodel_forward(r, attn_impl, params, prop_attn, method="tome",
                      compiler_options=None):
  """Jitted `images -> logits` of ViT-B/16 reducing r tokens per block with
  `method` (r = 0: no reduction)."""
  m = build.with_token_reduction(vit_b16_config(attn_impl),
                                 method if r else "none", r,
                                 prop_attn=prop_attn)
  model = build.vit(m, num_classes=CLASSES, num_tokens=NUM_TOKENS)
  fn = jax.jit(lambda p, x: model.apply({"params": p}, x)["logits"],
               compiler_options=compiler_options)
  run = lambda x: fn(params, x).block_until_ready()
  return model, run, lambda x: fn.lower(params, x).compile().as_text()


def timm_forwards(batch, r_values, prop_attn):
  """{name: run} for timm's ViT-B/16 (r = 0) and, through `tome_torch`, with
  ToMe at each r > 0; and an info dict (versions, and the checks that the
  PyTorch ToMe is the same function as timm at r = 0 and as
  `maskmodel.tokens` at r > 0). Without torch and timm: ({}, the reason)."""
  try:
    import timm  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import tome_torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {}, f"not timed: {e} (pip install torch timm)"
  torch.set_num_threads(os.cpu_count())
  model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
  x = torch.randn(batch, 3, IMAGE, IMAGE)
  forwards = {"timm_r0": model}
  forwards.update({f"timm-tome_r{r}": tome_torch.tome_forward(model, r, prop_attn)
                   for r in r_values if r})

  def runner(fn):
    def run(_):
      with torch.inference_mode():
        return fn(x)
    return run
  runs = {name: runner(fn) for name, fn in forwards.items()}

  # The peer must compute what it claims to: ToMe at r = 0 is timm itself,
  # and its merging is maskmodel's on the same (random) keys and tokens.
  unpatched = runs["timm_r0"](None)
  patched = runner(tome_torch.tome_forward(model, 0, prop_attn))(None)
  rng = np.random.default_rng(0)
  metric, tok = (rng.normal(size=(2, NUM_TOKENS, d)).astype(np.float32)
                 for d in (64, 32))
  ones = np.ones((2, NUM_TOKENS, 1), np.float32)
  merge_t = tome_torch.bipartite_soft_matching(torch.from_numpy(metric), 16)
  merged_t, _ = tome_torch.merge_wavg(merge_t, torch.from_numpy(tok), torch.from_numpy(ones))
  merge_j, _ = tokens.bipartite_soft_matching(jnp.asarray(metric), 16, class_token=True)
  merged_j, _ = tokens.merge_wavg(merge_j, jnp.asarray(tok), jnp.asarray(ones))
  checks = dict(
      tome_r0_vs_timm_max_abs=float((unpatched - patched).abs().max()),
      tome_merge_vs_maskmodel_max_abs=float(
          np.abs(merged_t.numpy() - np.asarray(merged_j)).max()))
  if checks["tome_r0_vs_timm_max_abs"] > 1e-4 or checks["tome_merge_vs_maskmodel_max_abs"] > 1e-5:
    raise AssertionError(f"the PyTorch ToMe peer disagrees: {checks}")
  info = dict(torch=torch.__version__, timm=timm.__version__,
              threads=torch.get_num_threads(), checks=checks)
  return runs, info


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--r", default="0,8,13,16")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--settle", type=float, default=0.5,
                 help="seconds of sleep when switching between frameworks")
  p.add_argument("--attn-impl", default="auto")
  p.add_argument("--no-prop-attn", action="store_true")
  p.add_argument("--timm", action="store_true")
  p.add_argument("--bound", action="store_true",
                 help="also time each r > 0 with the do-nothing `truncate` "
                      "reducer")
  p.add_argument("--breakdown", action="store_true",
                 help="after timing, profile 3 more forwards of each maskmodel "
                      "configuration and add time per op class")
  p.add_argument("--cpu-dots", choices=("auto", "xla", "ynn", "both"),
                 default="auto",
                 help="auto: inference_compiler_options(batch * tokens); xla: "
                      "XLA's dot thunk; ynn: XLA's defaults; both: xla and ynn")
  p.add_argument("--out", default=None, help="also write the JSON here")
  args = p.parse_args(argv)
  r_values = [int(r) for r in args.r.split(",")]

  images = jax.random.normal(jax.random.PRNGKey(0),
                             (args.batch, IMAGE, IMAGE, 3), jnp.float32)
  base = build.vit(vit_b16_config(args.attn_impl), num_classes=CLASSES)
  params = jax.jit(base.init)(jax.random.PRNGKey(1), images)["params"]
  ours = dict(dispatch.CPU_DOT_LIBRARIES,
              auto=inference_compiler_options(args.batch * NUM_TOKENS))
  dots = ("xla", "ynn") if args.cpu_dots == "both" else (args.cpu_dots,)
  configs = [("maskmodel" + ("-ynn" if d == "ynn" and len(dots) > 1 else ""),
              r, "tome", not args.no_prop_attn, ours[d])
             for d in dots for r in r_values]
  if args.bound:
    tokens.register("truncate", needs=(), conserves_size=False)(truncate)
    configs += [("truncate", r, "truncate", False, ours[dots[0]])
                for r in r_values if r]
  runs, meta, hlo = {}, {}, {}
  for prefix, r, method, prop_attn, options in configs:
    model, run, hlo_text = maskmodel_forward(r, args.attn_impl, params,
                                             prop_attn, method, options)
    t0 = time.perf_counter()
    run(images)
    compile_s = time.perf_counter() - t0
    keep = (list(model.token_reduction.keep) if model.token_reduction
            else [NUM_TOKENS] * DEPTH)
    runs[f"{prefix}_r{r}"] = run
    hlo[f"{prefix}_r{r}"] = hlo_text
    meta[f"{prefix}_r{r}"] = dict(
        r=r, tokens_per_layer=keep, compile_s=round(compile_s, 2),
        gflops_per_image=round(tokens.vit_flops(
            IMAGE, PATCH, DEPTH, WIDTH, MLP_RATIO, HEADS, keep,
            num_classes=CLASSES) / 1e9, 3))
  timm_info = None
  if args.timm:
    timm_runs, timm_info = timm_forwards(args.batch, r_values, not args.no_prop_attn)
    for name, run in timm_runs.items():
      runs[name] = run
      meta[name] = dict(r=int(name.split("_r")[1]))

  for _ in range(args.warmup):
    for run in runs.values():
      run(images)
  seconds = {name: [] for name in runs}
  for _ in range(args.repeats):
    framework = None
    for name, run in runs.items():
      if name.startswith("timm") != framework:
        # Let the other framework's worker threads go idle first (OpenMP
        # threads spin for a while after each parallel region).
        framework = name.startswith("timm")
        time.sleep(args.settle)
      t0 = time.perf_counter()
      run(images)
      seconds[name].append(time.perf_counter() - t0)

  if args.breakdown:
    for name, hlo_text in hlo.items():
      run = runs[name]
      meta[name]["breakdown"] = xla_profile.breakdown(
          hlo_text(images), lambda run=run: [run(images) for _ in range(3)],
          steps=3, model_scope="ViT")

  results = {}
  for name, s in seconds.items():
    med = statistics.median(s)
    results[name] = dict(meta[name], img_per_s=round(args.batch / med, 2),
                         median_ms=round(1e3 * med, 1),
                         min_ms=round(1e3 * min(s), 1),
                         max_ms=round(1e3 * max(s), 1))
  doc = dict(
      benchmark="tome_speed", model="ViT-B/16", image=IMAGE, batch=args.batch,
      dtype="float32", attn_impl=args.attn_impl,
      prop_attn=not args.no_prop_attn, repeats=args.repeats,
      cpu_dots=args.cpu_dots, compiler_options=ours[dots[0]] or {},
      device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
      processor=platform.processor() or platform.machine(),
      jax=jax.__version__, results=results)
  speed = lambda a, b: round(results[a]["img_per_s"] / results[b]["img_per_s"], 3)
  if "maskmodel_r0" in results:
    for r in r_values:
      if r:
        doc[f"r{r}_over_r0"] = speed(f"maskmodel_r{r}", "maskmodel_r0")
        if f"truncate_r{r}" in results:
          doc[f"truncate_r{r}_over_r0"] = speed(f"truncate_r{r}", "maskmodel_r0")
        if "maskmodel-ynn_r0" in results:
          doc[f"ynn_r{r}_over_ynn_r0"] = speed(f"maskmodel-ynn_r{r}", "maskmodel-ynn_r0")
    for name in ("maskmodel_r0", "maskmodel-ynn_r0"):
      if name in results and "timm_r0" in results:
        doc[f"{name}_over_timm_r0"] = speed(name, "timm_r0")
  if "maskmodel-ynn_r0" in results:
    for r in r_values:
      doc[f"xla_over_ynn_dots_r{r}"] = speed(f"maskmodel_r{r}", f"maskmodel-ynn_r{r}")
  bound = [results[n] for n in results
           if n.startswith("truncate") or n == "maskmodel_r0"]
  if len(bound) > 2:
    # Median forward time against analytic FLOPs over the schedules that do
    # transformer work only: the intercept is what no token count removes.
    fixed, slope, residual = common.linear_fit(
        [b["gflops_per_image"] for b in bound], [b["median_ms"] for b in bound])
    doc["bound_fit"] = dict(fixed_ms=round(fixed, 1),
                            ms_per_gflop_per_image=round(slope, 2),
                            max_residual_ms=round(residual, 1))
  for r in r_values:
    peer = results.get(f"timm-tome_r{r}")
    if peer and "timm_r0" in results:
      doc[f"timm-tome_r{r}_over_timm_r0"] = speed(f"timm-tome_r{r}", "timm_r0")
    if peer and f"maskmodel_r{r}" in results:
      doc[f"maskmodel_r{r}_over_timm-tome_r{r}"] = speed(f"maskmodel_r{r}",
                                                         f"timm-tome_r{r}")
  if args.timm:
    doc["timm"] = timm_info
  common.emit_json(doc, args.out, indent=1)


if __name__ == "__main__":
  main()
