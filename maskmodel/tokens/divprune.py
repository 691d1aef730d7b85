"""DivPrune: "Diversity-based Visual Token Pruning for Large Multimodal
Models" (Alvar et al., CVPR 2025).

Pruning is posed as a Max-Min Diversity Problem (MMDP): keep the k tokens
whose minimum pairwise cosine distance is largest. It is solved greedily by
farthest-point sampling: start from the token farthest from its nearest
neighbour, then repeatedly add the token whose distance to the selected set
is largest.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (check_keep, cosine_similarity,
                                     keep_tokens, static_int,
                                     with_class_token)
from maskmodel.tokens.registry import register


def max_min_select(metric, k):
  """Greedy max-min (farthest-point) selection of k tokens per example.

  Args:
    metric: `[B, N, C]` features; cosine distance 1 - cos between rows.
    k: static number of tokens to select, 1 <= k <= N.

  Returns:
    `[B, k]` int32 indices in selection order. Unlike a plain argmax loop, a
    token is never selected twice, even among exact duplicates.
  """
  k = static_int(k, "k")
  n = metric.shape[1]
  if not 1 <= k <= n:
    raise ValueError(f"max_min_select: k={k} must be in [1, {n}].")
  dist = 1.0 - cosine_similarity(jax.lax.stop_gradient(metric))   # [B, N, N]

  def one(d):
    eye = jnp.eye(n, dtype=bool)
    first = jnp.argmax(jnp.where(eye, jnp.inf, d).min(axis=0))
    chosen = jnp.zeros(n, bool).at[first].set(True)
    picked = jnp.zeros(k, jnp.int32).at[0].set(first)

    def body(i, state):
      picked, chosen, to_set = state
      nxt = jnp.argmax(jnp.where(chosen, -jnp.inf, to_set))
      return (picked.at[i].set(nxt), chosen.at[nxt].set(True),
              jnp.minimum(to_set, d[nxt]))

    picked, _, _ = jax.lax.fori_loop(1, k, body, (picked, chosen, d[first]))
    return picked

  return jax.vmap(one)(dist)


@register("divprune", needs=("metric",), conserves_size=False)
def divprune(x, size, stats, *, keep, class_token=True, source=None):
  """Keeps `keep` tokens chosen by DivPrune's max-min diversity selection.

  The class token is always kept (first); the others are chosen among the
  remaining tokens and returned in their original order.
  """
  keep = check_keep(keep, x.shape[1], class_token, "divprune")
  p = int(bool(class_token))
  idx = max_min_select(stats.metric[:, p:], keep - p)
  idx = with_class_token(jnp.sort(idx, axis=-1), class_token)
  return keep_tokens(x, size, source, idx)
