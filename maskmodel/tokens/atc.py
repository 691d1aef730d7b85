"""ATC: "Agglomerative Token Clustering" (Haurum et al., ECCV 2024).

Bottom-up hierarchical clustering of the tokens on cosine distance
(1 - cos of the metric), repeatedly joining the two closest clusters until the
target count remains, under one of three linkages:
  single   d(A, B) = min over pairs,
  complete d(A, B) = max over pairs,
  average  d(A, B) = mean over pairs (UPGMA).
Each cluster then becomes one token, the size-weighted mean of its members.

Implemented in JAX with a static number of merge steps (`lax.fori_loop`) over a
masked distance matrix, updated by the Lance-Williams formulas. Clusters are
returned ordered by their smallest member index (the official code takes
scikit-learn's arbitrary label order). Ties go to the lowest index pair.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (check_keep, cosine_similarity,
                                     merge_by_assignment, static_int)
from maskmodel.tokens.registry import register

LINKAGES = ("average", "complete", "single")


def _linkage_update(linkage, d_i, d_j, n_i, n_j):
  if linkage == "single":
    return jnp.minimum(d_i, d_j)
  if linkage == "complete":
    return jnp.maximum(d_i, d_j)
  return (n_i * d_i + n_j * d_j) / (n_i + n_j)


def cluster_labels_from_distance(dist, num_clusters, linkage="average"):
  """Agglomerative clustering of one distance matrix `[N, N]` -> labels `[N]`.

  Labels are in `[0, num_clusters)`, ordered by each cluster's smallest
  member index.
  """
  if linkage not in LINKAGES:
    raise ValueError(f"ATC linkage={linkage!r} is unknown; use one of "
                     f"{LINKAGES}.")
  n = dist.shape[0]
  idx = jnp.arange(n)
  big = jnp.inf
  d0 = jnp.where(idx[:, None] == idx[None, :], big, dist.astype(jnp.float32))

  def step(_, state):
    d, rep, count, active = state
    flat = jnp.argmin(d)
    # d is symmetric, so the first minimum in row-major order has i < j.
    i, j = flat // n, flat % n
    row = _linkage_update(linkage, d[i], d[j], count[i], count[j])
    row = jnp.where(active & (idx != i) & (idx != j), row, big)
    d = d.at[i, :].set(row).at[:, i].set(row)
    d = d.at[j, :].set(big).at[:, j].set(big)
    rep = jnp.where(rep == j, i, rep)
    count = count.at[i].add(count[j])
    active = active.at[j].set(False)
    return d, rep, count, active

  init = (d0, idx, jnp.ones(n, jnp.float32), jnp.ones(n, bool))
  _, rep, _, active = jax.lax.fori_loop(0, n - num_clusters, step, init)
  rank = jnp.cumsum(active) - 1
  return rank[rep].astype(jnp.int32)


def agglomerative_labels(metric, num_clusters, linkage="average"):
  """ATC cluster labels `[B, N]` from `metric [B, N, C]` (cosine distance)."""
  num_clusters = static_int(num_clusters, "num_clusters")
  n = metric.shape[1]
  if not 1 <= num_clusters <= n:
    raise ValueError(f"ATC: num_clusters={num_clusters} must be in [1, {n}].")
  dist = 1.0 - cosine_similarity(jax.lax.stop_gradient(metric))
  return jax.vmap(
      lambda d: cluster_labels_from_distance(d, num_clusters, linkage))(dist)


@register("atc", needs=("metric",), conserves_size=True, prop_attn=True)
def atc(x, size, stats, *, keep, class_token=True, source=None,
        linkage="average"):
  """Clusters the tokens into `keep` tokens (class token kept apart, first).

  Args:
    x: `[B, N, D]` tokens; size: `[B, N, 1]`; source: optional `[B, N0]` index map.
    stats: `stats.metric` `[B, N, C]`, the clustering features (keys in the
      paper).
    keep: static number of output tokens, class token included.
    linkage: "average", "complete" or "single".
  """
  n_total = x.shape[1]
  keep = check_keep(keep, n_total, class_token, "atc")
  p = int(bool(class_token))
  label = agglomerative_labels(stats.metric[:, p:], keep - p, linkage) + p
  if class_token:
    label = jnp.concatenate(
        [jnp.zeros((x.shape[0], 1), jnp.int32), label], axis=1)
  return merge_by_assignment(x, size, source, label, keep)
