"""Top-k attention pruning: EViT, "Not All Patches are What You Need:
Expediting Vision Transformers via Token Reorganizations" (Liang et al.,
ICLR 2022), as in the official code (youweiliang/evit, `evit.py`).

Attentive token identification (Sec. 3.2): the [CLS] token's attention to
each other token, averaged over heads, ranks the tokens; the top k are kept,
in order of decreasing attention as `torch.topk` returns them, after the
class token. Inattentive token fusion (Sec. 3.3): the other tokens are fused
into one token x_fused = sum_i a_i x_i with the raw [CLS] attention a_i (not
renormalized), appended last. Without fusion this is the plain Top-K
baseline that "Which Tokens to Use?" found a strong one.

EViT's tokens carry no size and its attention has no proportional bias; the
size of the fused token here is the sum of the fused sizes (bookkeeping for
pooling and source maps only; EViT's registered default is prop_attn off).
In a schedule, EViT keeps `ceil(rate * (N - 1))` tokens besides [CLS] and
adds the fused token on top (`tokens_per_layer(..., extra_token=1)`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (Reduced, check_keep, gather_tokens,
                                     init_size, keep_tokens, relabel,
                                     with_class_token)
from maskmodel.tokens.registry import register

ORDERS = ("attention", "index")


@register("topk", needs=("cls_attn",), conserves_size=False)
def topk_prune(x, size, stats, *, keep, class_token=True, source=None,
               fuse=False, normalize_fused=False, order="attention"):
  """Keeps the `keep` tokens with the highest [CLS] attention (EViT).

  Args:
    x: `[B, N, D]` tokens; size: `[B, N, 1]`; source: optional `[B, N0]`
      index map.
    stats: `stats.cls_attn` `[B, N]`, the head-averaged [CLS] attention (the
      class token's own entry is ignored), used without gradient.
    keep: static number of output tokens, class token and fused token
      included.
    class_token: token 0 is always kept, first.
    fuse: fuse the pruned tokens into one extra last token (EViT); its size
      is the sum of the fused tokens', and it holds all their inputs.
    normalize_fused: divide the fusion weights by their sum (a weighted
      mean). Off in the official code, where the fused token is the raw
      attention-weighted sum; an option for per-layer use, where the raw sum
      shrinks the fused token's scale.
    order: "attention" (official: kept tokens by decreasing score) or
      "index" (their original order).

  Returns:
    `Reduced`: class token, then the kept tokens, then the fused token when
    `fuse`.
  """
  n_total = x.shape[1]
  keep = check_keep(keep, n_total, class_token, "topk")
  if order not in ORDERS:
    raise ValueError(f"topk order={order!r} is unknown; use one of {ORDERS}.")
  p = int(bool(class_token))
  num_top = keep - p - int(bool(fuse))
  if fuse and keep == n_total:
    raise ValueError(f"topk: fuse=True needs at least one pruned token; pass "
                     f"keep < {n_total}.")
  if size is None:
    size = init_size(x)
  scores = jax.lax.stop_gradient(stats.cls_attn.astype(jnp.float32))[:, p:]
  ranked = jnp.argsort(-scores, axis=-1, stable=True)
  top = ranked[:, :num_top]
  if order == "index":
    top = jnp.sort(top, axis=-1)
  kept = with_class_token(top, class_token)
  out = keep_tokens(x, size, None if fuse else source, kept)
  if not fuse:
    return out
  rest = ranked[:, num_top:] + p
  w = gather_tokens(scores, ranked[:, num_top:])[..., None]      # [B, R, 1]
  if normalize_fused:
    w = w / jnp.maximum(w.sum(axis=1, keepdims=True), 1e-12)
  fused = (w * gather_tokens(x, rest).astype(jnp.float32)).sum(axis=1,
                                                                 keepdims=True)
  fused_size = gather_tokens(size, rest).sum(axis=1, keepdims=True)
  new_x = jnp.concatenate([out.x, fused.astype(x.dtype)], axis=1)
  new_size = jnp.concatenate([out.size, fused_size.astype(out.size.dtype)],
                             axis=1)
  # The fused token (last slot) holds everything not kept.
  label = jnp.full(x.shape[:2], keep - 1, jnp.int32)
  label = jax.vmap(lambda lab, i: lab.at[i].set(jnp.arange(keep - 1)))(
      label, kept)
  return Reduced(new_x, new_size, relabel(source, label))


@register("evit", needs=("cls_attn",), conserves_size=True)
def evit(x, size, stats, *, keep, class_token=True, source=None,
         normalize_fused=False, order="attention"):
  """EViT: top-k by [CLS] attention plus the fused inattentive token."""
  return topk_prune(x, size, stats, keep=keep, class_token=class_token,
                    source=source, fuse=True, normalize_fused=normalize_fused,
                    order=order)
