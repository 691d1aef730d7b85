"""Block-wise masking (BEiT, Bao et al. 2022, Sec. 2.5 and Algorithm 1).

Rectangles are hidden one at a time until the target count is reached. Each
attempt draws an area U(min_patches, remaining) (capped at `max_patches`)
and a log-uniform aspect in [min_aspect, 1/min_aspect], rounds the sides,
and places the rectangle uniformly where it fits strictly inside the grid.
It is accepted when it hides at least one new patch and no more than remain;
ten failed attempts in a row stop the generator (`MaskingGenerator` in
microsoft/unilm's `beit/masking_generator.py`, copied by MaskFeat, CAE and
CCViT).

The official generator can stop short of the target. Shapes here are
static, so the count is made exact as BEiT v2's and CCViT's copies do: the
missing patches are hidden uniformly at random among the visible ones.

Everything runs on the device under `jit`, one `while_loop` per sample.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from maskmodel.config import ConfigError
from maskmodel.masking.random import Mask, mask_from_scores

MAX_FAILURES = 10  # attempts per rectangle before the generator gives up


def num_hidden_blocks(num_patches: int, mask_ratio: float) -> int:
  """MaskFeat's `round(num_patches * mask_ratio)` hidden patches."""
  if not 0.0 < mask_ratio < 1.0:
    raise ConfigError(f"mask_ratio={mask_ratio} is outside (0, 1); "
                      "set e.g. --config.task.mask_ratio=0.4.")
  return max(1, min(num_patches - 1, int(round(num_patches * mask_ratio))))


def _block_mask_one(rng, grid, num_hidden, min_patches, max_patches, min_aspect):
  """One sample's official block mask, [H, W] bool, and its count."""
  h_grid, w_grid = grid
  rows = jnp.arange(h_grid)[:, None]
  cols = jnp.arange(w_grid)[None, :]
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

  def attempt(state):
    mask, count, failures, rng = state
    rng, k_area, k_aspect, k_top, k_left = jax.random.split(rng, 5)
    remaining = jnp.minimum(num_hidden - count, max_patches).astype(jnp.float32)
    area = jax.random.uniform(k_area, minval=min_patches, maxval=remaining)
    aspect = jnp.exp(jax.random.uniform(k_aspect, minval=log_aspect[0],
                                        maxval=log_aspect[1]))
    # Python's round() and jnp.round() both round half to even.
    h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (w < w_grid) & (h < h_grid)
    top = jax.random.randint(k_top, (), 0, jnp.maximum(h_grid - h, 0) + 1)
    left = jax.random.randint(k_left, (), 0, jnp.maximum(w_grid - w, 0) + 1)
    rect = ((rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w))
    new = (rect & ~mask).sum()
    accept = fits & (new > 0) & (new <= remaining)
    mask = jnp.where(accept, mask | rect, mask)
    count = count + jnp.where(accept, new, 0)
    failures = jnp.where(accept, 0, failures + 1)
    return mask, count, failures, rng

  def running(state):
    _, count, failures, _ = state
    return (count < num_hidden) & (failures < MAX_FAILURES)

  init = (jnp.zeros(grid, bool), jnp.int32(0), jnp.int32(0), rng)
  mask, count, _, _ = jax.lax.while_loop(running, attempt, init)
  return mask, count


def official_block_mask(rng, batch_size, grid, *, num_hidden, min_patches,
                        max_patches=None, min_aspect=0.3):
  """The official generator's masks, [B, H*W] bool, before the count is made
  exact; their counts can fall short of `num_hidden`."""
  max_patches = num_hidden if max_patches is None else max_patches
  masks, _ = jax.vmap(lambda r: _block_mask_one(
      r, grid, num_hidden, min_patches, max_patches, min_aspect))(
          jax.random.split(rng, batch_size))
  return masks.reshape(batch_size, -1)


def block_mask(rng, batch_size: int, grid: tuple[int, int], *, num_hidden: int,
               min_patches: int, max_patches=None, min_aspect: float = 0.3) -> Mask:
  """BEiT's block-wise mask with exactly `num_hidden` hidden patches.

  min_patches: the smallest rectangle's area (BEiT: 16; MaskFeat:
    num_hidden // 5). max_patches: the largest (default num_hidden).
  """
  k_blocks, k_fill = jax.random.split(rng)
  blocks = official_block_mask(k_blocks, batch_size, grid, num_hidden=num_hidden,
                               min_patches=min_patches, max_patches=max_patches,
                               min_aspect=min_aspect)
  # Hidden: the blocks first (score 2), then the highest-noise visible
  # patches until the count is exact.
  noise = jax.random.uniform(k_fill, blocks.shape)
  scores = jnp.where(blocks, 2.0, noise)
  return mask_from_scores(scores, blocks.shape[1] - num_hidden)
