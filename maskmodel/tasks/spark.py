"""SparK: Designing BERT for Convolutional Networks: Sparse and Hierarchical
Masked Modeling (Tian et al. 2023).

Masked image modeling for a convnet (`model.name="convnet"`,
`maskmodel/models/convnet.py`), as `SparK.forward` in keyu-tian/SparK's
`pretrain/spark.py`:

- A random mask on the coarsest feature grid keeps round((1 - ratio) h w)
  cells active (ratio 0.6); the masked input pixels are zeroed and the
  encoder runs sparsely (Sec. 3.1), so nothing leaks from masked cells.
- Densify, per scale from the coarsest (Sec. 3.2): a sparse LayerNorm (the
  ConvNeXt setting), a per-scale mask token in the inactive positions, and a
  projection conv to the decoder's width at that scale (1x1 at the coarsest,
  3x3 elsewhere; none where the widths already agree).
- A light UNet decoder (`LightDecoder` in `pretrain/decoder.py`): per scale,
  add the densified features, upsample with a 4x4 stride-2 transposed conv,
  then conv3x3-BN-ReLU6-conv3x3-BN, halving the width; a 1x1 conv gives
  pixels.
- The loss is the per-patch normalized-pixel MSE on the masked cells,
  patches being the coarsest cells (`downsample` pixels wide).

The decoder's BatchNorm statistics are task state, updated by `loss`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskmodel import masking, models
from maskmodel.config import ConfigError
from maskmodel.models.convnet import ConvNet, conv_init, upsample_mask
from maskmodel.models.norm import LayerNorm
from maskmodel.models.patches import patchify, reconstruction_images
from maskmodel.tasks.base import EncoderTask
from maskmodel.tasks.mae import masked_mse, normalized_pixel_target, patch_stats

Dtype = Any


class UNetBlock(nn.Module):
  """2x upsampling, then conv-BN-ReLU6-conv-BN (SparK's `UNetBlock`)."""
  width_in: int
  width_out: int

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                   epsilon=1e-5, name=name)
    # torch's ConvTranspose2d(k=4, s=2, p=1) doubles the size: pad k-1-p.
    x = nn.ConvTranspose(self.width_in, (4, 4), strides=(2, 2),
                         padding=((2, 2), (2, 2)), kernel_init=conv_init,
                         name="up")(x)
    x = nn.Conv(self.width_in, (3, 3), padding=1, use_bias=False,
                kernel_init=conv_init, name="conv_0")(x)
    x = jnp.clip(bn("bn_0")(x), 0, 6)
    x = nn.Conv(self.width_out, (3, 3), padding=1, use_bias=False,
                kernel_init=conv_init, name="conv_1")(x)
    return bn("bn_1")(x)


class SparKModel(nn.Module):
  encoder: ConvNet
  decoder_width: int
  channels: int

  @nn.compact
  def __call__(self, images, active, train: bool = False):
    features = self.encoder(images, active)["features"][::-1]  # coarsest first
    num_blocks = (self.encoder.downsample - 1).bit_length()
    widths = [self.decoder_width // 2**i for i in range(num_blocks + 1)]
    x = 0.0
    for i in range(num_blocks):
      if i < len(features):
        f = features[i]
        keep = upsample_mask(active, f.shape[1])
        f = LayerNorm(epsilon=1e-6, name=f"densify_norm_{i}")(f) * keep
        token = self.param(f"mask_token_{i}", conv_init, (f.shape[-1],))
        f = jnp.where(keep > 0, f, token)
        if f.shape[-1] != widths[i] or i:
          k = 1 if i == 0 else 3
          f = nn.Conv(widths[i], (k, k), padding=k // 2, kernel_init=conv_init,
                      name=f"densify_proj_{i}")(f)
        x = x + f
      x = UNetBlock(widths[i], widths[i + 1], name=f"decoder_{i}")(x, train)
    return nn.Conv(self.channels, (1, 1), kernel_init=conv_init, name="proj")(x)


class SparKTask(EncoderTask):
  """Task contract: `init`, `loss` (with BatchNorm state), `features`,
  `reconstruct`."""

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    if m.name != "convnet":
      raise ConfigError(f"task.name='spark' pretrains a convnet; set "
                        f"model.name='convnet' (it is {m.name!r}).")
    self.encoder = models.get_model(m.name).build(m)
    self.downsample = self.encoder.downsample
    size = config.data.image_size
    if size % self.downsample or self.downsample & (self.downsample - 1):
      raise ConfigError(f"data.image_size={size} must be a multiple of the "
                        f"convnet's stride {self.downsample} (a power of 2).")
    self.grid = (size // self.downsample,) * 2
    n = self.grid[0] * self.grid[1]
    self.keep = round(n * (1 - t.mask_ratio))
    if not 0 < self.keep < n:
      raise ConfigError(f"task.mask_ratio={t.mask_ratio} leaves {self.keep} of "
                        f"{n} cells active; use a ratio in (0, 1).")
    self.model = SparKModel(encoder=self.encoder,
                            decoder_width=t.decoder_width,
                            channels=config.data.channels)

  def mask_policy(self, rng, batch_size):
    mask = masking.random_mask(rng, batch_size, self.grid, keep=self.keep).mask
    return mask  # [B, h*w], 1 = masked

  def init(self, rng, batch):
    images = batch["image"]
    active = jnp.ones((images.shape[0],) + self.grid, bool)
    variables = self.model.init(rng, images, active)
    return variables["params"], {"batch_stats": variables["batch_stats"]}

  def predict(self, params, state, images, rng, train):
    mask = self.mask_policy(rng, images.shape[0])
    active = (mask == 0).reshape((-1,) + self.grid)
    out, updates = self.model.apply(
        {"params": params, "batch_stats": state["batch_stats"]}, images, active,
        train, mutable=["batch_stats"])
    return patchify(out, self.downsample), mask, updates["batch_stats"]

  def loss(self, params, state, batch, rng, step):
    del step
    images = batch["image"]
    pred, mask, stats = self.predict(params, state, images, rng, True)
    target = normalized_pixel_target(patchify(images, self.downsample))
    loss = masked_mse(pred, target, mask)
    return loss, ({"loss": loss}, dict(state, batch_stats=stats))

  def reconstruct(self, params, state, images, rng):
    pred, mask, _ = self.predict(params, state, images, rng, False)
    mean, std = patch_stats(patchify(images, self.downsample))
    return reconstruction_images(images, pred * std + mean, mask, self.downsample)
