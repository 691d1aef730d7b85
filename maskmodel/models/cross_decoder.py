"""Cross-attention, and the post-norm decoder that reconstructs one view from
another (CropMAE, Eymaël et al. 2024; SiamMAE's decoder).

`CrossAttention` is multi-head attention of queries from one token set over
keys and values from another, through `maskmodel.kernels.attention`, which
takes Nq != Nk. `CrossDecoderBlock` is a post-norm Transformer decoder layer
in CropMAE's order (`DecoderBlock` in alexandre-eymael/CropMAE's
`models/components/DecoderBlock.py`):

  x = LN(x + CrossAttn(x, memory))
  x = LN(x + FFN(x))
  x = LN(x + SelfAttn(x))

with dropout on each residual branch and inside the FFN, and torch's
`nn.MultiheadAttention` layout (separate q, k, v and output projections,
all with biases).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from maskmodel.kernels import attention
from maskmodel.models.patches import sincos_2d_posemb
from maskmodel.models.vit import dense_init, gelu, layer_norm, token_dense, token_init

Dtype = Any


class CrossAttention(nn.Module):
  """Queries [B, Nq, D] attend to memory [B, Nk, D]; returns [B, Nq, D].

  Keys and values are projected from `memory`, or the values from `values`
  ([B, Nk, D]) when given: CAE's regressor normalizes them apart and adds
  positions to the keys only.
  """
  num_heads: int
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, memory, values=None):
    b, nq, width = x.shape
    head_dim = width // self.num_heads
    def project(name, tokens):
      y = token_dense(nn.Dense(width, dtype=self.dtype, kernel_init=dense_init,
                               name=name), tokens)
      return y.reshape(b, tokens.shape[1], self.num_heads, head_dim)
    out = attention(project("query", x), project("key", memory),
                    project("value", memory if values is None else values),
                    impl=self.attn_impl)
    return token_dense(nn.Dense(width, dtype=self.dtype, kernel_init=dense_init,
                                name="out"), out.reshape(b, nq, width))


class CrossDecoderBlock(nn.Module):
  """CropMAE's post-norm block: cross-attention, FFN, self-attention."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.1
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, memory, train: bool):
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    attn = lambda name: CrossAttention(self.num_heads, self.attn_impl,
                                       self.dtype, name=name)
    x = layer_norm("norm_cross")(x + drop(attn("cross_attn")(x, memory)))
    h = token_dense(nn.Dense(self.mlp_dim, dtype=self.dtype,
                             kernel_init=dense_init, name="mlp_in"), x)
    h = token_dense(nn.Dense(x.shape[-1], dtype=self.dtype,
                             kernel_init=dense_init, name="mlp_out"),
                    drop(gelu(h)))
    x = layer_norm("norm_mlp")(x + drop(h))
    return layer_norm("norm_self")(x + drop(attn("self_attn")(x, x)))


class CrossDecoder(nn.Module):
  """Reconstructs a masked view's patches [B, N, patch_dim] from its visible
  encoder tokens [B, 1+K, E] (with MAE's `ids_restore`) and another view's
  full encoding [B, 1+N', E], the memory (`SiameseMAE.forward_decoder`).

  Both are embedded to `width`; the masked view gets mask tokens and the
  position embedding, the memory neither (its encoder already placed it).
  """
  grid: tuple[int, int]
  patch_dim: int
  width: int = 256
  depth: int = 4
  num_heads: int = 8
  mlp_dim: int = 2048  # torch's TransformerDecoderLayer default
  dropout: float = 0.1
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, ids_restore, memory, train: bool = False):
    embed = nn.Dense(self.width, kernel_init=dense_init, dtype=self.dtype,
                     name="embed")
    x, memory = token_dense(embed, tokens), token_dense(embed, memory)
    b, n = ids_restore.shape
    mask_token = self.param("mask_token", token_init, (1, 1, self.width))
    filler = jnp.broadcast_to(mask_token.astype(x.dtype),
                              (b, n + 1 - x.shape[1], self.width))
    x_ = jnp.concatenate([x[:, 1:], filler], axis=1)
    x_ = jnp.take_along_axis(x_, ids_restore[..., None], axis=1)  # unshuffle
    x = jnp.concatenate([x[:, :1], x_], axis=1)
    x = x + sincos_2d_posemb(self.width, self.grid, class_token=True)[None]
    for i in range(self.depth):
      x = CrossDecoderBlock(self.num_heads, self.mlp_dim, self.dropout,
                            self.attn_impl, self.dtype, name=f"block_{i}")(
                                x, memory, train)
    x = layer_norm("norm")(x)
    x = token_dense(nn.Dense(self.patch_dim, kernel_init=dense_init,
                             dtype=self.dtype, name="pred"), x)
    return x[:, 1:].astype(jnp.float32)
