"""Zero-TPrune: "Zero-Shot Token Pruning through Leveraging of the Attention
Graph in Pre-Trained Transformers" (Wang, Dedhia and Jha, CVPR 2024). There
is no public code; this follows the paper's final design.

Weighted PageRank (WPR, Sec. 3.1) reads each head's attention matrix as a
weighted directed graph and iterates
    s_{t+1}(j) = sum_i A_h[i, j] s_t(i),   s_0 = 1/N,
per head. Heads whose score variance (of N s, so a uniform score is 1) lies
outside [0.01, 0.7] are dropped (variance-based head filter), and the kept
heads are aggregated by root mean square. The number of iterations falls with
depth: 30 in the first third of the blocks, 10 in the middle third, 1 in the
last (the paper: 30-50 shallow, 5-10 middle, 1 deep).

A pruning layer runs I' -> S -> I (Sec. 3.3, the order the paper keeps):
  I'  one WPR iteration ranks the tokens, only to split them into an
      important half and a less important half;
  S   of the less important half, the tokens most similar (cosine, on the
      metric) to the important half are pruned;
  I   WPR on the survivors (their attention sub-matrix, rows renormalized)
      prunes the least important.
Of the `N - keep` tokens removed, a fraction `similarity_fraction` goes to
the S stage and the rest to the I stage. The sub-matrix renormalization, the
variance scale and the split between stages are choices the paper leaves
open. `order="is"` gives the I -> S order the paper rejects. The class token
takes part in the graphs but is never pruned. The paper's "emphasizing
informative region" refinement is not included.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (check_keep, cosine_similarity,
                                     gather_tokens, keep_tokens, static_int,
                                     with_class_token)
from maskmodel.tokens.registry import register

ORDERS = ("isi", "is")
VARIANCE_RANGE = (0.01, 0.7)


def default_iterations(layer, depth):
  """WPR iterations for block `layer` of `depth`: 30 / 10 / 1 by thirds."""
  if layer is None or depth is None:
    return 30
  if 3 * layer < depth:
    return 30
  return 10 if 3 * layer < 2 * depth else 1


def weighted_pagerank(attn, num_iters=30):
  """Token scores by Weighted PageRank on an attention graph.

  `attn` is `[B, N, N]` -> `[B, N]`, or `[B, H, N, N]` -> `[B, H, N]` (one
  graph per head); rows are queries and sum to 1, row i's weights are the
  edges from token i.
  """
  num_iters = static_int(num_iters, "num_iters")
  attn = jax.lax.stop_gradient(attn.astype(jnp.float32))
  n = attn.shape[-1]
  s = jnp.full(attn.shape[:-1], 1.0 / n, jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  return jax.lax.fori_loop(
      0, num_iters,
      lambda _, s: jnp.einsum("...ij,...i->...j", attn, s, precision=hi), s)


def aggregate_heads(scores, variance_range=VARIANCE_RANGE):
  """`[B, H, N]` per-head scores -> `[B, N]`: RMS over the heads whose
  variance of N s lies in `variance_range` (all heads if none does)."""
  lo, hi = variance_range
  var = (scores * scores.shape[-1]).var(axis=-1)                 # [B, H]
  ok = (var >= lo) & (var <= hi)
  ok = jnp.where(ok.any(axis=-1, keepdims=True), ok, True)
  w = ok.astype(jnp.float32)[..., None]
  return jnp.sqrt((w * scores ** 2).sum(axis=1) / w.sum(axis=1))


def importance(attn, num_iters, variance_range=VARIANCE_RANGE):
  """Head-filtered, RMS-aggregated WPR scores `[B, N]`."""
  if attn.ndim == 3:
    attn = attn[:, None]
  return aggregate_heads(weighted_pagerank(attn, num_iters), variance_range)


@register("zero_tprune", needs=("attn", "metric"), conserves_size=False,
          layer_options=("num_iters", "similarity_fraction"))
def zero_tprune(x, size, stats, *, keep, class_token=True, source=None,
                num_iters=None, similarity_fraction=0.5,
                variance_range=VARIANCE_RANGE, order="isi"):
  """Keeps `keep` tokens by Zero-TPrune (module docstring).

  Args:
    x: `[B, N, D]` tokens; size: `[B, N, 1]`; source: optional `[B, N0]` index map.
    stats: `stats.metric` `[B, N, C]`, features for the S-stage similarity
      (e.g. keys); `stats.attn` `[B, H, N, N]` (or head-averaged
      `[B, N, N]`), the layer's attention probabilities; `stats.layer`,
      `stats.depth`, this block's index and the number of blocks.
    keep: static number of output tokens, class token included.
    num_iters: WPR iterations of the I stage; None follows the depth
      (`default_iterations(layer, depth)`).
    similarity_fraction: share of the removed tokens chosen by similarity
      (capped at the size of the less important half).
    variance_range: the head filter's bounds.
    order: "isi" (paper: I' -> S -> I) or "is" (I -> S).
    class_token: token 0 is always kept, first.

  Returns:
    `Reduced`: class token, then the kept tokens in their original order.
  """
  n_total = x.shape[1]
  keep = check_keep(keep, n_total, class_token, "zero_tprune")
  if order not in ORDERS:
    raise ValueError(f"zero_tprune order={order!r} is unknown; use one of "
                     f"{ORDERS}.")
  if not 0.0 <= similarity_fraction <= 1.0:
    raise ValueError(f"zero_tprune: similarity_fraction={similarity_fraction} "
                     "must be in [0, 1].")
  metric, attn = stats.metric, stats.attn
  variance_range = tuple(variance_range)
  if num_iters is None:
    num_iters = default_iterations(stats.layer, stats.depth)
  p = int(bool(class_token))
  n, k = n_total - p, keep - p
  removed = n - k
  attn = jax.lax.stop_gradient(attn.astype(jnp.float32))
  if attn.ndim == 3:
    attn = attn[:, None]
  metric = jax.lax.stop_gradient(metric[:, p:])

  def similarity_prune(ranked, r_s):
    """Drop the r_s of the less important half most similar to the rest."""
    n_imp = (ranked.shape[1] + 1) // 2
    important, rest = ranked[:, :n_imp], ranked[:, n_imp:]
    if r_s == 0:
      return jnp.concatenate([important, rest], axis=1)
    sim = cosine_similarity(gather_tokens(metric, rest),
                            gather_tokens(metric, important))
    survivors = jnp.argsort(sim.max(axis=-1), axis=-1,
                            stable=True)[:, :rest.shape[1] - r_s]
    return jnp.concatenate(
        [important, jnp.take_along_axis(rest, survivors, axis=1)], axis=1)

  if order == "is":
    r_s = min(int(round(removed * similarity_fraction)), k)
    r_i = removed - r_s
    scores = importance(attn, num_iters, variance_range)[:, p:]
    ranked = jnp.argsort(-scores, axis=-1, stable=True)[:, :n - r_i]
    idx = similarity_prune(ranked, r_s)
  else:
    r_s = min(int(round(removed * similarity_fraction)), n // 2)
    r_i = removed - r_s
    pre = importance(attn, 1, variance_range)[:, p:]
    ranked = jnp.argsort(-pre, axis=-1, stable=True)
    survivors = jnp.sort(similarity_prune(ranked, r_s), axis=-1)  # [B, n-r_s]
    if r_i > 0:
      nodes = jnp.concatenate(
          [jnp.zeros_like(survivors[:, :p]), survivors + p], axis=1)
      sub = jnp.take_along_axis(
          jnp.take_along_axis(attn, nodes[:, None, :, None], axis=2),
          nodes[:, None, None, :], axis=3)
      sub = sub / jnp.maximum(sub.sum(axis=-1, keepdims=True), 1e-12)
      scores = importance(sub, num_iters, variance_range)[:, p:]
      best = jnp.argsort(-scores, axis=-1, stable=True)[:, :k]
      survivors = jnp.take_along_axis(survivors, best, axis=1)
    idx = survivors
  idx = jnp.sort(idx, axis=-1)
  return keep_tokens(x, size, source, with_class_token(idx, class_token))
