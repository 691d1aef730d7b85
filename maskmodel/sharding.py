"""Device mesh and the data layout on it.

The mesh has three named axes, from `config.mesh` (default
`(("data", -1), ("fsdp", 1), ("tensor", 1))`, -1 taking the devices the
others leave):

- "data": pure data parallelism; params are replicated along it.
- "fsdp": data parallelism that also shards the params and the optimizer
  state (ZeRO-3 / FSDP): each device holds 1/fsdp of every sharded leaf and
  XLA all-gathers it for the matmul.
- "tensor": tensor (model) parallelism: attention heads and MLP hidden units
  are split over it; every device of a tensor group sees the same rows.

The batch is split over ("data", "fsdp"), so `batch_size` must be divisible
by data x fsdp. Which param dims go to "fsdp" and "tensor" is decided by the
partition rules of `maskmodel.partitioning`. The innermost axis ("tensor")
gets the devices with the fastest links (`jax.make_mesh`).
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from maskmodel.config import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes the batch is split over
DEFAULT_MESH = (("data", -1), ("fsdp", 1), ("tensor", 1))


def mesh_shape(mesh_config, num_devices: int) -> dict:
  """{axis: size} for every axis of `AXES`, in that order, from a config's
  `mesh` ((name, size) pairs; -1 takes the rest; an axis not named is 1).
  Raises a one-line `ConfigError` naming the fix."""
  pairs = [tuple(p) for p in (mesh_config if mesh_config is not None else DEFAULT_MESH)]
  example = "e.g. mesh=(('data', -1), ('fsdp', 1), ('tensor', 1))"
  if any(len(p) != 2 for p in pairs):
    raise ConfigError(f"mesh={pairs} must be (name, size) pairs; {example}.")
  names = [n for n, _ in pairs]
  unknown = [n for n in names if n not in AXES]
  if unknown:
    raise ConfigError(f"mesh axis {unknown[0]!r} is unknown; use the axes "
                      f"{AXES} ({example}).")
  if len(set(names)) != len(names):
    raise ConfigError(f"mesh={pairs} names an axis twice; name each of {AXES} "
                      "at most once.")
  sizes = dict(pairs)
  free = [n for n, s in pairs if s == -1]
  if len(free) > 1:
    raise ConfigError(f"mesh={pairs} has -1 for {free}; at most one axis may "
                      "take the rest of the devices.")
  bad = [n for n, s in pairs if not (s == -1 or (isinstance(s, int) and s >= 1))]
  if bad:
    raise ConfigError(f"mesh axis {bad[0]!r} has size {sizes[bad[0]]!r}; use a "
                      "positive int, or -1 for the rest of the devices.")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(
          f"mesh={pairs}: the fixed axes ({fixed} devices) do not divide the "
          f"{num_devices} devices; make their product a divisor of {num_devices}.")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(
        f"mesh={pairs} spans {fixed} devices but there are {num_devices}; make "
        f"the sizes multiply to {num_devices}, or set one axis to -1.")
  return {a: int(sizes.get(a, 1)) for a in AXES}


def make_mesh(devices=None, mesh_config=None, whole_slice=None) -> Mesh:
  """The ("data", "fsdp", "tensor") mesh over `devices` (default: all).

  With all devices, or `whole_slice=True` (the devices of a whole slice
  that this process does not own, such as a compile-only TPU topology's),
  `jax.make_mesh` lays the axes out on the physical topology (the last axis
  on the fastest links); a subset is reshaped in the given order.
  `make_mesh(devices)` with no config is pure data parallelism:
  (len(devices), 1, 1).
  """
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_config, len(devices))
  dims = tuple(shape[a] for a in AXES)
  if whole_slice is None:
    whole_slice = len(devices) == jax.device_count()
  if whole_slice:
    types = (AxisType.Auto,) * len(AXES)
    try:
      return jax.make_mesh(dims, AXES, axis_types=types, devices=devices)
    except NotImplementedError:
      # An axis that is no product of whole physical axes (tensor = 4 on
      # v6e:16x16's 16 x 16 torus): split a physical axis instead, which
      # keeps each logical axis on neighbouring chips.
      from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
      return Mesh(mesh_utils.create_device_mesh(
          dims, devices, allow_split_physical_axes=True), AXES, axis_types=types)
  return Mesh(np.asarray(devices).reshape(dims), AXES,
              axis_types=(AxisType.Auto,) * len(AXES))


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of the batch axes."""
  return math.prod(mesh.shape.get(a, 1) for a in BATCH_AXES)


def batch_axes(mesh) -> tuple:
  """The batch axes this mesh has (an older one-axis mesh has only "data")."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ("data", "fsdp"), the rest replicated."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def constrain_batch(x):
  """Keeps an activation's leading axis split over the batch axes of the
  ambient mesh (`jax.set_mesh`); a no-op with no mesh, a one-device mesh or
  a batch the axes do not divide. Inside jit only."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  axes = batch_axes(mesh)
  def constrain(a):
    if not axes or a.ndim == 0 or a.shape[0] % math.prod(mesh.shape[n] for n in axes):
      return a
    return jax.lax.with_sharding_constraint(a, P(axes))
  return jax.tree.map(constrain, x)


def shard_batch(batch, sharding: NamedSharding):
  """Puts this process's rows of a batch onto the mesh as one global array."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)


def shard_replicated_batch(batch, sharding: NamedSharding):
  """For a batch every process holds in full (evals): each process feeds its
  equal share of the rows, so the global array is the batch itself."""
  def local(x):
    n = x.shape[0] // jax.process_count()
    return x[jax.process_index() * n:(jax.process_index() + 1) * n]
  return shard_batch(jax.tree.map(local, batch), sharding)


def to_host(x) -> np.ndarray:
  """The whole of a (possibly multi-process) global array, on every host."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
