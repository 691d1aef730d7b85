"""Ahead-of-time compilation for accelerators that this host does not have.

With `libtpu` installed (the test extra pins the version `jax[tpu]` asks
for), `jax.experimental.topologies.get_topology_desc` gives compile-only TPU
devices of any generation. Compiling on them runs the real XLA:TPU and Mosaic
compilers, VMEM allocator included, on a CPU host:

  device = aot.tpu_device("v5e")
  compiled = aot.compile_for(device, fn, jax.ShapeDtypeStruct(...), ...)
  compiled.memory_analysis()
"""
from __future__ import annotations

import functools
import os

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


@functools.cache
def tpu_device(generation: str):
  """A compile-only device of a TPU `generation` (a key of TPU_TOPOLOGIES)."""
  if generation not in TPU_TOPOLOGIES:
    raise ValueError(f"unknown TPU generation {generation!r}; use one of "
                     f"{sorted(TPU_TOPOLOGIES)}.")
  # Off a TPU VM, libtpu would otherwise ask the metadata server for a
  # topology, which does not exist.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  # Compile-only devices touch no chip, so two such processes (test workers,
  # a benchmark beside the tests) may load libtpu at once; without this the
  # second one fails on libtpu's lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  topology = topologies.get_topology_desc(TPU_TOPOLOGIES[generation], "tpu")
  return topology.devices[0]


def compile_for(device, fn, *args):
  """Compiles `jax.jit(fn)` for `device`; `args` are ShapeDtypeStructs (or
  arrays), placed on that device."""
  sharding = SingleDeviceSharding(device)
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
          for a in args]
  return jax.jit(fn).trace(*args).lower(
      lowering_platforms=(device.platform,)).compile()
