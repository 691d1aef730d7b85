"""CropMAE: Efficient Image Pre-Training with Siamese Cropped Masked
Autoencoders (Eymaël et al. 2024).

Two views of one image, made on the host (`preprocess`, CropMAE's
`GlobalToLocal` in `data/util/CropMAEStrategies.py`): a global view, a
random resized crop of the image (scale 0.1-1), and a local view, a random
resized crop *of the global view* (scale 0.3-0.6), each flipped on its own.
One encoder sees the global view whole and the local view almost entirely
masked (98.5%; at least one patch stays visible). A decoder of post-norm
blocks (cross-attention to the global encoding, FFN, self-attention; see
`maskmodel/models/cross_decoder.py`) reconstructs the local view, with MAE's
normalized-pixel MSE on its masked patches (Sec. 3).

`task.views` picks the pair: "global_to_local" (CropMAE), "local_to_global"
(reconstruct the global view from the local one), "random" (two independent
global crops, SiamMAE's setting without frames) or "same" (one crop
reconstructed from itself), the strategies the paper compares (Table 1).
"""
from __future__ import annotations

import flax.linen as nn
import jax

from maskmodel import data, masking
from maskmodel.config import ConfigError
from maskmodel import models
from maskmodel.models import build
from maskmodel.models.cross_decoder import CrossDecoder
from maskmodel.models.patches import patchify
from maskmodel.models.vit import ViT
from maskmodel.tasks.base import EncoderTask
from maskmodel.tasks.mae import masked_mse, normalized_pixel_target

VIEWS = ("global_to_local", "local_to_global", "random", "same")


class SiameseMAE(nn.Module):
  """One encoder for both views, and the cross-attention decoder."""
  encoder: ViT
  decoder: CrossDecoder

  def __call__(self, memory_view, masked_view, ids_keep, ids_restore,
               train: bool = False):
    memory = self.encoder(memory_view)["tokens"]
    visible = self.encoder(masked_view, ids_keep=ids_keep)["tokens"]
    return self.decoder(visible, ids_restore, memory, train)


class CropMAETask(EncoderTask):
  """Task contract: `preprocess`, `init`, `loss`, plus `features`."""

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    if t.views not in VIEWS:
      raise ConfigError(f"task.views={t.views!r} is unknown; use one of {VIEWS}.")
    self.grid = build.grid(config)
    self.keep = masking.num_kept(self.grid[0] * self.grid[1], t.mask_ratio)
    self.encoder = models.get_model(m.name).build(
        build.with_token_reduction(m, "none"))
    dec = t.decoder
    self.model = SiameseMAE(
        encoder=self.encoder,
        decoder=CrossDecoder(grid=self.grid,
                             patch_dim=m.patch_size**2 * config.data.channels,
                             width=dec.width, depth=dec.depth,
                             num_heads=dec.num_heads, mlp_dim=dec.mlp_dim,
                             dropout=dec.dropout, attn_impl=m.attn_impl,
                             dtype=build.dtype(m)))

  def preprocess(self, record, rng, train):
    if not train:
      return super().preprocess(record, rng, train)
    t, size = self.config.task, self.image_spec.size
    def crop(image, scale):
      view = data.random_resized_crop(image, size, rng, scale=tuple(scale))
      return view[:, ::-1] if self.config.data.flip and rng.uniform() < 0.5 else view
    first = crop(record["image"], t.global_scale)
    if t.views in ("global_to_local", "local_to_global"):
      second = crop(first, t.local_scale)
    elif t.views == "random":
      second = crop(record["image"], t.global_scale)
    else:
      second = first
    if t.views == "local_to_global":
      first, second = second, first
    # "image" is seen whole; "masked_view" is reconstructed.
    return {"image": data.normalize(first, self.image_spec),
            "masked_view": data.normalize(second, self.image_spec),
            "label": record["label"]}

  def init(self, rng, batch):
    images = batch["image"]
    mask = masking.random_mask(jax.random.PRNGKey(0), images.shape[0],
                               self.grid, keep=self.keep)
    return self.model.init(rng, images, images, mask.ids_keep,
                           mask.ids_restore)["params"], {}

  def loss(self, params, state, batch, rng, step):
    del step
    mask_rng, dropout_rng = jax.random.split(rng)
    masked_view = batch["masked_view"]
    mask = masking.random_mask(mask_rng, masked_view.shape[0], self.grid,
                               keep=self.keep)
    pred = self.model.apply({"params": params}, batch["image"], masked_view,
                            mask.ids_keep, mask.ids_restore, True,
                            rngs={"dropout": dropout_rng})
    target = normalized_pixel_target(
        patchify(masked_view, self.config.model.patch_size))
    loss = masked_mse(pred, target, mask.mask)
    return loss, ({"loss": loss}, state)
