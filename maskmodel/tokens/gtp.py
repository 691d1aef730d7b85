"""GTP-ViT: "Efficient Vision Transformers via Graph-based Token Propagation"
(Xu et al., WACV 2024).

Tokens are ranked by importance (an attention statistic such as the
attention mass each token receives); the least important are removed, and
instead of being discarded their features are propagated over a sparse graph
to their neighbours among the kept tokens (graph-based token propagation).
Here the graph is semantic: each removed token links to its
`num_neighbors` most similar kept tokens (cosine on the metric), with edge
weights proportional to the (non-negative) similarity and summing to one per
removed token. Propagation is size-aware, as in the official code's token
scales: a kept token becomes the size-weighted mean of itself and the mass
it receives, so sizes still sum to the input count and proportional
attention stays consistent.

The source map assigns each removed token to its strongest neighbour.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (Reduced, check_keep, cosine_similarity,
                                     gather_tokens, init_size, static_int)

_HIGHEST = jax.lax.Precision.HIGHEST


def propagation_graph(metric_removed, metric_kept, num_neighbors):
  """Sparse weights `[B, R, K]`: each removed token's top neighbours.

  Row r holds non-negative weights on the `num_neighbors` kept tokens most
  similar to removed token r, summing to one (uniform if none is similar).
  """
  sim = jax.lax.stop_gradient(cosine_similarity(metric_removed, metric_kept))
  k = sim.shape[-1]
  m = max(1, min(static_int(num_neighbors, "num_neighbors"), k))
  top_sim, top_idx = jax.lax.top_k(sim, m)                       # [B, R, m]
  w = jnp.maximum(top_sim, 0.0)
  total = w.sum(axis=-1, keepdims=True)
  w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 1.0 / m)
  onehot = jax.nn.one_hot(top_idx, k, dtype=jnp.float32)             # [B,R,m,K]
  return jnp.einsum("brm,brmk->brk", w, onehot, precision=_HIGHEST)


def gtp(x, size, metric, importance, *, keep, num_neighbors=4,
        class_token=True, source=None):
  """Keeps the `keep` most important tokens, propagating the removed ones.

  Args:
    x: `[B, N, D]` tokens; size: `[B, N, 1]`; source: optional `[B, N, N0]`.
    metric: `[B, N, C]` features for the graph (e.g. head-averaged keys).
    importance: `[B, N]` token importance (e.g. attention mass received).
    keep: static number of output tokens, class token included.
    num_neighbors: kept neighbours each removed token propagates to.
    class_token: token 0 is always kept, first, and receives nothing.

  Returns:
    `Reduced`: class token, then the kept tokens in their original order.
  """
  n_total = x.shape[1]
  keep = check_keep(keep, n_total, class_token, "gtp")
  if size is None:
    size = init_size(x)
  p = int(bool(class_token))
  k = keep - p
  importance = jax.lax.stop_gradient(importance.astype(jnp.float32))[:, p:]
  order = jnp.argsort(-importance, axis=-1, stable=True) + p
  kept = jnp.sort(order[:, :k], axis=-1)
  removed = order[:, k:]
  size = size.astype(jnp.float32)
  x_kept, s_kept = gather_tokens(x, kept), gather_tokens(size, kept)
  x_rem, s_rem = gather_tokens(x, removed), gather_tokens(size, removed)
  w = propagation_graph(gather_tokens(metric, removed),
                        gather_tokens(metric, kept), num_neighbors)   # [B,R,K]
  new_size = s_kept + jnp.einsum("brk,bro->bko", w, s_rem, precision=_HIGHEST)
  total = (x_kept.astype(jnp.float32) * s_kept
           + jnp.einsum("brk,brd->bkd", w, x_rem.astype(jnp.float32) * s_rem,
                        precision=_HIGHEST))
  new_x = (total / new_size).astype(x.dtype)
  new_source = None
  if source is not None:
    nearest = jax.nn.one_hot(jnp.argmax(w, axis=-1), k, dtype=jnp.float32)
    new_source = gather_tokens(source, kept) + jnp.einsum(
        "brk,brm->bkm", nearest, gather_tokens(source, removed),
        precision=_HIGHEST)
  if class_token:
    cls = jnp.zeros((x.shape[0], 1), jnp.int32)
    new_x = jnp.concatenate([gather_tokens(x, cls), new_x], axis=1)
    new_size = jnp.concatenate([gather_tokens(size, cls), new_size], axis=1)
    if source is not None:
      new_source = jnp.concatenate([gather_tokens(source, cls), new_source],
                                   axis=1)
  return Reduced(new_x, new_size, new_source)
