"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al. 2021).

Random masking hides `mask_ratio` of the patches; the encoder sees only the
visible ones; a light decoder predicts the pixels of every patch; the loss is
the MSE on the masked patches only (Sec. 3, "Reconstruction target"), with an
optional per-patch normalized-pixel target.

With `model.token_reduction` the encoder also merges (or prunes) the visible
tokens during pretraining. The decoder needs one latent per visible patch,
so the encoder's output tokens are copied back to every visible position
they hold (ToMe's `unmerge`, from the source map) before the mask tokens
are added; a patch pruned by a pruning method reaches the decoder as a zero
latent. Feature evals (k-NN, linear probe) run the encoder on full images
without reduction, so they measure the representation, not the reducer.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel import masking
from maskmodel import models
from maskmodel.models import build
from maskmodel.models.mae import MAEDecoder, MaskedAutoencoder
from maskmodel.models.patches import patchify, reconstruction_images
from maskmodel.tasks.base import EncoderTask


def patch_stats(patches, eps=1e-6):
  """Each patch's mean and sqrt(var + eps), the variance unbiased as torch's
  `Tensor.var`, which MAE's `forward_loss` calls."""
  mean = patches.mean(axis=-1, keepdims=True)
  return mean, jnp.sqrt(patches.var(axis=-1, keepdims=True, ddof=1) + eps)


def normalized_pixel_target(patches, eps=1e-6):
  """Per-patch (x - mean) / sqrt(var + eps), MAE's `norm_pix_loss` target."""
  mean, std = patch_stats(patches, eps)
  return (patches - mean) / std


def masked_mse(pred, target, mask):
  """MAE Eq.: mean over masked patches of the per-patch mean squared error."""
  per_patch = ((pred - target) ** 2).mean(axis=-1)
  return (per_patch * mask).sum() / mask.sum()


class MAETask(EncoderTask):
  """Task contract: `init`, `loss`, plus `features` and `reconstruct` for evals."""

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    self.grid = build.grid(config)
    self.patch_dim = m.patch_size**2 * config.data.channels
    self.keep = masking.num_kept(self.grid[0] * self.grid[1], t.mask_ratio)
    self.norm_pix_loss = t.norm_pix_loss
    # The same params serve both: the pretraining encoder (visible tokens,
    # reduced along model.token_reduction) and the full-image feature encoder.
    family = models.get_model(m.name)
    self.encoder = family.build(build.with_token_reduction(m, "none"),
                                num_classes=0)
    pretrain_encoder = family.build(m, num_classes=0, num_tokens=self.keep + 1)
    dec = t.decoder
    self.model = MaskedAutoencoder(
        encoder=pretrain_encoder,
        decoder=MAEDecoder(grid=self.grid, patch_dim=self.patch_dim,
                           width=dec.width, depth=dec.depth,
                           num_heads=dec.num_heads, attn_impl=m.attn_impl,
                           dtype=build.dtype(m)))

  def mask_policy(self, rng, batch_size, state=None):
    """MAE's random mask; subclasses may read their task state (ColorMAE's
    noise fields)."""
    del state
    return masking.random_mask(rng, batch_size, self.grid, keep=self.keep)

  def init(self, rng, batch):
    images = batch["image"]
    mask = self.mask_policy(jax.random.PRNGKey(0), images.shape[0])
    params = self.model.init(rng, images, mask.ids_keep, mask.ids_restore)
    return params["params"], {}

  def predict(self, params, images, rng, state=None):
    mask = self.mask_policy(rng, images.shape[0], state)
    pred = self.model.apply({"params": params}, images, mask.ids_keep,
                            mask.ids_restore)
    return pred, mask

  def target(self, images):
    target = patchify(images, self.config.model.patch_size)
    return normalized_pixel_target(target) if self.norm_pix_loss else target

  def loss(self, params, state, batch, rng, step):
    del step
    pred, mask = self.predict(params, batch["image"], rng, state)
    loss = masked_mse(pred, self.target(batch["image"]), mask.mask)
    return loss, ({"loss": loss}, state)

  def reconstruct(self, params, state, images, rng):
    """Images [B, H, W, C]: the input, the masked input and the
    reconstruction (the prediction at hidden patches, the input elsewhere),
    and `mask` [B, H, W, 1], 1 on hidden pixels.

    With a normalized-pixel target the prediction is mapped back to pixels
    with each patch's own mean and std, as in the MAE visualization demo.
    """
    pred, mask = self.predict(params, images, rng, state)
    p = self.config.model.patch_size
    if self.norm_pix_loss:
      mean, std = patch_stats(patchify(images, p))
      pred = pred * std + mean
    return reconstruction_images(images, pred, mask.mask, p)
