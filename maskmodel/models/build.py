"""Builds models from `config.model` and checks the geometry they need."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.config import ConfigError
from maskmodel.models.vit import ViT

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype(model_config):
  if model_config.dtype not in DTYPES:
    raise ConfigError(f"model.dtype={model_config.dtype!r} is unknown; use one "
                      f"of {sorted(DTYPES)}.")
  return DTYPES[model_config.dtype]


def grid(config) -> tuple[int, int]:
  """The patch grid; image size must be a multiple of the patch size."""
  size, p = config.data.image_size, config.model.patch_size
  if p <= 0 or size % p:
    raise ConfigError(
        f"data.image_size={size} is not divisible by model.patch_size={p}; "
        f"use an image size that is a multiple of {p} (e.g. {max(p, size // p * p)}).")
  return size // p, size // p


def vit(model_config, num_classes: int = 0) -> ViT:
  m = model_config
  if m.width % m.num_heads:
    raise ConfigError(f"model.width={m.width} is not divisible by "
                      f"model.num_heads={m.num_heads}.")
  if m.pool not in ("cls", "gap"):
    raise ConfigError(f"model.pool={m.pool!r} is unknown; use 'cls' or 'gap'.")
  return ViT(patch_size=m.patch_size, width=m.width, depth=m.depth,
             num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
             num_classes=num_classes, pool=m.pool, attn_impl=m.attn_impl,
             dtype=dtype(m))


def vit_layer_ids(params, depth: int):
  """Layer index per ViT parameter, for layer-wise lr decay (BEiT, Sec. 2.4).

  Embeddings are layer 0, `block_i` is layer i+1, the rest (final norm,
  head) is layer depth+1.
  """
  def layer(path, _):
    names = [getattr(k, "key", str(k)) for k in path]
    if names[0] in ("patch_embed", "cls_token"):
      return 0
    for n in names:
      if n.startswith("block_"):
        return int(n.split("_")[1]) + 1
    return depth + 1
  return jax.tree_util.tree_map_with_path(layer, params)
