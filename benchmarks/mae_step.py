"""MAE ViT-B/16 train-step throughput and MFU against this machine's own f32
matmul peak, both measured in the same process.

Times the loop's real step (`maskmodel.train.train_step`, jitted with the
loop's shardings and donated state) on synthetic 224x224x3 images: MAE
pretraining of ViT-B/16 with mask ratio 0.75, the 512x8x16 decoder,
normalized-pixel loss and AdamW, as `configs/mae/imagenet_vit_b16.py` sets
them (no gradient clipping), in float32. Prints one JSON document.

  python benchmarks/mae_step.py                        # batch 8
  python benchmarks/mae_step.py --batch 16 --out mae_step.json
  python benchmarks/mae_step.py --breakdown            # + time per op class
  python benchmarks/mae_step.py --cpu-dots xla         # dots outside YNNPACK

FLOPs per step come from XLA's cost analysis of the compiled step, with an
analytic count (matmuls only, 2 FLOPs per multiply-add) beside it. The peak
is the best f32 `jnp.dot` of square matrices, run by the same XLA CPU client
and thread pool as the step. Each timed repeat is preceded by its own peak
measurement, so load from other processes on a shared machine shows up in
both (`mfu_paired` is the median of the per-repeat ratios); `mfu` divides the
median step rate by the best peak seen, the stricter of the two.
`mfu_cpu_time` compares FLOPs per CPU-second (user + sys) of the step and of
the peak dots: it moves less with other load, but it ignores cores left idle
inside the step, so it reads higher than `mfu` even on a quiet machine.

Allocator (`--malloc`): XLA's CPU runtime allocates the step's temporaries
(`temp_bytes_per_step`) with one `posix_memalign` per step, from a worker
thread. glibc serves that with a fresh `mmap` and unmaps it on free, so every
step page-faults the whole buffer in 4 KiB zero pages
(`minor_page_faults_per_step`, kernel time in `cpu_s_per_step.sys`).
`--malloc` picks glibc's settings (the process re-executes itself with
them, since glibc reads them at startup):
  default: glibc's defaults, as `python -m maskmodel.main` runs.
  keep: `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2^40`:
    the buffer comes from the main heap and stays mapped, so no faults, but
    the heap fragments and grows (`max_rss_bytes`), so it is no setting for
    long runs.
  thp: `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`: glibc asks for transparent
    huge pages on its mmaps (the kernel must allow `madvise`): far fewer
    faults, but their cost rises when the kernel must compact memory to
    find huge pages.
Dots (`--cpu-dots`): `ynn`, XLA's CPU default and what the training loop
compiles, hands each dot to YNNPACK; `xla` keeps them in XLA's own dot
thunk (`maskmodel.kernels.dispatch.CPU_XLA_DOTS`, the CPU choice of
`inference_compiler_options`). The peak dots compile with the same choice.
Synthetic data: for speed only.
"""
from __future__ import annotations

import argparse
import os
import sys

# glibc reads these once, at startup: they must be in place before the
# first allocation, hence the re-exec below (before importing JAX).
MALLOC_MODES = {
    "default": {},
    "thp": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "keep": {"MALLOC_ARENA_MAX": "1",   # worker threads share the main heap,
             "MALLOC_MMAP_MAX_": "0",   # which grows with brk, not mmap,
             "MALLOC_TRIM_THRESHOLD_": str(1 << 40)},  # and is never trimmed.
}
_REEXEC_MARK = "MAE_STEP_BENCH_MALLOC"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
  p.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compile")
  p.add_argument("--malloc", choices=tuple(MALLOC_MODES), default="default",
                 help="glibc settings for the step's temporaries (see the "
                      "module docstring)")
  p.add_argument("--breakdown", action="store_true",
                 help="profile 2 more steps and add time per op class")
  p.add_argument("--cpu-dots", choices=("ynn", "xla"), default="ynn",
                 help="which library runs the dots on CPU (see the module "
                      "docstring)")
  p.add_argument("--out", default=None, help="also write the JSON here")
  return p.parse_args(argv)


