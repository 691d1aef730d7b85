"""The `impl` switch shared by every kernel entry point.

- `xla`: the plain-jnp reference, compiled by XLA on any backend (an entry
  point may name a faster library op per platform, e.g. cuDNN attention).
- `pallas`: the Pallas kernel, compiled for the platform the program is
  lowered for: Triton on GPU, Mosaic on TPU. There is no compiled Pallas on
  CPU: lowering `pallas` for CPU fails.
- `interpret`: the same Pallas kernel run by the Pallas interpreter
  (`interpret=True`); slow, but runs anywhere, so CPU tests use it.
- `auto`: `pallas` on the platforms where the kernel passed its on-device
  checks (`VALIDATED_PLATFORMS`), `xla` everywhere else.

The choice is made per lowering platform, not from `jax.default_backend()`
at trace time (`by_platform`, through `jax.lax.platform_dependent`): every
branch is traced, and lowering keeps only the one for the target. So a TPU or
GPU program lowers and compiles from any host (AOT, `jax.export`), and a CPU
computation on a GPU host gets the CPU branch.

A `pallas_call` is one custom call that XLA's SPMD partitioner cannot split:
under `jit` with batch-sharded inputs it would gather the whole batch onto
every device. `per_device_batch` runs it under `jax.shard_map` instead, one
call per device on its own rows, whenever a mesh is set (`jax.set_mesh`;
the training loop sets its mesh).

`inference_compiler_options` is the `compiler_options` to `jax.jit` a
forward pass with, per backend (see its docstring).
"""
from __future__ import annotations

import contextlib
import functools
import threading

import jax
from jax.sharding import PartitionSpec as P

IMPLS = ("auto", "xla", "pallas", "interpret")

_TRITON_PLATFORMS = ("gpu", "cuda", "rocm")
# The lowering platforms of `jax.lax.platform_dependent`, and the Pallas
# backend that compiles for each.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
_PALLAS_BACKENDS = {"cuda": "triton", "rocm": "triton", "tpu": "mosaic"}

# Where `impl="auto"` runs each Pallas kernel: platforms where it passed every
# correctness check of `benchmarks/device_check.py` (compiled kernel against
# the reference: forward, gradients, statistics; f32 and bf16; odd lengths;
# bias, mask, causal) and was faster than the XLA path there.
# `maskmodel/kernels/README.md` ("Device check") records the card, the jax
# version and the figures behind each entry:
# - attention, cuda: every check passed on an H100 (sm_90); fwd+bwd 1.4-3.1x
#   faster than XLA's attention, and the bf16 MAE ViT-B/16 step 1.34x.
# - token_matching: every check passed on the same H100, but the kernel ran
#   at 0.34-0.69x the speed of the XLA path, so `auto` keeps XLA.
VALIDATED_PLATFORMS: dict[str, tuple[str, ...]] = {
    "attention": ("cuda",),
    "token_matching": (),
}


def kernel_backend(platform: str | None = None) -> str | None:
  """'triton' on GPU, 'mosaic' on TPU, None where Pallas cannot compile."""
  platform = jax.default_backend() if platform is None else platform
  if platform in _TRITON_PLATFORMS:
    return "triton"
  if platform == "tpu":
    return "mosaic"
  return None


# XLA's CPU backend hands each dot to YNNPACK by default (a `__ynn_fusion`).
# With YNNPACK kept for reductions only, dots run in XLA's own dot thunk
# (Eigen) instead.
CPU_XLA_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
# The `compiler_options` for each CPU dot library, by name (`--cpu-dots` in
# the benchmarks): YNNPACK is XLA's default.
CPU_DOT_LIBRARIES = {"ynn": None, "xla": CPU_XLA_DOTS}
# From this many rows (batch x tokens) on, XLA's dot thunk beat YNNPACK on
# ViT-B's four dense matmuls in two runs of `python benchmarks/cpu_dots.py
# --repeats 15` on a 2-core AVX-512 CPU: 0.98-0.99x at 788 rows,
# 1.05-1.07x at 1,024, 1.085-1.095x at 1,576 (and 0.92x at 197, first run).
CPU_XLA_DOTS_MIN_ROWS = 1024


def inference_compiler_options(rows: int, platform: str | None = None
                               ) -> dict[str, str]:
  """`compiler_options` for `jax.jit` of a forward pass (inference, evals).

  `rows` is the row count of the forward's dense matmuls: batch x tokens
  for a ViT (before any token reduction). On CPU, from
  `CPU_XLA_DOTS_MIN_ROWS` rows, the dots run in XLA's own dot thunk rather
  than YNNPACK: ViT-B/16 inference at batch 8 (1,576 rows) ran 6-7.5%
  faster on a 2-core AVX-512 machine
  (`python benchmarks/tome_speed.py --timm --cpu-dots both`, figures in
  `benchmarks/README.md`). The training loop keeps XLA's default: the same
  change made the ViT-B/16 MAE train step slower
  (`python benchmarks/mae_step.py --cpu-dots xla`). Other backends: none.

    fn = jax.jit(forward, compiler_options=inference_compiler_options(b * n))
  """
  platform = jax.default_backend() if platform is None else platform
  if platform == "cpu" and rows >= CPU_XLA_DOTS_MIN_ROWS:
    return dict(CPU_XLA_DOTS)
  return {}


# The GPU archs whose Triton configuration is chosen separately (their
# shared memory per block differs: 163 KiB on sm_80, 99 KiB on sm_86 and
# sm_89, 227 KiB on sm_90a); any other GPU gets the configuration that
# compiles on all of them.
TRITON_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90a")
_triton_target = threading.local()


