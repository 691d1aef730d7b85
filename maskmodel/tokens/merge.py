"""ToMe: "Token Merging: Your ViT but Faster" (Bolya et al., ICLR 2023).

Bipartite soft matching (Sec. 3, "Token Merging"): split the tokens
alternately into sets A and B, connect each A token to its most similar B
token (cosine similarity of the metric, usually the head-averaged keys), keep
the r most similar edges and merge their A tokens into their B tokens.
Merged tokens are size-weighted means and carry their size, which
proportional attention (Sec. 3, "Tracking Token Size") adds as log(size) to
the attention logits.

Semantics and output order follow the reference implementation: the output is
`[unmerged A tokens, B tokens]`, where the unmerged A tokens come in order of
decreasing match score, or in their original order when there is a class
token (which then stays at position 0). With DeiT's distillation token
(`distill_token=True`, token 1) nothing merges into it and it stays right
after [CLS], as the reference's `merge` places it. As in the reference, r is
capped at half of the unprotected tokens; here the cap also warns. One
deviation: the reference's `unmerge` ignores the distillation layout (it
splits at the unmerged count as if there were none); here `unmerge` inverts
`merge` in both layouts, so source maps agree with the reference's
`merge_source` (which merges one-hot maps with amax).
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from maskmodel.kernels import token_matching
from maskmodel.tokens.common import (Reduced, gather_tokens, init_size,
                                     l2_normalize, relabel, static_int)
from maskmodel.tokens.registry import register

MODES = ("sum", "mean", "amax")


def _identity(x, mode=None):
  del mode
  return x


def _scatter(dst, idx, src, mode):
  """Batched `dst[b, idx[b, i]] (op)= src[b, i]` for mode add or max."""
  def one(d, i, s):
    return d.at[i].max(s) if mode == "amax" else d.at[i].add(s)
  return jax.vmap(one)(dst, idx, src)


def bipartite_soft_matching(metric, r, class_token=False, distill_token=False,
                            impl="auto"):
  """ToMe's bipartite soft matching; returns `(merge, unmerge)` functions.

  Args:
    metric: `[B, N, C]` similarity features (ToMe uses the keys, averaged over
      heads). Used without gradient.
    r: static number of tokens to remove; capped (with a warning) at
      `(N - class_token) // 2`. r <= 0 gives identity functions.
    class_token: whether token 0 is a [CLS] token that must never merge.
    distill_token: whether token 1 is DeiT's distillation token: nothing
      merges into it (it is B's first token, whose scores are -inf), it
      counts as protected in the cap on r, and the output keeps it right
      after the first unmerged A token (the [CLS] token), as in the official
      `merge`: `[unm[:1], dst[:1], unm[1:], dst[1:]]`.
    impl: backend of `maskmodel.kernels.token_matching`.

  Returns:
    merge(x, mode="mean"): `[B, N, D] -> [B, N - r, D]`; mode "sum" and
      "mean" follow `torch.scatter_reduce` (mean includes the B token itself),
      "amax" takes the elementwise max (ToMe's one-hot source maps).
    unmerge(x): `[B, N - r, D] -> [B, N, D]`, copying every merged token back
      to all positions it came from.
  """
  r = static_int(r, "r")
  protected = int(bool(class_token)) + int(bool(distill_token))
  t = metric.shape[1]
  max_r = (t - protected) // 2
  if r > max_r:
    warnings.warn(f"ToMe can remove at most half of the {t - protected} "
                  f"mergeable tokens; clipping r={r} to {max_r}.", stacklevel=2)
    r = max_r
  if r <= 0:
    return _identity, _identity

  metric = l2_normalize(jax.lax.stop_gradient(metric))
  a, b = metric[:, ::2], metric[:, 1::2]
  if distill_token:
    # The official code sets the scores of B's column 0 to -inf. With unit
    # rows every score is >= -1, so one extra feature (1 in A; -3 in B's
    # first row, 0 in the others) keeps that column from ever being the
    # best match, and leaves every other score bit for bit as it was.
    a = jnp.concatenate([a, jnp.ones(a.shape[:2] + (1,), a.dtype)], axis=-1)
    col = jnp.zeros(b.shape[:2] + (1,), b.dtype).at[:, 0].set(-3.0)
    b = jnp.concatenate([b.at[:, 0].set(0.0), col], axis=-1)
  node_max, node_idx = token_matching(a, b, class_token=class_token, impl=impl)
  # Stable sort on the negated scores: descending, ties in index order. The
  # class token scores -inf and so always ends up unmerged.
  edge_idx = jnp.argsort(-node_max, axis=-1, stable=True)
  unm_idx = edge_idx[:, r:]
  src_idx = edge_idx[:, :r]
  dst_idx = jnp.take_along_axis(node_idx, src_idx, axis=1)
  if class_token:
    unm_idx = jnp.sort(unm_idx, axis=-1)

  def merge(x, mode="mean"):
    if mode not in MODES:
      raise ValueError(f"merge mode={mode!r} is unknown; use one of {MODES}.")
    src, dst = x[:, ::2], x[:, 1::2]
    unm = gather_tokens(src, unm_idx)
    src = gather_tokens(src, src_idx)
    if mode == "mean":
      total = _scatter(dst, dst_idx, src, "sum")
      count = _scatter(jnp.ones(dst.shape[:2], x.dtype), dst_idx,
                       jnp.ones(src.shape[:2], x.dtype), "sum")
      dst = total / count[..., None]
    else:
      dst = _scatter(dst, dst_idx, src, mode)
    if distill_token:   # [CLS], distillation token, then the rest
      return jnp.concatenate([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]],
                             axis=1)
    return jnp.concatenate([unm, dst], axis=1)

  def unmerge(x):
    unm_len = unm_idx.shape[1]
    if distill_token:   # the inverse of merge's layout
      unm = jnp.concatenate([x[:, :1], x[:, 2:unm_len + 1]], axis=1)
      dst = jnp.concatenate([x[:, 1:2], x[:, unm_len + 1:]], axis=1)
    else:
      unm, dst = x[:, :unm_len], x[:, unm_len:]
    src = gather_tokens(dst, dst_idx)
    out = jnp.zeros((x.shape[0], t) + x.shape[2:], x.dtype)
    out = out.at[:, 1::2].set(dst)
    put = jax.vmap(lambda o, i, v: o.at[i].set(v))
    out = put(out, 2 * unm_idx, unm)
    out = put(out, 2 * src_idx, src)
    return out

  return merge, unmerge


def merge_wavg(merge, x, size=None):
  """Applies `merge` as a size-weighted average; returns `(x, size)`.

  `size [B, N, 1]` defaults to ones. Computed in float32, x keeps its dtype.
  """
  if size is None:
    size = init_size(x)
  size = size.astype(jnp.float32)
  total = merge(x.astype(jnp.float32) * size, mode="sum")
  size = merge(size, mode="sum")
  return (total / size).astype(x.dtype), size


def merge_source(unmerge, source, num_out):
  """Source tracing through one matching, on the index map `source [B, N0]`.

  ToMe's `merge_source` merges a one-hot `[B, N, N0]` map with amax; the same
  information is each current token's output slot, which `unmerge` of the
  slot numbers `0..num_out-1` gives (`num_out` = tokens after the merge).
  """
  slots = jnp.broadcast_to(jnp.arange(num_out, dtype=jnp.int32),
                           (source.shape[0], num_out))
  return relabel(source, unmerge(slots))


@register("tome", needs=("metric",), conserves_size=True, prop_attn=False,
          prop_attn_off_the_shelf=True)
def tome(x, size, stats, *, keep, class_token=True, source=None,
         distill_token=False, impl="auto"):
  """One ToMe step: bipartite matching on `stats.metric`, then merge
  x/size/source. r = N - keep is capped at half of the non-class tokens
  (with a warning), so more than `keep` tokens may remain.

  Proportional attention: ToMe's `apply_patch` turns it on for off-the-shelf
  evaluation and advises it off for training and for MAE models (its MAE
  patch defaults to off); the registered defaults follow that.
  """
  merge, unmerge = bipartite_soft_matching(stats.metric, x.shape[1] - keep,
                                           class_token=class_token,
                                           distill_token=distill_token,
                                           impl=impl)
  x, size = merge_wavg(merge, x, size)
  if source is not None:
    source = merge_source(unmerge, source, x.shape[1])
  return Reduced(x, size, source)