def maybe_reexec(args):
  if args.malloc == "default" or os.environ.get(_REEXEC_MARK) == args.malloc:
    return
  env = dict(os.environ, **MALLOC_MODES[args.malloc])
  if args.malloc == "thp" and os.environ.get("GLIBC_TUNABLES"):
    env["GLIBC_TUNABLES"] = (os.environ["GLIBC_TUNABLES"] + ":"
                             + MALLOC_MODES["thp"]["GLIBC_TUNABLES"])
  env[_REEXEC_MARK] = args.malloc
  os.execve(sys.executable, [sys.executable] + sys.argv, env)


if __name__ == "__main__":
  maybe_reexec(parse_args())

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import importlib.util
import pathlib
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from maskmodel import config as mm
from maskmodel import sharding
from maskmodel.kernels import dispatch
from maskmodel.tasks import get_task
from maskmodel.train import initial_state, train_step

import common  # pylint: disable=g-bad-import-order
import xla_profile  # pylint: disable=g-bad-import-order


def vit_b16_mae_config(batch_size: int):
  """The ViT-B/16 MAE pretraining config of `configs/mae/imagenet_vit_b16.py`
  (He et al. 2021, Appendix A.1) at `batch_size`, in float32. One epoch
  without warmup: the lr schedule does not change the step's cost."""
  path = pathlib.Path(__file__).resolve().parents[1] / "configs/mae/imagenet_vit_b16.py"
  spec = importlib.util.spec_from_file_location("imagenet_vit_b16", path)
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  c = recipe.get_config("1")
  c.total_steps = recipe.IMAGENET_TRAIN_IMAGES // batch_size
  c.optimizer.lr = c.optimizer.lr * batch_size / c.batch_size
  c.batch_size = batch_size
  c.optimizer.warmup_steps = 0
  c.model.dtype = "float32"
  c.data.name = "synthetic"
  return c


def transformer_train_flops(tokens, width, depth, mlp_dim):
  """Matmul FLOPs of fwd + bwd (3x fwd) of `depth` pre-LN blocks, one image."""
  per_block = (2 * tokens * width * 3 * width      # qkv
               + 2 * 2 * tokens * tokens * width   # q k^T and probs v
               + 2 * tokens * width * width        # out projection
               + 2 * 2 * tokens * width * mlp_dim)  # MLP
  return 3 * depth * per_block


