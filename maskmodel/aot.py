"""Ahead-of-time compilation for accelerators that this host does not have.

With `libtpu` (the `aot` extra pins the version `jax[tpu]` asks for; `make
install` puts it in `<venv>/libtpu-aot`, see `libtpu_dir`),
`jax.experimental.topologies.get_topology_desc` gives compile-only TPU
devices of any generation. Compiling on them runs the real XLA:TPU and Mosaic
compilers, VMEM allocator included, on a CPU host:

  device = aot.tpu_device("v5e")
  compiled = aot.compile_for(device, fn, jax.ShapeDtypeStruct(...), ...)
  compiled.memory_analysis()

For GPUs, the Pallas Triton kernels of a program lowered for `cuda` compile
to PTX with the Triton compiler of XLA's CUDA plugin, and to cubin with the
CUDA toolkit's `ptxas`, whose report gives registers, spills and shared
memory per arch (sm_80, sm_86, sm_89, sm_90a):

  for kernel in aot.triton_kernels(fn, *shape_dtype_structs):
    aot.gpu_kernel_report(kernel, "sm_89")

This needs the plugin registered (`cuda_compiler_available`), which on a
host without CUDA takes `JAX_PLATFORMS=cpu` (`cuda_compile_env`).

`python -m maskmodel.aot --config FILE.py --topology v5e:16x16` compiles a
config's whole train step for a TPU slice and prints the memory per chip:
it runs the planner, `maskmodel/planner.py` (`python -m maskmodel.planner`).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

import jax
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding

# One small slice of each generation; a program for one chip compiles the same
# on any slice.
TPU_TOPOLOGIES = {
    "v4": "v4:2x2x1",
    "v5e": "v5e:2x2",
    "v5p": "v5p:2x2x1",
    "v6e": "v6e:2x2",
    "tpu7x": "tpu7x:2x2x1",
}


def libtpu_dir() -> str | None:
  """Where libtpu is installed apart from the environment, or None:
  `$MASKMODEL_LIBTPU_DIR`, else `<venv>/libtpu-aot` (where `make install`
  puts it).

  It is kept off `sys.path` on purpose: installed in the environment, every
  JAX process on a host without a TPU would initialize it and print libtpu's
  warnings at its first `jax.devices()`. `tpu_device` adds it to the path
  when it first needs it, after the process's own backends are up.
  """
  path = os.environ.get("MASKMODEL_LIBTPU_DIR") or os.path.join(
      sys.prefix, "libtpu-aot")
  return path if os.path.isdir(os.path.join(path, "libtpu")) else None


def libtpu_available() -> bool:
  """Whether compile-only TPU devices can be made in this process."""
  return (importlib.util.find_spec("libtpu") is not None
          or libtpu_dir() is not None)


@functools.cache
def tpu_topology(name: str, chip_config_name: str | None = None):
  """The compile-only devices of the TPU slice `name` ("v5e:4x4",
  "v5p:4x4x4"), as `jax.experimental.topologies` describes it; raises
  `JaxRuntimeError` for a name libtpu does not know. `chip_config_name=
  "megacore"` makes one device of a v4 chip's two TensorCores, as a v4 VM
  runs (without it each core is a device)."""
  if importlib.util.find_spec("libtpu") is None and libtpu_dir() is not None:
    jax.devices()  # this process's own backends first, without libtpu
    if libtpu_dir() not in sys.path:
      sys.path.append(libtpu_dir())
  saved = dict(os.environ)
  # Off a TPU VM, libtpu would otherwise ask the metadata server for a
  # topology, which does not exist.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  # Compile-only devices touch no chip, so two such processes (test workers,
  # a benchmark beside the tests) may load libtpu at once; without this the
  # second one fails on libtpu's lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    kwargs = {} if chip_config_name is None else dict(
        chip_config_name=chip_config_name)
    return topologies.get_topology_desc(name, "tpu", **kwargs)
  finally:
    # Loading libtpu sets TPU_LIBRARY_PATH: a child process would inherit it
    # and initialize libtpu as its backend, with libtpu's warnings.
    os.environ.clear()
    os.environ.update(saved)


def tpu_device(generation: str):
  """A compile-only device of a TPU `generation` (a key of TPU_TOPOLOGIES)."""
  if generation not in TPU_TOPOLOGIES:
    raise ValueError(f"unknown TPU generation {generation!r}; use one of "
                     f"{sorted(TPU_TOPOLOGIES)}.")
  return tpu_topology(TPU_TOPOLOGIES[generation]).devices[0]


def compile_for(device, fn, *args):
  """Compiles `jax.jit(fn)` for `device`; `args` are ShapeDtypeStructs (or
  arrays), placed on that device."""
  sharding = SingleDeviceSharding(device)
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
          for a in args]
  return jax.jit(fn).trace(*args).lower(
      lowering_platforms=(device.platform,)).compile()


# ----------------------------------------------------------------------------
# GPUs: Pallas' Triton kernels to PTX and cubin, without a GPU.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GpuArch:
  """A CUDA compute capability, as Triton and ptxas name it.

  `smem_per_block` is the most shared memory one block may use (the opt-in
  limit, `cudaDevAttrMaxSharedMemoryPerBlockOptin`), from the compute
  capability table of NVIDIA's CUDA C++ programming guide.
  """
  capability: str  # Triton's arch name, "major.minor".
  ptxas_name: str  # ptxas --gpu-name.
  smem_per_block: int
  cards: str


GPU_ARCHS = {
    "sm_80": GpuArch("8.0", "sm_80", 163 * 1024, "A100, A30"),
    "sm_86": GpuArch("8.6", "sm_86", 99 * 1024, "A10, A40, RTX 30"),
    "sm_89": GpuArch("8.9", "sm_89", 99 * 1024, "L4, L40S, RTX 40"),
    # Triton targets the arch-specific sm_90a (wgmma) on Hopper.
    "sm_90a": GpuArch("9.0", "sm_90a", 227 * 1024, "H100, H200"),
}


@dataclasses.dataclass(frozen=True)
class TritonKernel:
  """One `pallas_call` of a program lowered for `cuda`: its Triton IR."""
  name: str
  ir: bytes  # Triton MLIR bytecode, as the lowering hands it to XLA.
  num_warps: int
  num_stages: int


def triton_kernels(fn, *args) -> list[TritonKernel]:
  """The Triton kernels in `jax.jit(fn)` lowered for `cuda`, from any host.

  `args` are ShapeDtypeStructs. With this jaxlib the Pallas Triton lowering
  emits one `__gpu$xla.gpu.triton` custom call per kernel, whose backend
  config carries the kernel's Triton IR, `num_warps` and `num_stages`; XLA
  compiles them when it compiles the program for a GPU.
  """
  from jax._src.lib.mlir import ir  # pylint: disable=g-import-not-at-top
  # A fresh callable: JAX reuses a function's cached trace, which would keep
  # the kernels of an earlier `dispatch.compiling_for_gpu` block.
  module = jax.jit(lambda *a: fn(*a)).trace(*args).lower(
      lowering_platforms=("cuda",)).compiler_ir("stablehlo")
  found = []

  def walk(op):
    for region in op.regions:
      for block in region:
        for inner in block:
          if inner.name == "stablehlo.custom_call" and "triton" in ir.StringAttr(
              inner.attributes["call_target_name"]).value:
            config = ir.DictAttr(inner.attributes["mhlo.backend_config"])
            found.append(TritonKernel(
                name=ir.StringAttr(config["name"]).value,
                ir=ir.StringAttr(config["ir"]).value_bytes,
                num_warps=ir.IntegerAttr(config["num_warps"]).value,
                num_stages=ir.IntegerAttr(config["num_stages"]).value))
          walk(inner)

  walk(module.operation)
  return found


def cuda_plugin_dir() -> str | None:
  """Where the CUDA PJRT plugin is installed apart from the environment, or
  None: `$MASKMODEL_CUDA_PLUGIN_DIR`, else `<venv>/cuda-aot` (where `make
  install` puts it).

  It is kept off `sys.path` on purpose: once installed, every JAX process on
  a host without a GPU would load it, and unless `JAX_PLATFORMS=cpu` is set
  print a traceback ("Unable to load cuDNN") at its first `jax.devices()`.
  Only the deviceless GPU checks put it on their path (`cuda_compile_env`).
  """
  path = os.environ.get("MASKMODEL_CUDA_PLUGIN_DIR") or os.path.join(
      sys.prefix, "cuda-aot")
  return path if os.path.isdir(os.path.join(path, "jax_plugins")) else None


def cuda_compile_env() -> dict[str, str] | None:
  """The environment for a child process that compiles Triton kernels to
  PTX without a GPU (`benchmarks/gpu_compile.py`), or None where the CUDA
  plugin is not installed. `JAX_PLATFORMS=cpu` lets the plugin register
  its Triton compiler without the CUDA libraries a GPU run needs."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  plugin = cuda_plugin_dir()
  if plugin is None:
    try:
      installed = importlib.util.find_spec("jax_plugins.xla_cuda13")
    except ModuleNotFoundError:  # No jax_plugins package at all.
      installed = None
    if installed is None:
      return None
  else:
    env["PYTHONPATH"] = os.pathsep.join(
        [plugin] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def cuda_compiler_available() -> bool:
  """Whether Triton IR can be compiled to PTX here: the CUDA PJRT plugin
  (`jax-cuda13-plugin`, `jax-cuda13-pjrt`) registered its Triton compiler.
  Off a GPU host the plugin registers only when the CUDA version check is
  skipped, e.g. with `JAX_PLATFORMS=cpu` (see `run_with_cuda_plugin`)."""
  from jax._src.lib import triton  # pylint: disable=g-import-not-at-top
  jax.devices()  # Plugins register when the backends initialize.
  return triton.has_compilation_handler("CUDA")


def triton_to_ptx(kernel: TritonKernel, arch: str) -> tuple[str, int]:
  """(PTX, shared memory in bytes that a launch requests) for `arch` (a key
  of GPU_ARCHS), from Triton's compiler as XLA's CUDA plugin ships it."""
  from jax._src.lib import triton  # pylint: disable=g-import-not-at-top
  result = triton.compile("CUDA", kernel.ir, GPU_ARCHS[arch].capability,
                          num_warps=kernel.num_warps, num_ctas=1,
                          num_stages=kernel.num_stages)
  return result.asm, int(result.smem_bytes)


_PTXAS_PROPERTIES = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
    r"loads")
