"""DART: "Stop Looking for Important Tokens in Multimodal Language Models:
Duplication Matters More" (Wen et al., 2025), as in the official code
(ZichenWen1/DART, `llava/model/language_model/modeling_llama_self.py`,
`get_retained_image_token`).

Pivots are the tokens whose keys, with the heads concatenated ([N, H*hd]),
have the largest L1 norm. Then each pivot in turn claims its share of the
budget: the tokens not yet kept that are least similar (cosine) to it. The
similarity is measured on the normalized layer output (the official code
applies the LM's final norm to the previous layer's output); here, since
reducers hold no parameters, on the tokens standardized per token, a
LayerNorm without its affine (`similarity_on="normalized"`), or on given
`features`.

Two choices the official code leaves open are fixed here: it iterates the
pivots in the order of a Python set of their indices (CPython's hash order);
maskmodel takes them in increasing index order. It gives every pivot
`budget // P` tokens; maskmodel hands the remainder of a budget not divisible
by P to the first pivots, so the number kept is exactly `keep`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (check_keep, cosine_similarity,
                                     gather_tokens, keep_tokens, static_int,
                                     with_class_token)
from maskmodel.tokens.registry import register

SELECTIONS = ("per_pivot", "max")
SIMILARITY_ON = ("normalized", "raw")


def standardize(x, eps=1e-6):
  """Per-token zero mean and unit variance (LayerNorm without affine)."""
  x = x.astype(jnp.float32)
  x = x - x.mean(axis=-1, keepdims=True)
  return x * jax.lax.rsqrt((x * x).mean(axis=-1, keepdims=True) + eps)


def dart_select(features, pivot_scores, k, *, num_pivots=4,
                selection="per_pivot"):
  """Indices `[B, k]` (sorted) of the pivots plus the least-duplicated tokens.

  Args:
    features: `[B, N, D]`; duplication is their cosine similarity.
    pivot_scores: `[B, N]`; the `num_pivots` highest become pivots.
    k: static number kept; num_pivots is capped at k.
    selection: "per_pivot" (official code: pivots in increasing index order
      each claim their quota) or "max" (every token ranked once by its
      highest similarity to any pivot).
  """
  k = static_int(k, "k")
  if selection not in SELECTIONS:
    raise ValueError(f"dart selection={selection!r} is unknown; use one of "
                     f"{SELECTIONS}.")
  num_pivots = max(1, min(static_int(num_pivots, "num_pivots"), k))
  pivot_scores = jax.lax.stop_gradient(pivot_scores.astype(jnp.float32))
  pivots = jnp.argsort(-pivot_scores, axis=-1, stable=True)[:, :num_pivots]
  pivots = jnp.sort(pivots, axis=-1)
  sim = cosine_similarity(jax.lax.stop_gradient(features))          # [B, N, N]
  pivot_sim = gather_tokens(sim, pivots)                             # [B, P, N]
  chosen = jax.vmap(lambda c, i: c.at[i].set(True))(
      jnp.zeros(features.shape[:2], bool), pivots)
  budget = k - num_pivots
  if selection == "max":
    dup = jnp.where(chosen, jnp.inf, pivot_sim.max(axis=1))
    extra = jnp.argsort(dup, axis=-1, stable=True)[:, :budget]
    chosen = jax.vmap(lambda c, i: c.at[i].set(True))(chosen, extra)
  else:
    for j in range(num_pivots):
      quota = budget // num_pivots + int(j < budget % num_pivots)
      if quota == 0:
        continue
      dup = jnp.where(chosen, jnp.inf, pivot_sim[:, j])
      extra = jnp.argsort(dup, axis=-1, stable=True)[:, :quota]
      chosen = jax.vmap(lambda c, i: c.at[i].set(True))(chosen, extra)
  # The k chosen indices in increasing order (a stable sort puts them first).
  return jnp.argsort(~chosen, axis=-1, stable=True)[:, :k].astype(jnp.int32)


@register("dart", needs=("keys",), conserves_size=False)
def dart(x, size, stats, *, keep, class_token=True, source=None, num_pivots=4,
         selection="per_pivot", similarity_on="normalized", features=None):
  """Keeps `keep` tokens by DART's duplication criterion.

  Args:
    x: `[B, N, D]` tokens; size: `[B, N, 1]`; source: optional `[B, N0]` index map.
    stats: `stats.keys`, `[B, N, H, hd]` attention keys (the heads are
      concatenated, as in the official code) or `[B, N, C]` already flat.
      Pivots are the tokens with the largest key L1 norm.
    keep: static number of output tokens, class token included.
    num_pivots: pivot tokens (the official scripts use 4 image pivots).
    similarity_on: "normalized" (default: x standardized per token, the
      stand-in for the official normalized layer output) or "raw" (x).
    features: `[B, N, F]` features to measure duplication on instead (e.g.
      the normalized layer output itself).
    class_token: token 0 is always kept, first, and is never a pivot.
  """
  n_total = x.shape[1]
  keep = check_keep(keep, n_total, class_token, "dart")
  if similarity_on not in SIMILARITY_ON:
    raise ValueError(f"dart similarity_on={similarity_on!r} is unknown; use "
                     f"one of {SIMILARITY_ON}.")
  p = int(bool(class_token))
  keys = stats.keys.reshape(stats.keys.shape[:2] + (-1,))
  scores = jnp.abs(keys[:, p:].astype(jnp.float32)).sum(axis=-1)
  if features is None:
    features = standardize(x) if similarity_on == "normalized" else x
  idx = dart_select(features[:, p:], scores, keep - p, num_pivots=num_pivots,
                    selection=selection)
  return keep_tokens(x, size, source, with_class_token(idx, class_token))
