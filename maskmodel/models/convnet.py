"""A small ConvNeXt (Liu et al. 2022) that can also run sparsely, as SparK's
encoder does (Tian et al. 2023, Sec. 3.1).

Stages of ConvNeXt blocks (7x7 depthwise conv, LayerNorm, a 4x MLP, layer
scale, residual), separated by LayerNorm + 2x2 stride-2 convs; the stem is a
`stem` x `stem` conv of that stride plus LayerNorm. `__call__` returns every
stage's feature map (finest first), the pooled feature (LayerNorm of the
global mean of the last map, as ConvNeXt's head) and, with `num_classes`,
logits.

Sparse mode (`active`: [B, h, w] bool on the last stage's grid) emulates
sparse convolution densely, as SparK's `pretrain/encoder.py` does for
ConvNeXt: after every convolution, every LayerNorm and every block's branch,
the map is multiplied by `active` upsampled to its resolution. Inactive
positions therefore hold exact zeros, whatever the input had there, and
LayerNorm statistics (per position) come from active positions only.

Registered in the model registry as "convnet" (`model.widths`,
`model.depths`, `model.stem`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskmodel.config import ConfigError
from maskmodel.models import registry
from maskmodel.models.norm import LayerNorm
from maskmodel.models.vit import gelu

Dtype = Any
conv_init = nn.initializers.truncated_normal(stddev=0.02)


def upsample_mask(active, size):
  """[B, h, w] -> [B, size, size, 1] float, each cell repeated."""
  r = size // active.shape[1]
  up = jnp.repeat(jnp.repeat(active, r, axis=1), r, axis=2)
  return up[..., None].astype(jnp.float32)


class ConvNeXtBlock(nn.Module):
  width: int
  layer_scale: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, keep):
    y = nn.Conv(self.width, (7, 7), padding=3, feature_group_count=self.width,
                kernel_init=conv_init, dtype=self.dtype, name="dwconv")(x) * keep
    y = LayerNorm(epsilon=1e-6, name="norm")(y) * keep
    y = gelu(nn.Dense(4 * self.width, kernel_init=conv_init, dtype=self.dtype,
                      name="pwconv1")(y))
    y = nn.Dense(self.width, kernel_init=conv_init, dtype=self.dtype,
                 name="pwconv2")(y)
    gamma = self.param("gamma", nn.initializers.constant(self.layer_scale),
                       (self.width,))
    return x + (gamma * y) * keep


class ConvNet(nn.Module):
  """Images [B, H, W, C] -> {"features": [maps], "pooled", "logits"?}."""
  widths: Sequence[int]
  depths: Sequence[int]
  stem: int = 2
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  @property
  def downsample(self) -> int:
    """The last stage's stride: its grid is the image size over this."""
    return self.stem * 2 ** (len(self.widths) - 1)

  @nn.compact
  def __call__(self, images, active: Optional[jax.Array] = None):
    keep = lambda x: 1.0 if active is None else upsample_mask(active, x.shape[1])
    x = images.astype(self.dtype)
    if active is not None:
      x = x * keep(x)
    features = []
    for stage, (width, depth) in enumerate(zip(self.widths, self.depths)):
      k = self.stem if stage == 0 else 2
      if stage:
        x = LayerNorm(epsilon=1e-6, name=f"down_norm_{stage}")(x) * keep(x)
      x = nn.Conv(width, (k, k), strides=(k, k), kernel_init=conv_init,
                  dtype=self.dtype, name=f"down_{stage}")(x)
      x = x * keep(x)
      if stage == 0:
        x = LayerNorm(epsilon=1e-6, name="stem_norm")(x) * keep(x)
      for i in range(depth):
        x = ConvNeXtBlock(width, dtype=self.dtype,
                          name=f"stage_{stage}_block_{i}")(x, keep(x))
      features.append(x)
    pooled = LayerNorm(epsilon=1e-6, name="norm")(x.mean(axis=(1, 2)))
    out = {"features": features, "pooled": pooled}
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                               name="head")(pooled)
    return out


def convnet(model_config, *, num_classes=0, num_tokens=None) -> ConvNet:
  del num_tokens  # no tokens
  m = model_config
  missing = [k for k in ("widths", "depths", "stem") if k not in m]
  if missing:
    raise ConfigError(f"model.name='convnet' needs model.{', model.'.join(missing)}"
                      " (widths and block counts per stage, the stem's stride); "
                      "start from configs/spark/mnist_convnet_tiny.py.")
  if len(m.widths) != len(m.depths) or not m.widths:
    raise ConfigError(f"model.widths={tuple(m.widths)} and model.depths="
                      f"{tuple(m.depths)} must be non-empty and of one length "
                      "(one width and one block count per stage).")
  from maskmodel.models import build  # pylint: disable=g-import-not-at-top
  return ConvNet(widths=tuple(m.widths), depths=tuple(m.depths), stem=m.stem,
                 num_classes=num_classes, dtype=build.dtype(m))


def describe(config):
  m = config.model
  return (f"- model: ConvNeXt-style convnet, widths {tuple(m.widths)}, depths "
          f"{tuple(m.depths)}, stem {m.stem}, image {config.data.image_size}")


registry.register("convnet", build=convnet, num_tokens=lambda config: None,
                  describe=describe)
