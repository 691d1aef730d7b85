"""Zero-TPrune: "Zero-Shot Token Pruning through Leveraging of the Attention
Graph in Pre-Trained Transformers" (Wang, Dedhia and Jha, CVPR 2024).

I-stage: the head-averaged attention matrix is read as a weighted
directed graph and Weighted PageRank gives each token an importance,
    s_{t+1}(j) = sum_i A[i, j] s_t(i),   s_0 = 1/N,
a fixed number of power iterations (A is row-stochastic, so s stays a
distribution); the least important tokens are pruned.
S-stage: the importance ranking partitions the surviving tokens
into an important group and a less important group; the less important
tokens most similar (cosine, on the metric) to the important group are
pruned, since they duplicate information that is kept.

Here both stages run in one call: of the `N - keep` tokens removed, a
fraction `similarity_fraction` goes to the S-stage and the rest to the
I-stage. The paper's optional refinements (emphasizing informative regions,
variance-based head filter) are not included.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (check_keep, cosine_similarity,
                                     gather_tokens, keep_tokens, static_int,
                                     with_class_token)


def weighted_pagerank(attn, num_iters=30):
  """Token importance `[B, N]` by Weighted PageRank on an attention graph.

  `attn` is `[B, N, N]` (or `[B, H, N, N]`, averaged over heads), rows are
  queries and sum to 1; row i's weights are the edges from token i.
  """
  num_iters = static_int(num_iters, "num_iters")
  attn = jax.lax.stop_gradient(attn.astype(jnp.float32))
  if attn.ndim == 4:
    attn = attn.mean(axis=1)
  n = attn.shape[-1]
  s = jnp.full(attn.shape[:2], 1.0 / n, jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  return jax.lax.fori_loop(
      0, num_iters,
      lambda _, s: jnp.einsum("bij,bi->bj", attn, s, precision=hi), s)


def zero_tprune(x, size, metric, attn, *, keep, num_iters=30,
                similarity_fraction=0.5, class_token=True, source=None):
  """Keeps `keep` tokens by Zero-TPrune's importance then similarity stages.

  Args:
    x: `[B, N, D]` tokens; size: `[B, N, 1]`; source: optional `[B, N, N0]`.
    metric: `[B, N, C]` features for the S-stage similarity (e.g. keys).
    attn: `[B, N, N]` or `[B, H, N, N]` attention probabilities of the layer.
    keep: static number of output tokens, class token included.
    num_iters: power iterations of Weighted PageRank.
    similarity_fraction: share of the removed tokens chosen by similarity
      (capped so the less important group can supply them).
    class_token: token 0 is always kept, first (it still takes part in the
      PageRank graph).

  Returns:
    `Reduced`: class token, then the kept tokens in their original order.
  """
  n_total = x.shape[1]
  keep = check_keep(keep, n_total, class_token, "zero_tprune")
  p = int(bool(class_token))
  n, k = n_total - p, keep - p
  removed = n - k
  if not 0.0 <= similarity_fraction <= 1.0:
    raise ValueError(f"zero_tprune: similarity_fraction={similarity_fraction} "
                     "must be in [0, 1].")
  r_s = min(int(round(removed * similarity_fraction)), k)
  r_i = removed - r_s

  importance = weighted_pagerank(attn, num_iters)[:, p:]
  order = jnp.argsort(-importance, axis=-1, stable=True)[:, :n - r_i]
  m = n - r_i
  n_imp = (m + 1) // 2            # the less important half has m // 2 >= r_s
  important, rest = order[:, :n_imp], order[:, n_imp:]
  if r_s > 0:
    sim = cosine_similarity(gather_tokens(metric[:, p:], rest),
                            gather_tokens(metric[:, p:], important))
    dup = jax.lax.stop_gradient(sim).max(axis=-1)                 # [B, |rest|]
    survivors = jnp.argsort(dup, axis=-1, stable=True)[:, :rest.shape[1] - r_s]
    rest = jnp.take_along_axis(rest, survivors, axis=1)
  idx = jnp.sort(jnp.concatenate([important, rest], axis=1), axis=-1)
  return keep_tokens(x, size, source, with_class_token(idx, class_token))
