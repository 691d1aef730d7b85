"""Device mesh and shardings. Data parallelism over every device for now:
the batch is split along the mesh's "data" axis and parameters are replicated.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


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
