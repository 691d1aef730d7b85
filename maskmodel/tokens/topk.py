"""Top-k attention pruning: EViT, "Not All Patches are What You Need:
Expediting Vision Transformers via Token Reorganizations" (Liang et al.,
ICLR 2022).

Attentive token identification: the [CLS] token's attention to each patch
token, averaged over heads, ranks the tokens; the top k are kept and the
class token is always kept. Inattentive token fusion: optionally the
remaining tokens are fused into one token, their average weighted by that
same [CLS] attention, appended last. Without fusion this is
the plain Top-K baseline that "Which Tokens to Use?" found a strong one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.tokens.common import (Reduced, check_keep, gather_tokens,
                                     init_size, keep_tokens, with_class_token)


def topk_prune(x, size, scores, *, keep, class_token=True, fuse=False,
               source=None):
  """Keeps the `keep` tokens with the highest `scores` (EViT).

  Args:
    x: `[B, N, D]` tokens; size: `[B, N, 1]`; source: optional `[B, N, N0]`.
    scores: `[B, N]` importance, e.g. head-averaged [CLS] attention (the
      class token's own entry is ignored). Used without gradient.
    keep: static number of output tokens, class token and fused token
      included.
    class_token: token 0 is always kept, first.
    fuse: fuse the pruned tokens into one extra last token (EViT); its size
      and source are the sums of the fused tokens'.

  Returns:
    `Reduced`: class token, then the kept tokens in their original order,
    then the fused token when `fuse`.
  """
  n_total = x.shape[1]
  keep = check_keep(keep, n_total, class_token, "topk")
  p = int(bool(class_token))
  num_top = keep - p - int(bool(fuse))
  if fuse and keep == n_total:
    raise ValueError(f"topk: fuse=True needs at least one pruned token; pass "
                     f"keep < {n_total}.")
  if size is None:
    size = init_size(x)
  scores = jax.lax.stop_gradient(scores.astype(jnp.float32))[:, p:]
  order = jnp.argsort(-scores, axis=-1, stable=True)
  kept = with_class_token(jnp.sort(order[:, :num_top], axis=-1), class_token)
  out = keep_tokens(x, size, source, kept)
  if not fuse:
    return out
  rest = order[:, num_top:] + p
  w = gather_tokens(scores, order[:, num_top:])[..., None]       # [B, R, 1]
  w = w / jnp.maximum(w.sum(axis=1, keepdims=True), 1e-12)
  fused = (w * gather_tokens(x, rest).astype(jnp.float32)).sum(axis=1,
                                                                 keepdims=True)
  fused_size = gather_tokens(size, rest).sum(axis=1, keepdims=True)
  new_x = jnp.concatenate([out.x, fused.astype(x.dtype)], axis=1)
  new_size = jnp.concatenate([out.size, fused_size.astype(out.size.dtype)],
                             axis=1)
  new_source = None
  if source is not None:
    fused_source = gather_tokens(source, rest).sum(axis=1, keepdims=True)
    new_source = jnp.concatenate([out.source, fused_source], axis=1)
  return Reduced(new_x, new_size, new_source)
