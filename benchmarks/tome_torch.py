"""ToMe on timm's ViT in PyTorch: the peer for `tome_speed.py --timm`.

Bolya et al., "Token Merging: Your ViT but Faster" (ICLR 2023), written for
timm's `VisionTransformer` the way the paper's reference code patches it: in
every block, bipartite soft matching on the keys averaged over heads (Sec. 3,
"Bipartite Soft Matching"; class token protected), r merges by size-weighted
average between attention and MLP, and proportional attention, softmax(QK^T /
sqrt(d) + log s) (Eq. 1). Attention runs through PyTorch's fused
`scaled_dot_product_attention` with log(size) as its additive mask, the
fastest CPU path torch has for it. Inference only (eval mode, no dropout,
drop path or layer scale).

torch and timm are not maskmodel dependencies; this file is imported only by
the benchmark, in an environment that has them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bipartite_soft_matching(metric, r: int):
  """`merge(x, reduce)` that merges r of the A tokens into their B matches.

  metric: [B, N, C]. Token 0 (the class token) is never merged.
  """
  r = min(r, (metric.shape[1] - 1) // 2)
  if r <= 0:
    return lambda x, reduce: x
  with torch.no_grad():
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    scores[:, 0, :] = -float("inf")           # the class token is in A
    best, best_idx = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)[..., None]
    kept = order[:, r:].sort(dim=1).values    # unmerged A tokens, in order
    merged = order[:, :r]
    dst = best_idx[..., None].gather(dim=1, index=merged)

  def merge(x, reduce):
    src, tgt = x[:, ::2], x[:, 1::2]
    n, na, c = src.shape
    keep = src.gather(dim=1, index=kept.expand(n, na - r, c))
    src = src.gather(dim=1, index=merged.expand(n, r, c))
    tgt = tgt.scatter_reduce(1, dst.expand(n, r, c), src, reduce=reduce)
    return torch.cat([keep, tgt], dim=1)
  return merge


def merge_wavg(merge, x, size):
  """Size-weighted average of the merged tokens, and their summed sizes."""
  x = merge(x * size, "sum")
  size = merge(size, "sum")
  return x / size, size


def _block(block, x, size, r, prop_attn):
  attn = block.attn
  b, n, c = x.shape
  qkv = attn.qkv(block.norm1(x)).reshape(b, n, 3, attn.num_heads, c // attn.num_heads)
  q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
  bias = size.log()[:, None, None, :, 0] if prop_attn else None
  y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
  x = x + attn.proj(y.transpose(1, 2).reshape(b, n, c))
  if r:
    x, size = merge_wavg(bipartite_soft_matching(k.mean(dim=1), r), x, size)
  return x + block.mlp(block.norm2(x)), size


def tome_forward(model, r: int, prop_attn: bool = True):
  """`images -> logits` of timm ViT `model` (eval mode) with ToMe r per block."""
  def forward(images):
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))  # pylint: disable=protected-access
    size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype)
    for block in model.blocks:
      x, size = _block(block, x, size, r, prop_attn)
    return model.forward_head(model.norm(x))
  return forward
