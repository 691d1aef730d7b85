"""I-JEPA's networks (Assran et al. 2023, Sec. 3; facebookresearch/ijepa
`src/models/vision_transformer.py`): the encoder, a ViT without a class
token, and the predictor, a narrow ViT over the context tokens plus one mask
token per target patch, carrying that patch's position.

Both take index lists of a static length with a validity mask
(`maskmodel.masking.multiblock`): padded entries are masked out of every
attention as keys, so the real tokens compute exactly what they would with
the official variable-length lists. The blocks are maskmodel's ViT blocks
(pre-LN, fused qkv, exact GELU, LayerNorm eps 1e-6, as the official
`partial(nn.LayerNorm, eps=1e-6)`), under the same parameter names, so the
default partition rules shard them like any ViT.

Differences from the official code, named: the weights start from
maskmodel's ViT initialization (Xavier-uniform, as MAE), not the official
truncated normal (std 0.02) with the per-layer rescale of `fix_init_weight`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskmodel.kernels import attention
from maskmodel.models.patches import patchify, sincos_2d_posemb
from maskmodel.models.vit import (Block, MlpBlock, dense_init, layer_norm,
                                  token_dense, token_init)

Dtype = Any
MASKED = -1e9  # logit bias of a padded key: exp() underflows to exactly 0


def key_bias(valid):
  """[B, K] bool -> the additive per-key logit bias that hides padding."""
  return None if valid is None else jnp.where(valid, 0.0, MASKED).astype(jnp.float32)


def gather_tokens(x, ids):
  """x [B, N, D], ids [B, K] -> [B, K, D] (the official `apply_masks`)."""
  return jnp.take_along_axis(x, ids[..., None], axis=1)


class KeyMaskedTransformer(nn.Module):
  """`depth` pre-LN blocks whose attention ignores the keys where `valid`
  is False, then a LayerNorm; the parameters of `vit.Transformer`."""
  depth: int
  num_heads: int
  mlp_dim: int
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, valid=None):
    bias = key_bias(valid)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim, self.attn_impl, self.dtype,
                name=f"block_{i}")(x, bias).x
    return layer_norm("norm")(x)


class JEPAEncoder(nn.Module):
  """I-JEPA's `VisionTransformer`: patch embedding plus fixed 2D sin-cos
  positions, no class token, the blocks and a final LayerNorm.

  `ids` [B, K] (and `valid` [B, K]) restrict it to those patches (the
  context encoder); without them it encodes the whole image (the target
  encoder, and the features for evaluation). Returns `tokens` [B, K, D] and
  `pooled` [B, D], the mean over the (valid) tokens: the paper's evaluation
  average-pools the target encoder's output.
  """
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, ids=None, valid=None):
    _, h, w, _ = images.shape
    grid = (h // self.patch_size, w // self.patch_size)
    x = token_dense(nn.Dense(self.width, kernel_init=dense_init, dtype=self.dtype,
                             name="patch_embed"), patchify(images, self.patch_size))
    x = x + sincos_2d_posemb(self.width, grid)[None].astype(x.dtype)
    if ids is not None:
      x = gather_tokens(x, ids)
    x = KeyMaskedTransformer(self.depth, self.num_heads,
                             int(self.width * self.mlp_ratio), self.attn_impl,
                             self.dtype, name="encoder")(x, valid)
    if valid is None:
      pooled = x.mean(axis=1)
    else:
      weight = valid[..., None].astype(x.dtype)
      pooled = (x * weight).sum(axis=1) / jnp.maximum(weight.sum(axis=1), 1)
    return {"tokens": x, "pooled": pooled}


class JEPAPredictor(nn.Module):
  """I-JEPA's `VisionTransformerPredictor`, run once per target block.

  context [B, Kc, D] (encoder width), context_ids / context_valid [B, Kc],
  target_ids / target_valid [M, B, Kt]. The context is embedded to the
  predictor's width and given its positions; for each target block, a
  learned mask token plus each target patch's position is appended; the
  M sequences run as one batch of M B (the official `x.repeat(len(masks),
  1, 1)`); the outputs at the mask tokens are normed and projected back to
  the encoder's width: [M, B, Kt, D].
  """
  grid: tuple[int, int]
  width: int
  depth: int
  num_heads: int
  out_width: int
  mlp_ratio: float = 4.0
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, context, context_ids, context_valid, target_ids,
               target_valid):
    m, b, kt = target_ids.shape
    kc = context.shape[1]
    posemb = sincos_2d_posemb(self.width, self.grid)
    x = token_dense(nn.Dense(self.width, kernel_init=dense_init, dtype=self.dtype,
                             name="predictor_embed"), context)
    x = x + jnp.asarray(posemb)[context_ids].astype(x.dtype)
    mask_token = self.param("mask_token", token_init, (1, 1, 1, self.width))
    queries = (mask_token + jnp.asarray(posemb)[target_ids]).astype(x.dtype)
    x = jnp.broadcast_to(x[None], (m, b, kc, self.width))
    x = jnp.concatenate([x, queries], axis=2).reshape(m * b, kc + kt, self.width)
    valid = jnp.concatenate(
        [jnp.broadcast_to(context_valid[None], (m, b, kc)), target_valid], axis=2)
    x = KeyMaskedTransformer(self.depth, self.num_heads,
                             int(self.width * self.mlp_ratio), self.attn_impl,
                             self.dtype, name="predictor")(
                                 x, valid.reshape(m * b, kc + kt))
    x = token_dense(nn.Dense(self.out_width, kernel_init=dense_init,
                             dtype=self.dtype, name="predictor_proj"), x[:, kc:])
    return x.reshape(m, b, kt, self.out_width)


class IJEPA(nn.Module):
  """The trained networks: the context encoder and the predictor."""
  encoder: JEPAEncoder
  predictor: JEPAPredictor

  def __call__(self, images, masks):
    context = self.encoder(images, masks.context, masks.context_valid)["tokens"]
    return self.predictor(context, masks.context, masks.context_valid,
                          masks.targets, masks.targets_valid)


def layer_norm_no_affine(x, eps: float = 1e-5):
  """`F.layer_norm(h, (h.size(-1),))`: over the features, no scale or bias,
  torch's eps, in float32."""
  x = x.astype(jnp.float32)
  mean = x.mean(axis=-1, keepdims=True)
  var = jnp.square(x - mean).mean(axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


# ------------------------------------------------------------ DMT-JEPA


def local_window_index(grid, window: int = 3):
  """[N, window^2 - 1] row-major indices of each patch's window minus the
  patch itself, wrapping at the borders (DMTJEPA/DMTJEPA
  `src/models/local_agg_head.py`, `get_local_index`)."""
  gh, gw = grid
  half = window // 2
  rows = [[(r + d) % gh for d in range(-half, half + 1)] for r in range(gh)]
  cols = [[(c + d) % gw for d in range(-half, half + 1)] for c in range(gw)]
  out = []
  for i in range(gh * gw):
    r, c = divmod(i, gw)
    cells = sorted({a * gw + b for a in rows[r] for b in cols[c]} - {i})
    out.append(cells)
  return np.asarray(out, np.int32)


def top_neighbours(x, index, k: int):
  """For every token of x [B, N, D], the k tokens of its window (`index`
  [N, W]) most cosine-similar to it: [B, N, k, D]."""
  xn = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  window = jnp.asarray(index)
  sims = jnp.einsum("bnwd,bnd->bnw", xn[:, window], xn)
  _, top = jax.lax.top_k(sims, k)
  picked = jnp.take_along_axis(jnp.broadcast_to(window, sims.shape), top, axis=2)
  return jax.vmap(lambda xb, ib: xb[ib])(x, picked)


class ClassAttentionBlock(nn.Module):
  """DMT-JEPA's `LayerScale_Block_CA` in its "cross-attn" mode: the query
  is the class token, keys and values are [class token, tokens]; the
  attention output is added to the class token (`to_tokens=False`) or to
  every token (`to_tokens=True`, the context head), then an MLP."""
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cls, valid=None, to_tokens=False):
    width = x.shape[-1]
    heads, head_dim = self.num_heads, width // self.num_heads
    u = layer_norm("norm1")(jnp.concatenate([cls, x], axis=1))
    dense = lambda name: nn.Dense(width, dtype=self.dtype, kernel_init=dense_init,
                                  name=name)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, head_dim)
    q, k, v = split(dense("q")(u[:, :1])), split(dense("k")(u)), split(dense("v")(u))
    bias = None
    if valid is not None:
      bias = key_bias(jnp.concatenate(
          [jnp.ones(valid.shape[:1] + (1,), bool), valid], axis=1))
    out = attention(q, k, v, bias=bias).reshape(x.shape[0], 1, width)
    out = dense("proj")(out)
    y = (x if to_tokens else cls) + out
    return y + MlpBlock(self.mlp_dim, self.dtype, name="mlp")(layer_norm("norm2")(y))


