"""PiToMe: "Accelerating Transformers with Spectrum-Preserving Token Merging"
(Tran et al., NeurIPS 2024).

Each token gets an energy score (Eq. 4): its mean, over all tokens, of the
margin-thresholded cosine similarity
    f_m(x) = x                      if x >= m
           = alpha (exp(x - m) - 1) otherwise,
so tokens inside large clusters of similar tokens score high. Only the 2r
highest-energy tokens may merge: taken in energy order they are split
alternately into A and B, and every A token merges into its most similar B
token (size-weighted mean). The other tokens are protected.

Output order follows the official code: class token, protected tokens (by
decreasing energy), then the B tokens (by decreasing energy). The official
vision code shifts the upper branch to x - m (an ELU of x - m); this module
uses Eq. 4 as printed.
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (Reduced, cosine_similarity,
                                     gather_tokens, init_size,
                                     merge_by_assignment, static_int)


def energy_score(sim, margin=0.5, alpha=1.0):
  """PiToMe's energy (Eq. 4): mean margin-thresholded similarity per token.

  `sim [B, N, N]` cosine similarities -> `[B, N]` float32.
  """
  f = jnp.where(sim >= margin, sim,
                alpha * (jnp.exp(jnp.minimum(sim - margin, 0.0)) - 1.0))
  return f.mean(axis=-1)


def pitome(x, size, metric, *, r, margin=0.5, alpha=1.0, class_token=False,
           source=None):
  """Removes r tokens by PiToMe's energy-restricted bipartite merging.

  Args:
    x: `[B, N, D]` tokens; size: `[B, N, 1]`; source: optional `[B, N, N0]`.
    metric: `[B, N, C]` similarity features (head-averaged keys in the
      paper). Used without gradient.
    r: static number of tokens to remove; capped (with a warning) at half of
      the non-class tokens.
    margin, alpha: the margin m and ELU slope alpha of Eq. 4 (the official
      code passes a per-layer margin).
    class_token: token 0 never merges and stays first.

  Returns:
    `Reduced` with N - r tokens.
  """
  r = static_int(r, "r")
  b, n_total = x.shape[:2]
  p = int(bool(class_token))
  n = n_total - p
  if r > n // 2:
    warnings.warn(f"PiToMe can remove at most half of the {n} mergeable "
                  f"tokens; clipping r={r} to {n // 2}.", stacklevel=2)
    r = n // 2
  if r <= 0:
    return Reduced(x, init_size(x) if size is None else size, source)

  sim = cosine_similarity(jax.lax.stop_gradient(metric[:, p:]))   # [B, n, n]
  order = jnp.argsort(-energy_score(sim, margin, alpha), axis=-1, stable=True)
  a_idx, b_idx = order[:, :2 * r:2], order[:, 1:2 * r:2]          # [B, r]
  ab = jnp.take_along_axis(gather_tokens(sim, a_idx), b_idx[:, None, :],
                           axis=2)                                 # [B, r, r]
  dst = jnp.argmax(ab, axis=-1)

  num_protected = n - 2 * r
  slot_b = p + num_protected + jnp.arange(r)
  put = jax.vmap(lambda lab, i, v: lab.at[i].set(v))
  label = jnp.zeros((b, n), jnp.int32)
  slot_protected = p + jnp.arange(num_protected)
  label = put(label, order[:, 2 * r:],
              jnp.broadcast_to(slot_protected, (b, num_protected)))
  label = put(label, b_idx, jnp.broadcast_to(slot_b, (b, r)))
  label = put(label, a_idx, slot_b[dst])
  if class_token:
    label = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), label], axis=1)
  return merge_by_assignment(x, size, source, label, n_total - r)