def analytic_step_flops(config):
  """Matmul FLOPs of one MAE train step (whole batch), by component.

  Forward + backward = 3x forward for every matmul whose input needs a
  gradient; the patch embedding sees the images, which need none, so it
  costs 2x. Layer norms, GELU, softmax, the loss and AdamW are elementwise
  and left out.
  """
  m, t, d = config.model, config.task, config.data
  n = (d.image_size // m.patch_size) ** 2
  patch_dim = m.patch_size**2 * d.channels
  keep = max(1, int(n * (1 - t.mask_ratio)))
  enc_mlp, dec_mlp = int(m.width * m.mlp_ratio), int(t.decoder.width * 4.0)
  parts = {
      # MAE embeds all N patches, then keeps K (as the reference code does).
      "patch_embed": 2 * 2 * n * patch_dim * m.width,
      "encoder": transformer_train_flops(1 + keep, m.width, m.depth, enc_mlp),
      "decoder_embed": 3 * 2 * (1 + keep) * m.width * t.decoder.width,
      "decoder": transformer_train_flops(1 + n, t.decoder.width, t.decoder.depth,
                                         dec_mlp),
      "decoder_pred": 3 * 2 * (1 + n) * t.decoder.width * patch_dim,
  }
  parts = {k: float(v * config.batch_size) for k, v in parts.items()}
  parts["total"] = sum(parts.values())
  return parts


class MatmulPeak:
  """Best f32 FLOP/s of `jnp.dot` on square matrices, on this process's
  XLA CPU client (so with the step's thread pool and dot library)."""

  def __init__(self, sizes=(2048, 3072, 4096), compiler_options=None):
    self.dot = jax.jit(jnp.dot, compiler_options=compiler_options)
    self.operands = {}
    for s in sizes:
      k1, k2 = jax.random.split(jax.random.PRNGKey(s))
      self.operands[s] = (jax.random.normal(k1, (s, s), jnp.float32),
                          jax.random.normal(k2, (s, s), jnp.float32))
      jax.block_until_ready(self.dot(*self.operands[s]))  # compile
    self.best = {s: 0.0 for s in sizes}

  def measure(self, reps=3):
    """Returns the best FLOP/s of this call over all sizes, and the FLOPs
    per CPU-second (user + sys, all threads) of the whole call."""
    now, flops = 0.0, 0.0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for s, (a, b) in self.operands.items():
      for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(self.dot(a, b))
        rate = 2.0 * s**3 / (time.perf_counter() - t0)
        now = max(now, rate)
        flops += 2.0 * s**3
        self.best[s] = max(self.best[s], rate)
    return now, flops / _cpu_seconds(r0)


def _cpu_seconds(r0):
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _best_ms(fn, *args, reps=5):
  out = fn(*args)
  jax.block_until_ready(out)
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best * 1e3


def memory_bound_floor(tx, state):
  """The optimizer update alone, and the machine's memory bandwidth.

  `optimizer_ms`: `tx.update` + `apply_updates` on the step's own params,
  optimizer state and a gradient tree, jitted, as the step runs it.
  `triad_gb_per_s`: `a * b + c` over as many floats as there are params
  (4 arrays of 4 bytes moved per element): the bandwidth such a pass gets.
  """
  params, opt_state = state["params"], state["opt_state"]
  grads = jax.tree.map(lambda p: p * 1e-3, params)

  def update(p, o, g):
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  n = sum(x.size for x in jax.tree.leaves(params))
  a, b, c = (jnp.full((n,), v, jnp.float32) for v in (1.0, 2.0, 3.0))
  triad_ms = _best_ms(jax.jit(lambda a, b, c: a * b + c), a, b, c)
  return {"params": int(n),
          "optimizer_ms": round(_best_ms(jax.jit(update), params, opt_state,
                                         grads), 1),
          "triad_gb_per_s": round(16 * n / triad_ms / 1e6, 1)}


def jitted_train_step(config, batch_size):
  """The loop's train step for `config`, jitted exactly as
  `train_and_evaluate` jits it (shardings, donated state), with its initial
  state and one batch of synthetic images on the devices."""
  mesh = sharding.make_mesh()
  mm.validate(config, mesh.size)
  task = get_task(config)
  size, ch = config.data.image_size, config.data.channels
  rng = np.random.default_rng(0)
  host_batch = {"image": rng.normal(size=(batch_size, size, size, ch)).astype(np.float32),
                "label": np.zeros((batch_size,), np.int32)}
  state, tx, schedule = initial_state(config, task, host_batch)
  repl, data_sharding = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = jax.device_put(state, repl)
  batch = sharding.shard_batch(host_batch, data_sharding)
  step_fn = jax.jit(functools.partial(train_step, task, tx, schedule),
                    in_shardings=(repl, data_sharding), out_shardings=(repl, repl),
                    donate_argnums=(0,))
  return step_fn, state, batch, tx


def main(args):
  config = vit_b16_mae_config(args.batch)
  step_fn, state, batch, tx = jitted_train_step(config, args.batch)
  size, ch = config.data.image_size, config.data.channels

  options = dispatch.CPU_DOT_LIBRARIES[args.cpu_dots]
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile(compiler_options=options)
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost["flops"])
  analytic = analytic_step_flops(config)
  temp_bytes = compiled.memory_analysis().temp_size_in_bytes

  peak = MatmulPeak(compiler_options=options)
  load_before = os.getloadavg()
  for _ in range(args.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)

  step_s, peaks, peaks_cpu, usage = [], [], [], []
  for _ in range(args.repeats):
    now, per_cpu_s = peak.measure()
    peaks.append(now)
    peaks_cpu.append(per_cpu_s)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    step_s.append(dt / args.steps)
    usage.append(((r1.ru_utime - r0.ru_utime) / args.steps,
                  (r1.ru_stime - r0.ru_stime) / args.steps,
                  (r1.ru_minflt - r0.ru_minflt) / args.steps))
  now, per_cpu_s = peak.measure()
  peaks.append(now)
  peaks_cpu.append(per_cpu_s)
  load_after = os.getloadavg()

  med = statistics.median(step_s)
  best_peak = max(peak.best.values())
  paired = [xla_flops / s / p for s, p in zip(step_s, peaks)]
  # FLOPs per CPU-second of the step over those of the peak dots: less
  # sensitive to other processes than wall time, but it does not count the
  # time a core sits idle inside the step, so it reads higher than `mfu`.
  step_cpu_s = statistics.median(u + s for u, s, _ in usage)
  mfu_cpu = (xla_flops / step_cpu_s) / statistics.median(peaks_cpu)
  result = {
      "benchmark": "mae_vit_b16_train_step",
      "model": dict(encoder="ViT-B/16 (768 wide, 12 deep, 12 heads)",
                    decoder="512 wide, 8 deep, 16 heads", image_size=size,
                    channels=ch, mask_ratio=config.task.mask_ratio,
                    norm_pix_loss=config.task.norm_pix_loss,
                    optimizer="adamw" + (" + global-norm clip"
                                         if config.optimizer.grad_clip else ""),
                    dtype=config.model.dtype,
                    params=int(sum(x.size for x in jax.tree.leaves(state["params"])))),
      "batch": args.batch,
      "steps_per_repeat": args.steps,
      "repeats": args.repeats,
      "step_ms_median": med * 1e3,
      "step_ms_min": min(step_s) * 1e3,
      "step_ms_per_repeat": [round(s * 1e3, 1) for s in step_s],
      "steps_per_s": 1.0 / med,
      "img_per_s": args.batch / med,
      "flops_per_step_xla": xla_flops,
      "flops_per_step_analytic": analytic["total"],
      "flops_analytic_breakdown": analytic,
      "achieved_flop_per_s": xla_flops / med,
      "matmul_peak_flop_per_s": best_peak,
      "matmul_peak_by_size": {str(k): v for k, v in peak.best.items()},
      "matmul_peak_per_repeat": [round(p / 1e9, 1) for p in peaks],
      "mfu": xla_flops / med / best_peak,
      "mfu_paired": statistics.median(paired),
      "mfu_per_repeat": [round(x, 3) for x in paired],
      "mfu_cpu_time": mfu_cpu,
      "cpu_cores_busy_in_step": step_cpu_s / med,
      "cpu_s_per_step": dict(user=statistics.median(u for u, _, _ in usage),
                             sys=statistics.median(s for _, s, _ in usage)),
      "minor_page_faults_per_step": statistics.median(f for _, _, f in usage),
      "temp_bytes_per_step": temp_bytes,
      "malloc": args.malloc,
      "malloc_env": {k: os.environ[k] for k in sorted(
          {k for mode in MALLOC_MODES.values() for k in mode}) if k in os.environ},
      "transparent_hugepage": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
      "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "loss": float(metrics["loss"]),
      "compile_s": compile_s,
      "loadavg_1m_before_after": [load_before[0], load_after[0]],
      "jax": jax.__version__,
      "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
      "num_devices": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "cpu_affinity": len(os.sched_getaffinity(0)),
      "cpu_model": _cpu_model(),
      "python": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "cpu_dots": args.cpu_dots,
      "compiler_options": options or {},
  }
  if args.breakdown:
    def two_steps():
      nonlocal state
      for _ in range(2):
        state, _ = compiled(state, batch)
      jax.block_until_ready(state)
    result["breakdown"] = xla_profile.breakdown(
        compiled.as_text(), two_steps, steps=2, model_scope="MaskedAutoencoder",
        outside_class="optimizer_and_grad_norm")
    result["breakdown"]["memory_bound_floor"] = memory_bound_floor(tx, state)
  common.emit_json(result, args.out, indent=2)
  return result


def _read(path):
  try:
    return pathlib.Path(path).read_text().strip()
  except OSError:
    return None


def _cpu_model():
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


if __name__ == "__main__":
  main(parse_args())
