"""GTP-ViT: "Efficient Vision Transformers via Graph-based Token Propagation"
(Xu et al., WACV 2024), as in the official code (Ackesnal/GTP-ViT,
`models_v3.py`: `select`, `propagate` and the graph built in
`GraphPropagationTransformer.forward_features`).

The graph is built once, from the patch embeddings after the position
embedding (`gtp_graph`): the 8-neighbourhood on the patch grid ("spatial"),
a binary k-nearest-neighbour cosine graph ("semantic"), or their union
("mixed", the README's best), symmetrically normalized, W = D^-1/2 A D^-1/2.
At each reducing layer the tokens are ranked by an attention statistic, the
last ones are removed, and their features propagate to the kept tokens:
    x_kept <- x_kept + alpha * W[kept, removed] x_removed,   alpha = 0.1,
(and likewise the token scales, kept here as sizes). The graph is then
sub-indexed to the kept tokens and carried to the next layer, unnormalized.
Kept tokens come in rank order after the class token, as in the official
code. Rankings: "img_attn_mean" (the attention each token receives, summed
over queries and averaged over heads; the official "IMGAttnMean") and
"mixed_attn_max" (max over heads of the attention diagonal times max over
heads of the received attention; "MixedAttnMax").

Attention sparsification (`sparsity`, the official `--sparsity` theta,
default 1 = off as there): in every block, not only the reducing ones, each
head's attention probabilities below the k-th smallest of its N*N entries,
k = int(N*N*(1 - sparsity)), are set to zero after the softmax, without
renormalizing, and the attention output and the token ranking both use the
sparsified map (`sparsify_attention`; official `Attention.forward`). It
reads the full attention matrix, so it is unavailable with the fused
attention kernels, like "mixed_attn_max": the reducer then needs `attn`
(also with "img_attn_mean"), and a ViT computes the probabilities
explicitly in every block (`registry.attention_edit`). The official
README's tuned DeiT-B settings use sparsity 0.5 to 1.0 (0.6 to 0.8 for most
numbers of propagated tokens). Deviations: a sparsity outside [0, 1], or
one that zeroes nothing at the block's token count (k = 0, where the
official `torch.kthvalue` fails), is a one-line error; the official code
treats values above 1 as off.

The source map gives each removed token to the kept token it sends the most
weight to (none when its neighbours were all removed).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (PRUNED, Reduced, check_keep,
                                     cosine_similarity, gather_tokens,
                                     init_size, relabel, static_int)
from maskmodel.tokens.registry import register

_HIGHEST = jax.lax.Precision.HIGHEST
GRAPHS = ("mixed", "spatial", "semantic")
SELECTIONS = ("img_attn_mean", "mixed_attn_max")


def spatial_graph(n):
  """`[n, n]` 0/1 8-neighbourhood of a square grid of n patches (no self)."""
  side = math.isqrt(n)
  if side * side != n:
    raise ValueError(f"gtp: the spatial graph needs a square grid of patches, "
                     f"got {n}; use graph='semantic'.")
  r, c = jnp.divmod(jnp.arange(n), side)
  near = ((jnp.abs(r[:, None] - r[None]) <= 1)
          & (jnp.abs(c[:, None] - c[None]) <= 1))
  return near.astype(jnp.float32) - jnp.eye(n, dtype=jnp.float32)


def gtp_graph(x, *, graph="mixed", num_neighbors=8, class_token=True):
  """GTP-ViT's normalized token graph `[B, n, n]` over the non-class tokens.

  Args:
    x: `[B, N, D]` patch embeddings after the position embedding.
    graph: "mixed" (spatial OR semantic), "spatial" or "semantic".
    num_neighbors: k of the semantic k-nearest-neighbour graph (8 in the
      official code).
    class_token: token 0 is [CLS] and has no node.
  """
  if graph not in GRAPHS:
    raise ValueError(f"gtp graph={graph!r} is unknown; use one of {GRAPHS}.")
  x = jax.lax.stop_gradient(x[:, int(bool(class_token)):])
  b, n = x.shape[:2]
  eye = jnp.eye(n, dtype=jnp.float32)
  adj = jnp.zeros((b, n, n), jnp.float32)
  if graph in ("semantic", "mixed"):
    k = max(1, min(static_int(num_neighbors, "num_neighbors") + 1, n))
    sim = cosine_similarity(x)
    threshold = jax.lax.top_k(sim, k)[0][..., -1:]
    adj = (sim >= threshold).astype(jnp.float32) - eye
  if graph in ("spatial", "mixed"):
    adj = jnp.maximum(adj, spatial_graph(n)[None])
  degree = adj.sum(axis=-1)
  inv_sqrt = jnp.where(degree > 0, jax.lax.rsqrt(jnp.maximum(degree, 1e-12)),
                       0.0)
  return inv_sqrt[:, :, None] * adj * inv_sqrt[:, None, :]


def attention_rank(attn, selection):
  """`[B, N]` token ranking from attention probabilities `[B, H, N, N]`."""
  if selection not in SELECTIONS:
    raise ValueError(f"gtp selection={selection!r} is unknown; use one of "
                     f"{SELECTIONS}.")
  attn = attn.astype(jnp.float32)
  if attn.ndim == 3:
    attn = attn[:, None]
  received = attn.sum(axis=2)                                  # [B, H, N]
  if selection == "img_attn_mean":
    return received.mean(axis=1)
  diag = jnp.diagonal(attn, axis1=-2, axis2=-1)                # [B, H, N]
  return diag.max(axis=1) * received.max(axis=1)


def _check_sparsity(sparsity):
  sparsity = float(sparsity)
  if not 0.0 <= sparsity <= 1.0:
    raise ValueError(f"gtp sparsity={sparsity} is outside [0, 1]; 1 turns "
                     "attention sparsification off.")
  return sparsity


def sparsify_attention(attn, sparsity=1.0):
  """GTP-ViT's attention sparsification (official `Attention.forward`).

  Per head, entries of `attn [B, H, N, N]` (or `[B, N, N]`) below the k-th
  smallest of its N*N entries, k = int(N*N*(1 - sparsity)), become zero; the
  rest keep their value (and gradient); rows are not renormalized.
  sparsity >= 1 returns `attn` unchanged. Applying it twice is the same as
  once, so a reducer may sparsify attention a block has already sparsified.
  """
  sparsity = _check_sparsity(sparsity)
  if sparsity >= 1.0:
    return attn
  n = attn.shape[-1]
  k = int(n * n * (1 - sparsity))    # the official arithmetic, in Python
  if k < 1:
    raise ValueError(f"gtp sparsity={sparsity} zeroes no attention entry "
                     f"with {n} tokens (k = int(N*N*(1 - sparsity)) = 0, "
                     "where the official torch.kthvalue fails); use "
                     f"sparsity <= {1 - 1 / (n * n):.6g} or 1.")
  flat = jax.lax.stop_gradient(attn).reshape(attn.shape[:-2] + (n * n,))
  threshold = jnp.sort(flat, axis=-1)[..., k - 1, None, None]
  return jnp.where(attn >= threshold, attn, jnp.zeros((), attn.dtype))


def propagate(x, size, importance, graph, *, keep, alpha=0.1,
              class_token=True, source=None):
  """Removes tokens by rank and propagates them over `graph` (GTP-ViT).

  Args:
    x: `[B, N, D]` tokens; size: `[B, N, 1]`; source: optional `[B, N0]`.
    importance: `[B, N]` ranking (`attention_rank`; the class token's entry
      is ignored).
    graph: `[B, n, n]` normalized graph over the current non-class tokens
      (`gtp_graph` once at the input, then what the previous layer returned).
    keep: static number of output tokens, class token included.
    alpha: propagation magnitude (0.1 in the official code).
    class_token: token 0 is always kept, first, and receives nothing.

  Returns:
    `Reduced`: class token then the kept tokens in rank order, and in its
    `graph` field the graph sub-indexed to them.
  """
  n_total = x.shape[1]
  keep = check_keep(keep, n_total, class_token, "gtp")
  if size is None:
    size = init_size(x)
  p = int(bool(class_token))
  k = keep - p
  importance = jax.lax.stop_gradient(importance.astype(jnp.float32))[:, p:]
  order = jnp.argsort(-importance, axis=-1, stable=True)
  kept, removed = order[:, :k], order[:, k:]                   # node indices
  rows = gather_tokens(jax.lax.stop_gradient(graph), kept)     # [B, k, n]
  w = jnp.take_along_axis(rows, removed[:, None, :], axis=2)   # [B, k, R]
  new_graph = jnp.take_along_axis(rows, kept[:, None, :], axis=2)
  size = size.astype(jnp.float32)
  x_kept, x_rem = gather_tokens(x, kept + p), gather_tokens(x, removed + p)
  new_x = (x_kept.astype(jnp.float32) + alpha * jnp.einsum(
      "bkr,brd->bkd", w, x_rem.astype(jnp.float32), precision=_HIGHEST))
  new_size = gather_tokens(size, kept + p) + alpha * jnp.einsum(
      "bkr,bro->bko", w, gather_tokens(size, removed + p), precision=_HIGHEST)
  new_x = new_x.astype(x.dtype)
  if class_token:
    new_x = jnp.concatenate([x[:, :1], new_x], axis=1)
    new_size = jnp.concatenate([size[:, :1], new_size], axis=1)
  new_source = None
  if source is not None:
    # Each removed token goes to the kept token it sends the most weight to.
    to = jnp.where(w.max(axis=1) > 0, jnp.argmax(w, axis=1) + p, PRUNED)
    label = jnp.zeros(x.shape[:2], jnp.int32)
    put = jax.vmap(lambda lab, i, v: lab.at[i].set(v))
    label = put(label, kept + p, jnp.broadcast_to(jnp.arange(k) + p,
                                                  kept.shape))
    label = put(label, removed + p, to)
    new_source = relabel(source, label)
  return Reduced(new_x, new_size, new_source, new_graph)


def _init_graph(x, *, class_token=True, graph_type="mixed", num_neighbors=8,
                **_):
  """The graph a ViT builds once from its embedded input (other gtp options
  are for the blocks)."""
  return gtp_graph(x, graph=graph_type, num_neighbors=num_neighbors,
                   class_token=class_token)


def _sparse(options):
  return _check_sparsity(options.get("sparsity", 1.0)) < 1.0


def _needs(options):
  if (options.get("selection", "img_attn_mean") == "img_attn_mean"
      and not _sparse(options)):
    return ("key_mass",)
  return ("attn",)


def _edit_attn(options):
  """The ViT's per-block attention edit: sparsification when sparsity < 1."""
  if not _sparse(options):
    return None
  sparsity = _check_sparsity(options["sparsity"])
  return lambda probs: sparsify_attention(probs, sparsity)


@register("gtp", needs=_needs, conserves_size=False, init_graph=_init_graph,
          edit_attn=_edit_attn)
def gtp(x, size, stats, *, keep, class_token=True, source=None,
        selection="img_attn_mean", alpha=0.1, num_neighbors=8,
        graph_type="mixed", sparsity=1.0):
  """GTP-ViT's layer: rank by `selection` (`stats.key_mass` for
  "img_attn_mean", else `stats.attn`), then `propagate` over `stats.graph`
  (built from these tokens by `gtp_graph` when None). With `sparsity` < 1
  the ranking reads `stats.attn` sparsified by `sparsify_attention` (a
  no-op on attention a ViT block already sparsified)."""
  if _check_sparsity(sparsity) < 1.0:
    rank = attention_rank(sparsify_attention(stats.attn, sparsity), selection)
  elif selection == "img_attn_mean" and stats.key_mass is not None:
    rank = stats.key_mass
  else:
    rank = attention_rank(stats.attn, selection)
  graph = stats.graph
  if graph is None:
    graph = _init_graph(x, class_token=class_token, graph_type=graph_type,
                        num_neighbors=num_neighbors)
  return propagate(x, size, rank, graph, keep=keep, alpha=alpha,
                   class_token=class_token, source=source)
