"""MaskFeat: Masked Feature Prediction (Wei et al. 2022), for images.

BEiT block masks hide 40% of the patches (Sec. 4, smallest block a fifth of
the masked count). As in SimMIM, the encoder sees every patch, the hidden
ones as a learned mask token, and a linear head maps each patch token to the
target. The target is the patch's HOG (Sec. 3, "Histograms of Oriented
Gradients"), the loss the MSE on masked patches (Eq. 1).

HOG as `HOGLayerC` in facebookresearch/SlowFast's `slowfast/models/
operators.py` computes it, on the normalized input:
- per channel, Sobel gradients gx, gy (kernel [[1,0,-1],[2,0,-2],[1,0,-1]]
  and its transpose) with reflect padding;
- each pixel votes its magnitude into one of 9 unsigned orientation bins,
  floor(atan2(gx, gy) / pi * 9) mod 9;
- votes are summed per `cell` x `cell` cell, and each cell's 9 bins are
  L2-normalized.
A patch's target is its cells' histograms, ordered (channel, bin, cell row,
cell column): 2 x 2 cells x 9 bins x 3 channels = 108 numbers for a 16 px
RGB patch with 8 px cells (`_get_hog_label_2d` in `slowfast/models/
masked.py`).

`task.target="pixels"` is the paper's "pixel colors" target of Table 1 (the
RGB values after the dataset mean/std normalization, MSE), the baseline HOG
is claimed to beat; "hog" is the default.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maskmodel import masking
from maskmodel.config import ConfigError
from maskmodel import models
from maskmodel.models import build
from maskmodel.models.patches import patchify
from maskmodel.tasks.base import EncoderTask
from maskmodel.tasks.mae import masked_mse
from maskmodel.tasks.simmim import MaskTokenModel

NBINS = 9
TARGETS = ("hog", "pixels")
SOBEL_X = np.array([[1., 0., -1.], [2., 0., -2.], [1., 0., -1.]])


def _cross_correlate(images, kernel):
  """Depthwise 3x3 cross-correlation (a torch conv2d), [B, H+2, W+2, C] ->
  [B, H, W, C]."""
  h, w = images.shape[1] - 2, images.shape[2] - 2
  return sum(float(kernel[u, v]) * images[:, u:u + h, v:v + w]
             for u in range(3) for v in range(3) if kernel[u, v] != 0)


def hog(images, cell: int):
  """HOG histograms per cell: [B, H, W, C] -> [B, H/cell, W/cell, C, 9]."""
  b, h, w, c = images.shape
  x = jnp.pad(images.astype(jnp.float32), ((0, 0), (1, 1), (1, 1), (0, 0)),
              mode="reflect")
  gx = _cross_correlate(x, SOBEL_X)
  gy = _cross_correlate(x, SOBEL_X.T)
  magnitude = jnp.sqrt(gx**2 + gy**2)
  bins = jnp.floor(jnp.arctan2(gx, gy) / jnp.pi * NBINS).astype(jnp.int32) % NBINS
  votes = jax.nn.one_hot(bins, NBINS) * magnitude[..., None]  # [B, H, W, C, 9]
  votes = votes.reshape(b, h // cell, cell, w // cell, cell, c, NBINS)
  hist = votes.sum(axis=(2, 4))
  norm = jnp.sqrt((hist**2).sum(axis=-1, keepdims=True))
  return hist / jnp.maximum(norm, 1e-12)  # torch.nn.functional.normalize


def hog_targets(images, patch_size: int, cell: int):
  """Each patch's HOG, [B, N, C * 9 * (patch/cell)^2], in the official order
  (channel, bin, cell row, cell column)."""
  hist = hog(images, cell)
  b, hc, wc, c, _ = hist.shape
  u = patch_size // cell
  hist = hist.reshape(b, hc // u, u, wc // u, u, c, NBINS)
  hist = jnp.einsum("bgiwjcn->bgwcnij", hist)
  return hist.reshape(b, (hc // u) * (wc // u), c * NBINS * u * u)


class MaskFeatTask(EncoderTask):
  """Task contract: `init`, `loss`, plus `features`."""

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    self.grid = build.grid(config)
    if t.hog_cell <= 0 or m.patch_size % t.hog_cell:
      raise ConfigError(f"task.hog_cell={t.hog_cell} does not divide "
                        f"model.patch_size={m.patch_size}; MaskFeat uses half "
                        "the patch size (8 px cells on 16 px patches).")
    self.cell = t.hog_cell
    self.target_name = t.get("target", "hog")
    if self.target_name not in TARGETS:
      raise ConfigError(f"task.target={self.target_name!r} is unknown; use one "
                        f"of {TARGETS} (HOG, or the normalized pixels).")
    n = self.grid[0] * self.grid[1]
    self.num_hidden = masking.num_hidden_blocks(n, t.mask_ratio)
    if self.target_name == "hog":
      out_dim = config.data.channels * NBINS * (m.patch_size // t.hog_cell)**2
    else:
      out_dim = config.data.channels * m.patch_size**2
    self.encoder = models.get_model(m.name).build(
        build.with_token_reduction(m, "none"))
    self.model = MaskTokenModel(encoder=self.encoder, out_dim=out_dim)

  def mask_policy(self, rng, batch_size):
    return masking.block_mask(rng, batch_size, self.grid,
                              num_hidden=self.num_hidden,
                              min_patches=self.num_hidden // 5)

  def init(self, rng, batch):
    images = batch["image"]
    mask = jnp.zeros((images.shape[0], self.grid[0] * self.grid[1]))
    return self.model.init(rng, images, mask)["params"], {}

  def loss(self, params, state, batch, rng, step):
    del step
    images = batch["image"]
    mask = self.mask_policy(rng, images.shape[0]).mask
    pred = self.model.apply({"params": params}, images, mask)
    p = self.config.model.patch_size
    target = (hog_targets(images, p, self.cell) if self.target_name == "hog"
              else patchify(images, p))
    loss = masked_mse(pred, target, mask)
    return loss, ({"loss": loss}, state)