@contextlib.contextmanager
def compiling_for_gpu(arch: str | None):
  """Within this block the Triton kernels are configured for `arch` (one of
  `TRITON_ARCHS`, or None for the configuration that compiles on every
  one), whatever GPU this process has: for compiling a GPU program ahead of
  time, from any host (`benchmarks/gpu_compile.py`). Trace a function in
  the block that `jax.jit` has not traced before (`maskmodel.aot.
  triton_kernels` does): a cached trace keeps the kernels it was traced
  with."""
  if arch is not None and arch not in TRITON_ARCHS:
    raise ValueError(f"unknown GPU arch {arch!r}; use one of {TRITON_ARCHS} "
                     "or None.")
  previous = getattr(_triton_target, "arch", False)
  _triton_target.arch = arch
  try:
    yield
  finally:
    _triton_target.arch = previous


def triton_target() -> str | None:
  """The GPU arch that the Triton kernels are configured for while tracing.

  The one `compiling_for_gpu` names; else that of this process's first GPU
  (a CUDA compute capability of `TRITON_ARCHS`); else None: a configuration
  that compiles on every arch of `TRITON_ARCHS`. The kernels are lowered
  before XLA compiles them for a device, so a program traced on one host
  and run on a GPU of another class should be traced under
  `compiling_for_gpu`.
  """
  arch = getattr(_triton_target, "arch", False)
  if arch is not False:
    return arch
  return _local_gpu_arch()


@functools.cache
def _local_gpu_arch() -> str | None:
  # Only the default backend's devices: asking for a backend by name would
  # start it on hosts where it is installed but not wanted.
  device = jax.local_devices()[0]
  capability = getattr(device, "compute_capability", None)
  if device.platform != "gpu" or not capability:
    return None
  arch = "sm_" + str(capability).replace(".", "")
  arch = "sm_90a" if arch == "sm_90" else arch
  return arch if arch in TRITON_ARCHS else None


def check_impl(impl: str, op: str = "kernel") -> str:
  """Returns `impl` if it is one of `IMPLS`, else raises a `ValueError`."""
  if impl not in IMPLS:
    raise ValueError(f"{op} impl={impl!r} is unknown; use one of {IMPLS}.")
  return impl


def pallas_on(op: str, impl: str, platform: str,
              auto_kernel: bool = True) -> bool:
  """Whether `impl` runs `op`'s compiled Pallas kernel on `platform`."""
  if platform not in _PALLAS_BACKENDS:
    return False
  return impl == "pallas" or (
      impl == "auto" and auto_kernel and platform in VALIDATED_PLATFORMS[op])


def by_platform(op: str, impl: str, args, *, kernel, xla, auto_kernel=True):
  """Runs `op` on `args` with the implementation that `impl` picks for
  whichever platform the program is lowered for.

  Args:
    op: "attention" or "token_matching" (a key of `VALIDATED_PLATFORMS`).
    impl: one of `IMPLS`.
    args: a tuple of pytrees, passed to the chosen callable.
    kernel: the Pallas op, called as `kernel(*args, backend=..., interpret=...)`
      with backend "triton" or "mosaic"; it runs per device under a mesh
      (`per_device_batch`). The interpreter runs the Triton layout.
    xla: `{platform: callable}` for the XLA path, with key None as the
      default for platforms not named.
    auto_kernel: False keeps `auto` on the XLA path for these inputs
      everywhere (shapes or dtypes the kernel is not validated for).

  Every branch is traced; lowering keeps the target's (see the module
  docstring). `impl="pallas"` has no CPU branch, so lowering it for CPU
  fails with JAX's "not found for platform cpu".
  """
  check_impl(impl, op)

  def compiled(backend, interpret=False):
    fn = functools.partial(kernel, backend=backend, interpret=interpret)
    return lambda *a: per_device_batch(fn, *a)

  if impl == "interpret":
    return compiled("triton", interpret=True)(*args)
  kernels = {b: compiled(b) for b in sorted(set(_PALLAS_BACKENDS.values()))}
  branches = {}
  for platform in PLATFORMS:
    if pallas_on(op, impl, platform, auto_kernel):
      branches[platform] = kernels[_PALLAS_BACKENDS[platform]]
    elif impl != "pallas":
      branches[platform] = xla.get(platform, xla[None])
  if len(set(map(id, branches.values()))) == 1:  # One program everywhere.
    return next(iter(branches.values()))(*args)
  return jax.lax.platform_dependent(*args, **branches)


def per_device_batch(fn, *args):
  """`fn(*args)`, run per device on its rows when a mesh is set.

  Every array in `args` and in the result has the batch as its leading
  axis, split over the batch axes ("data", "fsdp") of the mesh set with
  `jax.set_mesh` (`maskmodel.sharding`), the same rows on every device of a
  "tensor" group; a mesh without those names splits over all its axes. With
  no mesh, a one-device mesh, or a batch the axes do not divide, it is a
  plain call.
  """
  mesh = jax.sharding.get_abstract_mesh()
  batch = jax.tree.leaves(args)[0].shape[0]
  if mesh.empty or mesh.size == 1:
    return fn(*args)
  axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
  axes = axes or tuple(mesh.axis_names)
  ways = 1
  for a in axes:
    ways *= mesh.shape[a]
  if ways == 1 or batch % ways:
    return fn(*args)
  spec = P(axes)
  return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec,
                       check_vma=False)(*args)
