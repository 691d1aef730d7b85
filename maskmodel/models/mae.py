"""MAE encoder-decoder (He et al. 2021, Sec. 3, "MAE decoder")."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from maskmodel.models.patches import sincos_2d_posemb
from maskmodel.models.vit import (Transformer, ViT, dense_init, token_dense,
                                  token_init)

Dtype = Any


class MAEDecoder(nn.Module):
  """Light decoder over all positions: visible latents + shared mask token.

  Takes encoder tokens [B, 1+K, D] (class token first) and MAE's
  `ids_restore`, and predicts every patch's pixels [B, N, p*p*C].

  With `loss_predictor`, a second stack of the same shape (HPM's loss
  predictor, `decoder_blocks_losspred` in Haochen-Wang409/HPM's
  `models_mae_learn_loss.py`) runs on the same embedded tokens, mask tokens
  and positions, and its per-patch output, averaged over its p*p*C values,
  is the predicted reconstruction loss: the call returns (pixels [B, N,
  p*p*C], predicted loss [B, N]).
  """
  grid: tuple[int, int]
  patch_dim: int
  width: int = 512
  depth: int = 8
  num_heads: int = 16
  mlp_ratio: float = 4.0
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32
  loss_predictor: bool = False

  @nn.compact
  def __call__(self, tokens, ids_restore):
    b, n = ids_restore.shape
    x = token_dense(nn.Dense(self.width, kernel_init=dense_init, dtype=self.dtype,
                             name="embed"), tokens)
    mask_token = self.param("mask_token", token_init, (1, 1, self.width))
    visible = x[:, 1:]
    filler = jnp.broadcast_to(mask_token.astype(x.dtype),
                              (b, n - visible.shape[1], self.width))
    x_ = jnp.concatenate([visible, filler], axis=1)
    x_ = jnp.take_along_axis(x_, ids_restore[..., None], axis=1)  # unshuffle
    x = jnp.concatenate([x[:, :1], x_], axis=1)
    x = x + sincos_2d_posemb(self.width, self.grid, class_token=True)[None]
    pixels = self._stack(x, "decoder", "pred")
    if not self.loss_predictor:
      return pixels
    return pixels, self._stack(x, "loss_decoder", "loss_pred").mean(axis=-1)

  def _stack(self, x, blocks, head):
    x = Transformer(self.depth, self.num_heads, int(self.width * self.mlp_ratio),
                    self.attn_impl, self.dtype, name=blocks)(x).x
    x = token_dense(nn.Dense(self.patch_dim, kernel_init=dense_init,
                             dtype=self.dtype, name=head), x)
    return x[:, 1:].astype(jnp.float32)


class MaskedAutoencoder(nn.Module):
  """ViT encoder on visible patches + `MAEDecoder`."""
  encoder: ViT
  decoder: MAEDecoder

  def __call__(self, images, ids_keep, ids_restore):
    # One latent per visible patch: merged tokens are copied back to the
    # positions they hold (a no-op without token reduction).
    latent = self.encoder(images, ids_keep=ids_keep,
                          restore_tokens=True)["tokens"]
    return self.decoder(latent, ids_restore)

  def encode(self, images):
    return self.encoder(images)
