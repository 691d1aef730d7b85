"""Patch layout and fixed position embeddings, as in the MAE reference code."""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp


def patchify(images, patch_size: int):
  """[B, H, W, C] -> [B, N, p*p*C]; each patch flattened as (p, p, C), row-major."""
  b, h, w, c = images.shape
  p = patch_size
  x = images.reshape(b, h // p, p, w // p, p, c)
  x = jnp.einsum("nhpwqc->nhwpqc", x)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches, patch_size: int, grid: tuple[int, int], channels: int):
  """Inverse of `patchify`: [B, N, p*p*C] -> [B, H, W, C]."""
  b = patches.shape[0]
  gh, gw = grid
  p = patch_size
  x = patches.reshape(b, gh, gw, p, p, channels)
  x = jnp.einsum("nhwpqc->nhpwqc", x)
  return x.reshape(b, gh * p, gw * p, channels)


def reconstruction_images(images, pred, mask, patch_size: int):
  """What a reconstruction evaluator shows, as images [B, H, W, C]: the
  input, the input with hidden patches blanked, and the prediction pasted
  into the hidden patches; plus `mask` [B, H, W, 1], 1 on hidden pixels.

  pred: [B, N, p*p*C] pixels; mask: [B, N], 1 = hidden.
  """
  b, h, w, c = images.shape
  p = patch_size
  grid = (h // p, w // p)
  target = patchify(images, p)
  m = mask[..., None].astype(target.dtype)
  hidden = jnp.broadcast_to(m, target.shape[:-1] + (p * p,))
  return {"original": images,
          "masked": unpatchify(target * (1 - m), p, grid, c),
          "reconstruction": unpatchify(pred * m + target * (1 - m), p, grid, c),
          "mask": unpatchify(hidden, p, grid, 1)}


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
  omega = 1.0 / 10000**omega
  out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d_posemb(dim: int, grid: tuple[int, int], class_token: bool = False):
  """Fixed 2D sin-cos embedding `[N(+1), dim]` (MAE `get_2d_sincos_pos_embed`).

  The first half of the channels encodes the column (w) coordinate and the
  second half the row (h) coordinate; a class token gets an all-zero row.
  """
  if dim % 4:
    raise ValueError(f"sin-cos position embedding needs width % 4 == 0, got {dim}.")
  gh, gw = grid
  grid_w, grid_h = np.meshgrid(np.arange(gw, dtype=np.float64),
                               np.arange(gh, dtype=np.float64))
  emb = np.concatenate([_sincos_1d(dim // 2, grid_w), _sincos_1d(dim // 2, grid_h)],
                       axis=1)
  if class_token:
    emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
  return emb.astype(np.float32)
