"""k-means over raw image patches: CCViT's tokenizer (Yan et al. 2023, Sec. 3.1).

CCViT ("Centroid-centered Modeling for Efficient Vision Transformer
Pre-training", Cakeyan/CCViT_Public `train_faiss_kmeans.py`) clusters the raw
16x16x3 patches of 50,000 ImageNet images (50 per class, resized to 256 and
center-cropped to 224, pixels in [0, 1]) into k = 8192 centroids with 20
iterations of faiss' Lloyd k-means (L2, seeded by a random sample of the
points). A patch's token is the id of its nearest centroid, and the
centroid's pixels are the patch's "centroid-centered" stand-in.

Here the same in JAX, as pure functions with static shapes:
- `init_centroids`: k distinct points of the data, drawn at random (faiss'
  seeding);
- `assign`: the nearest centroid under ||x||^2 - 2 x.c + ||c||^2, computed in
  row chunks so that a [points, k] matrix is never whole;
- `lloyd_step`: every centroid moves to the mean of its points (one faiss
  iteration); `minibatch_step`: Sculley's web-scale k-means (2010), each
  centroid a running mean of the points it has won, for data too large to
  pass over at every step;
- `fit`: `steps` iterations of either, jitted. `batch_size=0` (or one at
  least the number of points) is Lloyd's algorithm on all points, the
  official recipe, whose objective never increases.

Empty clusters: a centroid that owns no point (this iteration under Lloyd;
so far, under mini-batches) moves onto one of the points farthest from their
own centroid, each empty centroid onto a different one (as scikit-learn's
`_relocate_empty_clusters`). faiss splits a large cluster instead; both keep
every id in use, and neither raises the objective.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from maskmodel.config import ConfigError

CHUNK = 8192  # rows per piece of the [points, k] distance matrix
HIGHEST = jax.lax.Precision.HIGHEST  # no bf16 passes in the distance matmul


def sq_distances(x, centroids):
  """||x - c||^2 for each row of `x` [M, P] and centroid [K, P]: [M, K]."""
  x = x.astype(jnp.float32)
  c = centroids.astype(jnp.float32)
  cross = jnp.matmul(x, c.T, precision=HIGHEST)
  return ((x * x).sum(-1, keepdims=True) - 2.0 * cross
          + (c * c).sum(-1)[None, :])


@functools.partial(jax.jit, static_argnames="chunk")
def assign(x, centroids, chunk: int = CHUNK):
  """The nearest centroid of each row of `x` [M, P]: (ids int32 [M], squared
  distances [M], clipped at 0 against rounding)."""
  m, p = x.shape

  def nearest(rows):
    d = sq_distances(rows, centroids)
    ids = jnp.argmin(d, axis=-1).astype(jnp.int32)
    return ids, jnp.maximum(jnp.take_along_axis(d, ids[:, None], -1)[:, 0], 0.0)

  if m <= chunk:
    return nearest(x)
  pieces = -(-m // chunk)
  padded = jnp.zeros((pieces * chunk, p), x.dtype).at[:m].set(x)
  ids, dist = jax.lax.map(nearest, padded.reshape(pieces, chunk, p))
  return ids.reshape(-1)[:m], dist.reshape(-1)[:m]


@jax.jit
def inertia(x, centroids):
  """The k-means objective: mean squared distance of each row of `x` to its
  nearest centroid (faiss' `obj`, divided by the number of points)."""
  return assign(x, centroids)[1].mean()


@functools.partial(jax.jit, static_argnames="num_clusters")
def init_centroids(rng, x, num_clusters: int):
  """`num_clusters` distinct rows of `x` [M, P], drawn uniformly (faiss'
  random seeding)."""
  idx = jax.random.choice(rng, x.shape[0], (num_clusters,), replace=False)
  return x[idx].astype(jnp.float32)


def _relocate_empty(centroids, empty, x, dist):
  """Each centroid flagged `empty` moves onto a distinct point among the
  farthest from their own centroids (the i-th empty one onto the i-th
  farthest)."""
  k = centroids.shape[0]
  _, farthest = jax.lax.top_k(dist, k)
  rank = jnp.cumsum(empty) - 1
  return jnp.where(empty[:, None], x[farthest[jnp.clip(rank, 0, k - 1)]],
                   centroids)


def _sums(x, ids, k):
  sums = jax.ops.segment_sum(x.astype(jnp.float32), ids, num_segments=k)
  counts = jax.ops.segment_sum(jnp.ones_like(ids, jnp.float32), ids,
                               num_segments=k)
  return sums, counts


@jax.jit
def lloyd_step(centroids, x):
  """One Lloyd iteration on all of `x`: assign, then each centroid becomes
  its points' mean. Returns (new centroids, the objective of the assignment
  made with the old ones)."""
  ids, dist = assign(x, centroids)
  sums, counts = _sums(x, ids, centroids.shape[0])
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  new = _relocate_empty(means, counts == 0, x, dist)
  return new, dist.mean()


@jax.jit
def minibatch_step(centroids, counts, x):
  """One mini-batch k-means step (Sculley 2010, Alg. 1, over a batch at
  once): each centroid is the running mean of every point it has won so far,
  c <- c + (sum of its batch points - m c) / (n + m). Centroids that have
  still won nothing are relocated. Returns (centroids, counts, the batch's
  objective before the step)."""
  ids, dist = assign(x, centroids)
  sums, m = _sums(x, ids, centroids.shape[0])
  total = counts + m
  new = centroids + (sums - m[:, None] * centroids) / jnp.maximum(total, 1.0)[:, None]
  new = _relocate_empty(new, total == 0, x, dist)
  return new, total, dist.mean()


class KMeansFit(NamedTuple):
  centroids: jax.Array  # [K, P] float32
  inertia: jax.Array  # [steps]: the objective at each iteration, before its update


@functools.partial(jax.jit, static_argnames=("num_clusters", "steps",
                                             "batch_size"))
def fit(rng, patches, num_clusters: int, steps: int = 20, batch_size: int = 0):
  """k-means of `patches` [..., P] into `num_clusters` centroids.

  batch_size 0, or not smaller than the number of patches: `steps` Lloyd
  iterations on all of them (CCViT's 20 faiss iterations). Otherwise
  `steps` mini-batch steps on `batch_size` patches drawn anew each step.
  """
  x = patches.reshape(-1, patches.shape[-1]).astype(jnp.float32)
  m = x.shape[0]
  if m < num_clusters:
    raise ValueError(f"k-means needs at least num_clusters={num_clusters} "
                     f"points, got {m}; fit on more images or lower the "
                     "number of clusters.")
  k_init, k_batches = jax.random.split(rng)
  centroids = init_centroids(k_init, x, num_clusters)
  if batch_size <= 0 or batch_size >= m:
    def body(c, _):
      return lloyd_step(c, x)
    centroids, obj = jax.lax.scan(body, centroids, None, length=steps)
    return KMeansFit(centroids, obj)
  if batch_size < num_clusters:
    raise ValueError(f"k-means batch_size={batch_size} is below "
                     f"num_clusters={num_clusters}; use 0 (all points) or at "
                     "least as many points as clusters.")

  def body(carry, key):
    c, n = carry
    batch = x[jax.random.choice(key, m, (batch_size,), replace=False)]
    c, n, obj = minibatch_step(c, n, batch)
    return (c, n), obj
  (centroids, _), obj = jax.lax.scan(
      body, (centroids, jnp.zeros((num_clusters,), jnp.float32)),
      jax.random.split(k_batches, steps))
  return KMeansFit(centroids, obj)


class KMeansTokenizer:
  """A `PatchTokenizer` whose frozen state is `{"codebook": [K, P]}`: a
  patch's id is its nearest centroid, and an id decodes to the centroid's
  pixels (CCViT's tokenizer).

  vocab_size: k (CCViT: 8192). iterations: Lloyd iterations or mini-batch
  steps (CCViT: 20). batch_size: 0 for Lloyd on all points (CCViT), else
  the mini-batch size.
  """

  def __init__(self, vocab_size: int, iterations: int = 20,
               batch_size: int = 0, option: str = "task.tokenizer"):
    if vocab_size < 2:
      raise ConfigError(f"{option}.vocab_size={vocab_size} must be >= 2 "
                        "(CCViT uses 8192).")
    if iterations < 1:
      raise ConfigError(f"{option}.iterations={iterations} must be >= 1 "
                        "(CCViT uses 20).")
    if batch_size and batch_size < vocab_size:
      raise ConfigError(f"{option}.batch_size={batch_size} is below "
                        f"vocab_size={vocab_size}; use 0 (all patches) or at "
                        "least one patch per cluster.")
    self.vocab_size = int(vocab_size)
    self.iterations = int(iterations)
    self.batch_size = int(batch_size)

  def placeholder(self, patch_dim: int):
    return {"codebook": jnp.zeros((self.vocab_size, patch_dim), jnp.float32)}

  def fit(self, rng, patches):
    result = fit(rng, patches, self.vocab_size, self.iterations,
                 self.batch_size)
    return {"codebook": result.centroids}

  def encode(self, frozen, patches):
    codebook = jax.lax.stop_gradient(frozen["codebook"])
    ids, _ = assign(patches.reshape(-1, patches.shape[-1]), codebook)
    return ids.reshape(patches.shape[:-1])

  def decode(self, frozen, ids):
    return jnp.take(jax.lax.stop_gradient(frozen["codebook"]), ids, axis=0)
