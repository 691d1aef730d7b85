"""DART: "Stop Looking for Important Tokens in Multimodal Language Models:
Duplication Matters More" (Wen et al., 2025).

Pick a few pivot tokens (by default those whose keys have the largest L1
norm, the paper's K-norm criterion), then keep the tokens least duplicated with the pivots, i.e. with
the lowest cosine similarity to them. As in the official code, every pivot in
turn claims an equal share of the remaining budget among the tokens not yet
kept ("per_pivot"); "max" instead ranks every token once by its highest
similarity to any pivot.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (check_keep, cosine_similarity,
                                     gather_tokens, keep_tokens, static_int,
                                     with_class_token)

SELECTIONS = ("per_pivot", "max")


def dart_select(x, pivot_scores, k, *, num_pivots=4, selection="per_pivot"):
  """Indices `[B, k]` (sorted) of the pivots plus the least-duplicated tokens.

  Args:
    x: `[B, N, D]` tokens; duplication is their cosine similarity.
    pivot_scores: `[B, N]`; the `num_pivots` highest become pivots.
    k: static number kept; num_pivots is capped at k.
    selection: "per_pivot" (official code) or "max" (see module docstring).
  """
  k = static_int(k, "k")
  if selection not in SELECTIONS:
    raise ValueError(f"dart selection={selection!r} is unknown; use one of "
                     f"{SELECTIONS}.")
  num_pivots = max(1, min(static_int(num_pivots, "num_pivots"), k))
  pivot_scores = jax.lax.stop_gradient(pivot_scores.astype(jnp.float32))
  pivots = jnp.argsort(-pivot_scores, axis=-1, stable=True)[:, :num_pivots]
  sim = cosine_similarity(jax.lax.stop_gradient(x))                 # [B, N, N]
  pivot_sim = gather_tokens(sim, pivots)                             # [B, P, N]
  chosen = jax.vmap(lambda c, i: c.at[i].set(True))(
      jnp.zeros(x.shape[:2], bool), pivots)
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


def dart(x, size, keys, *, keep, num_pivots=4, selection="per_pivot",
         class_token=True, source=None):
  """Keeps `keep` tokens by DART's duplication criterion.

  Args:
    x: `[B, N, D]` tokens (duplication is measured on them);
      size: `[B, N, 1]`; source: optional `[B, N, N0]`.
    keys: `[B, N, C]` attention keys (e.g. head-averaged); pivots are the
      tokens with the largest key L1 norm.
    keep: static number of output tokens, class token included.
    class_token: token 0 is always kept, first, and is never a pivot.
  """
  n_total = x.shape[1]
  keep = check_keep(keep, n_total, class_token, "dart")
  p = int(bool(class_token))
  scores = jnp.abs(keys[:, p:].astype(jnp.float32)).sum(axis=-1)
  idx = dart_select(x[:, p:], scores, keep - p, num_pivots=num_pivots,
                    selection=selection)
  return keep_tokens(x, size, source, with_class_token(idx, class_token))