def _mean(x, valid):
  if valid is None:
    return x.mean(axis=1, keepdims=True)
  w = valid[..., None].astype(x.dtype)
  return (x * w).sum(axis=1, keepdims=True) / jnp.maximum(w.sum(axis=1, keepdims=True), 1)


class LocalAggregationHead(nn.Module):
  """DMT-JEPA's `LocalAggHead`: two class-attention blocks and a LayerNorm.

  `local=True` (the target side): each patch's class token starts as the
  image's mean token, and attends to the `k` most similar patches of its
  wrapped window; the result replaces the patch. The official code tiles
  the mean so that for batch > 1 it comes from another image; here it is
  each image's own mean (the intent). `local=False` (the context side): the
  class token is the mean of the (valid) tokens, and each block's attention
  output is added to every token.
  """
  grid: tuple[int, int]
  num_heads: int
  neighbours: int = 4
  window: int = 3
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, valid=None, local=False):
    b, n, d = x.shape
    blocks = [ClassAttentionBlock(self.num_heads, int(d * self.mlp_ratio),
                                  self.dtype, name=f"block_{i}") for i in range(2)]
    if local:
      near = top_neighbours(x, local_window_index(self.grid, self.window),
                            self.neighbours).reshape(b * n, self.neighbours, d)
      cls = jnp.broadcast_to(x.mean(axis=1, keepdims=True), (b, n, d))
      cls = cls.reshape(b * n, 1, d)
      for blk in blocks:
        cls = blk(near, cls)
      x = cls.reshape(b, n, d)
    else:
      for blk in blocks:
        x = blk(x, _mean(x, valid), valid, to_tokens=True)
    return layer_norm("norm")(x)


class DMTJEPA(nn.Module):
  """The trained networks of DMT-JEPA: I-JEPA's plus the online head
  between the context encoder and the predictor."""
  encoder: JEPAEncoder
  head: LocalAggregationHead
  predictor: JEPAPredictor

  def __call__(self, images, masks):
    context = self.encoder(images, masks.context, masks.context_valid)["tokens"]
    context = self.head(context, masks.context_valid)
    return self.predictor(context, masks.context, masks.context_valid,
                          masks.targets, masks.targets_valid)
