"""SimMIM: a Simple Framework for Masked Image Modeling (Xie et al. 2022).

Random cells of `mask_patch_size` pixels (twice the patch size by default)
are masked, `ceil(mask_ratio * cells)` of them (Sec. 3.1). Unlike MAE, the
encoder sees every patch: a hidden patch's embedding is replaced by a learned
mask token. A linear head maps each encoded patch token to its pixels
(Sec. 3.3, "one-layer prediction head"), and the loss is the L1 distance on
the masked pixels only (Sec. 3.4, Eq. 1), against the input as the pipeline
normalized it with the dataset mean/std, not per patch:

  L = sum_masked |y - x| / (masked pixels) / channels

as `SimMIM.forward` in microsoft/SimMIM's `models/simmim.py` computes it
(with its 1e-5 in the denominator).

Backbone: maskmodel's ViT (absolute sin-cos positions, no layer-scale). The
official ViT-B uses BEiT's shared relative position bias and layer-scale
0.1; that architecture is not ported here.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from maskmodel import masking
from maskmodel import models
from maskmodel.models import build
from maskmodel.models.patches import patchify, reconstruction_images
from maskmodel.models.vit import ViT, dense_init
from maskmodel.tasks.base import EncoderTask


def masked_l1(pred, target, mask, channels):
  """SimMIM Eq. 1: L1 over the masked pixels, averaged over channels.

  pred, target: [B, N, p*p*C]; mask: [B, N] (1 = hidden).
  """
  pixels_per_patch = pred.shape[-1] // channels
  l1 = jnp.abs(pred - target).sum(axis=-1)
  return (l1 * mask).sum() / (mask.sum() * pixels_per_patch + 1e-5) / channels


class MaskTokenModel(nn.Module):
  """An encoder over all patches, hidden ones as mask tokens, then a linear
  head from each patch token to its target (SimMIM's pixels, MaskFeat's
  HOG)."""
  encoder: ViT
  out_dim: int

  @nn.compact
  def __call__(self, images, mask):
    tokens = self.encoder(images, mask=mask)["tokens"][:, 1:]
    return nn.Dense(self.out_dim, kernel_init=dense_init, dtype=jnp.float32,
                    name="head")(tokens).astype(jnp.float32)


class SimMIMTask(EncoderTask):
  """Task contract: `init`, `loss`, plus `features` and `reconstruct`."""

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    self.grid = build.grid(config)
    if t.mask_patch_size % m.patch_size:
      raise build.ConfigError(
          f"task.mask_patch_size={t.mask_patch_size} is not a multiple of "
          f"model.patch_size={m.patch_size}; use e.g. {2 * m.patch_size}.")
    self.cell = t.mask_patch_size // m.patch_size
    self.keep = masking.num_kept_coarse(self.grid, self.cell, t.mask_ratio)
    self.channels = config.data.channels
    self.encoder = models.get_model(m.name).build(
        build.with_token_reduction(m, "none"))
    self.model = MaskTokenModel(encoder=self.encoder,
                                out_dim=m.patch_size**2 * self.channels)

  def mask_policy(self, rng, batch_size):
    return masking.coarse_random_mask(rng, batch_size, self.grid,
                                      cell=self.cell, keep=self.keep)

  def init(self, rng, batch):
    images = batch["image"]
    mask = jnp.zeros((images.shape[0], self.grid[0] * self.grid[1]))
    return self.model.init(rng, images, mask)["params"], {}

  def loss(self, params, state, batch, rng, step):
    del step
    images = batch["image"]
    mask = self.mask_policy(rng, images.shape[0]).mask
    pred = self.model.apply({"params": params}, images, mask)
    target = patchify(images, self.config.model.patch_size)
    loss = masked_l1(pred, target, mask, self.channels)
    return loss, ({"loss": loss}, state)

  def reconstruct(self, params, state, images, rng):
    del state
    mask = self.mask_policy(rng, images.shape[0]).mask
    pred = self.model.apply({"params": params}, images, mask)
    return reconstruction_images(images, pred, mask, self.config.model.patch_size)
