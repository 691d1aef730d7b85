"""CAE's latent contextual regressor and decoder (Chen et al. 2022, "Context
Autoencoder for Self-Supervised Representation Learning", Sec. 3).

The regressor predicts the latents of the masked patches from the visible
patches' latents Z_v: its queries are mask tokens, and each of its blocks
is a cross-attention block (`RegressorBlock` in lxtGH/CAE's
`models/modeling_cae_helper.py`):

  x = q + g1 * CrossAttn(LN_q(q + P_m), LN_k([Z_v, q] + [P_v, P_m]),
                         LN_v([Z_v, q]))
  x = LN(x)
  x = x + g2 * MLP(x)

with the sin-cos positions P_v, P_m of the visible and masked patches,
keys and values from the visible latents and the current queries together,
and layer scales g1, g2 (initialized to 0.1 in the official recipe). A final
LayerNorm gives the predicted latents Z_m (the regressor's output). The
decoder adds P_m back, runs pre-LN self-attention blocks (with layer scale)
on the masked positions only, a LayerNorm and a linear head (the
decoder).

The official keys have no bias while queries and values have one. The key
projection here has a bias: it adds the same q . b_k to every logit of a
query, which the softmax removes, so the output is the same function.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from maskmodel.models.cross_decoder import CrossAttention
from maskmodel.models.patches import sincos_2d_posemb
from maskmodel.models.vit import (MlpBlock, MultiHeadAttention, dense_init,
                                  layer_norm, token_dense, token_init)

Dtype = Any


def _scale(module, name, width, init):
  """A layer-scale vector initialized to `init`, or 1 (no param) without."""
  if not init:
    return 1.0
  return module.param(name, nn.initializers.constant(init), (width,))


class RegressorBlock(nn.Module):
  """One cross-attention block of CAE's regressor (module docstring)."""
  num_heads: int
  mlp_dim: int
  layer_scale: Optional[float] = 0.1
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, queries, context, pos_queries, pos_context):
    width = queries.shape[-1]
    kv = jnp.concatenate([context, queries], axis=1)
    pos_kv = jnp.concatenate([pos_context, pos_queries], axis=1)
    y = CrossAttention(self.num_heads, self.attn_impl, self.dtype,
                       name="cross_attn")(
                           layer_norm("norm_q")(queries + pos_queries),
                           layer_norm("norm_k")(kv + pos_kv),
                           values=layer_norm("norm_v")(kv))
    x = queries + _scale(self, "gamma_1", width, self.layer_scale) * y
    x = layer_norm("norm2")(x)
    return x + _scale(self, "gamma_2", width, self.layer_scale) * MlpBlock(
        self.mlp_dim, self.dtype, name="mlp")(x)


class LayerScaleBlock(nn.Module):
  """BEiT's pre-LN block with layer scale: x + g1 * Attn(LN(x)), then
  x + g2 * MLP(LN(x)) (`Block` in CAE's `modeling_cae_helper.py`)."""
  num_heads: int
  mlp_dim: int
  layer_scale: Optional[float] = 0.1
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    y, _ = MultiHeadAttention(self.num_heads, self.attn_impl, self.dtype,
                              name="attn")(layer_norm("norm1")(x))
    x = x + _scale(self, "gamma_1", width, self.layer_scale) * y
    y = MlpBlock(self.mlp_dim, self.dtype, name="mlp")(layer_norm("norm2")(x))
    return x + _scale(self, "gamma_2", width, self.layer_scale) * y


class ContextRegressorDecoder(nn.Module):
  """CAE's pretext neck (`VisionTransformerNeck`): from the visible latents
  [B, K, D] (no class token), `ids_visible` [B, K] and `ids_masked` [B, M],
  returns (predicted latents [B, M, D], head outputs [B, M, out_dim]).

  Its width is the encoder's (the official `decoder_embed_dim` is 768 for
  ViT-B, no projection).
  """
  grid: tuple[int, int]
  out_dim: int
  num_heads: int
  regressor_depth: int = 4
  decoder_depth: int = 4
  mlp_ratio: float = 4.0
  layer_scale: Optional[float] = 0.1
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, visible, ids_visible, ids_masked):
    b, _, width = visible.shape
    mlp_dim = int(width * self.mlp_ratio)
    pos = jnp.asarray(sincos_2d_posemb(width, self.grid), visible.dtype)
    pos_visible, pos_masked = pos[ids_visible], pos[ids_masked]
    mask_token = self.param("mask_token", token_init, (1, 1, width))
    x = jnp.broadcast_to(mask_token.astype(visible.dtype),
                         (b, ids_masked.shape[1], width))
    for i in range(self.regressor_depth):
      x = RegressorBlock(self.num_heads, mlp_dim, self.layer_scale,
                         self.attn_impl, self.dtype, name=f"regressor_{i}")(
                             x, visible, pos_masked, pos_visible)
    latent = layer_norm("regressor_norm")(x)
    x = latent + pos_masked
    for i in range(self.decoder_depth):
      x = LayerScaleBlock(self.num_heads, mlp_dim, self.layer_scale,
                          self.attn_impl, self.dtype, name=f"decoder_{i}")(x)
    x = layer_norm("decoder_norm")(x)
    out = token_dense(nn.Dense(self.out_dim, kernel_init=dense_init,
                               dtype=self.dtype, name="head"), x)
    return latent.astype(jnp.float32), out.astype(jnp.float32)
