"""PiToMe: "Accelerating Transformers with Spectrum-Preserving Token Merging"
(Tran et al., NeurIPS 2024), as in the official code (hchautran/PiToMe,
`algo/pitome/merge.py`, `pitome_vision`, and the `deit`/`mae` patches).

Each non-class token gets an energy score, the mean over all tokens (itself
included) of ELU(sim_ij - m) with slope alpha = 1, where sim is the cosine
similarity of the metric (head-averaged keys) and m a margin that falls with
depth, m = 0.75 - 0.75 l / L. Tokens are ordered by decreasing energy; then
one of two merge kinds runs:
  "pitome"  only the 2r highest-energy tokens may merge: split alternately
            into A and B, each A token merges into its most similar B token;
            the rest are protected. Output: [CLS], protected (by energy),
            B (by energy).
  "bsm"     all tokens, split alternately by energy rank into A and B, then
            ToMe's bipartite matching: the r A tokens with the strongest best
            match merge into it. Output: [CLS], unmerged A (by decreasing
            match score), B (by energy).
The DeiT patch uses "bsm" in the first ceil(L/2) blocks and "pitome" after
(variant "deit", the default); the MAE patch does the opposite ("mae").
Merged tokens are size-weighted means with summed sizes. The official vision
blocks use no proportional attention (PiToMe's registered default).

The paper prints Eq. 4 with the upper branch x (not x - m); `energy="paper"`
selects that form.
"""
from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (Reduced, cosine_similarity,
                                     gather_tokens, init_size,
                                     merge_by_assignment, static_int)
from maskmodel.tokens.registry import register

VARIANTS = ("deit", "mae", "pitome", "bsm")
ENERGIES = ("elu", "paper")


def default_margin(layer, depth):
  """The official per-layer margin, m = 0.75 - 0.75 l / L."""
  return 0.75 - 0.75 * layer / depth


def merge_kind(variant, layer, depth):
  """"pitome" or "bsm" for block `layer` of `depth` under `variant`."""
  if variant in ("pitome", "bsm"):
    return variant
  first_half = layer < math.ceil(depth * 0.5)
  bsm_first = variant == "deit"
  return "bsm" if first_half == bsm_first else "pitome"


def energy_score(sim, margin=0.5, alpha=1.0, energy="elu"):
  """PiToMe's energy: mean over j of ELU(sim_ij - m) per token.

  `sim [B, N, N]` cosine similarities -> `[B, N]` float32. energy="paper"
  keeps sim_ij (not sim_ij - m) above the margin, as Eq. 4 is printed.
  """
  if energy not in ENERGIES:
    raise ValueError(f"pitome energy={energy!r} is unknown; use one of "
                     f"{ENERGIES}.")
  shifted = sim - margin
  below = alpha * (jnp.exp(jnp.minimum(shifted, 0.0)) - 1.0)
  above = shifted if energy == "elu" else sim
  return jnp.where(shifted > 0, above, below).mean(axis=-1)


@register("pitome", needs=("metric",), conserves_size=True,
          layer_options=("margin", "variant"))
def pitome(x, size, stats, *, keep, class_token=True, source=None,
           margin=None, alpha=1.0, variant="deit", energy="elu"):
  """Removes N - keep tokens by PiToMe's energy-ordered merging.

  Args:
    x: `[B, N, D]` tokens; size: `[B, N, 1]`; source: optional `[B, N0]` index map.
    stats: `stats.metric` `[B, N, C]` similarity features (head-averaged keys
      in the official code), used without gradient; `stats.layer` and
      `stats.depth`, this block's index and the number of blocks.
    keep: static number of tokens left; r = N - keep is capped (with a
      warning) at half of the non-class tokens.
    margin: m; None gives the official 0.75 - 0.75 layer / depth.
    alpha: ELU slope (1 in the official code).
    variant: "deit" (default), "mae", "pitome" or "bsm" (module docstring).
    energy: "elu" (official code) or "paper" (Eq. 4 as printed).
    class_token: token 0 never merges and stays first.

  Returns:
    `Reduced` with N - r tokens.
  """
  r = x.shape[1] - static_int(keep, "keep")
  metric, layer, depth = stats.metric, stats.layer, stats.depth
  if variant not in VARIANTS:
    raise ValueError(f"pitome variant={variant!r} is unknown; use one of "
                     f"{VARIANTS}.")
  needs_layer = margin is None or variant in ("deit", "mae")
  if needs_layer and (layer is None or depth is None):
    raise ValueError("pitome: margin=None and variant 'deit'/'mae' follow "
                     "the block index; pass layer= and depth=, or a margin "
                     "and variant='pitome' or 'bsm'.")
  if margin is None:
    margin = default_margin(layer, depth)
  kind = merge_kind(variant, layer, depth) if needs_layer else variant
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
  order = jnp.argsort(-energy_score(sim, margin, alpha, energy), axis=-1,
                      stable=True)
  put = jax.vmap(lambda lab, i, v: lab.at[i].set(v))
  label = jnp.zeros((b, n), jnp.int32)
  if kind == "pitome":
    a_idx, b_idx = order[:, :2 * r:2], order[:, 1:2 * r:2]          # [B, r]
    ab = jnp.take_along_axis(gather_tokens(sim, a_idx), b_idx[:, None, :],
                             axis=2)                                # [B, r, r]
    dst = jnp.argmax(ab, axis=-1)
    num_protected = n - 2 * r
    slot_b = p + num_protected + jnp.arange(r)
    label = put(label, order[:, 2 * r:], jnp.broadcast_to(
        p + jnp.arange(num_protected), (b, num_protected)))
    label = put(label, b_idx, jnp.broadcast_to(slot_b, (b, r)))
    label = put(label, a_idx, slot_b[dst])
  else:
    a_idx, b_idx = order[:, ::2], order[:, 1::2]
    na, nb = a_idx.shape[1], b_idx.shape[1]
    ab = jnp.take_along_axis(gather_tokens(sim, a_idx), b_idx[:, None, :],
                             axis=2)                                # [B,na,nb]
    node_max, node_idx = ab.max(axis=-1), jnp.argmax(ab, axis=-1)
    edge = jnp.argsort(-node_max, axis=-1, stable=True)
    unm, src = edge[:, r:], edge[:, :r]
    slot_b = p + (na - r) + jnp.arange(nb)
    label = put(label, gather_tokens(a_idx, unm), jnp.broadcast_to(
        p + jnp.arange(na - r), (b, na - r)))
    label = put(label, b_idx, jnp.broadcast_to(slot_b, (b, nb)))
    label = put(label, gather_tokens(a_idx, src),
                slot_b[gather_tokens(node_idx, src)])
  if class_token:
    label = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), label], axis=1)
  return merge_by_assignment(x, size, source, label, n_total - r)