_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")


def ptxas_report(ptx: str, arch: str, ptxas: str = "ptxas") -> dict:
  """Runs `ptxas -v --gpu-name=<arch>` on `ptx`; returns its resource report:
  registers per thread, stack frame and spill bytes per thread, and the
  warnings, including performance ones (wgmma serialization on sm_90a)."""
  with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "kernel.ptx")
    with open(src, "w") as f:
      f.write(ptx)
    run = subprocess.run(
        [ptxas, "-v", f"--gpu-name={GPU_ARCHS[arch].ptxas_name}", src, "-o",
         os.path.join(tmp, "kernel.cubin")],
        capture_output=True, text=True, check=False)
  text = run.stdout + run.stderr
  if run.returncode:
    raise RuntimeError(f"ptxas failed for {arch}: {text[-2000:]}")
  stack, stores, loads = map(int, _PTXAS_PROPERTIES.search(text).groups())
  # ptxas reports wgmma serialization (C7511, sm_90a) as "info".
  warnings = sorted({line.split(":", 1)[1].strip()
                     for line in text.splitlines()
                     if line.startswith("ptxas warning")
                     or "Performance Loss" in line})
  return dict(registers=int(_PTXAS_REGISTERS.search(text).group(1)),
              stack_frame=stack, spill_stores=stores, spill_loads=loads,
              warnings=warnings)


def gpu_kernel_report(kernel: TritonKernel, arch: str) -> dict:
  """Compiles one kernel for `arch` to PTX and cubin; its resource report,
  with the shared memory it asks for against the arch's limit."""
  ptx, smem = triton_to_ptx(kernel, arch)
  report = dict(name=kernel.name, arch=arch, num_warps=kernel.num_warps,
                num_stages=kernel.num_stages, smem=smem,
                smem_limit=GPU_ARCHS[arch].smem_per_block)
  report.update(ptxas_report(ptx, arch))
  return report


if __name__ == "__main__":
  # The planner lives in its own module; `python -m maskmodel.aot` is its
  # other name.
  from maskmodel import planner  # pylint: disable=g-import-not-at-top
  planner.run()
