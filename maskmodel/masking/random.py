"""Random masks: MAE's per patch (He et al. 2021, Sec. 3 "Masking") and
SimMIM's per coarse cell (Xie et al. 2022, Sec. 3.1 "Masking strategy")."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from maskmodel.config import ConfigError


class Mask(NamedTuple):
  """A mask with MAE semantics.

  mask:        [B, N] float, 1 = hidden (removed), 0 = visible.
  ids_keep:    [B, K] indices of the visible patches, in shuffled order.
  ids_restore: [B, N] permutation that undoes the shuffle (unshuffle index).
  """
  mask: jax.Array
  ids_keep: jax.Array
  ids_restore: jax.Array


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """Static number of visible patches, as MAE's `int(L * (1 - mask_ratio))`."""
  if not 0.0 < mask_ratio < 1.0:
    raise ConfigError(f"mask_ratio={mask_ratio} is outside (0, 1); "
                     "set e.g. --config.task.mask_ratio=0.75.")
  return max(1, int(num_patches * (1.0 - mask_ratio)))


def mask_from_scores(scores, keep: int) -> Mask:
  """Keeps the `keep` lowest-scoring patches of each row; the rest are hidden.

  Every policy that ranks patches (MAE's noise, HPM's predicted losses,
  ColorMAE's noise fields) builds its mask through this.
  """
  if scores.ndim != 2:
    raise ValueError(f"mask scores must be [B, N], got shape {scores.shape}.")
  b, n = scores.shape
  ids_shuffle = jnp.argsort(scores, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  mask = (jnp.arange(n)[None, :] >= keep).astype(jnp.float32)
  mask = jnp.take_along_axis(jnp.broadcast_to(mask, (b, n)), ids_restore, axis=1)
  return Mask(mask, ids_shuffle[:, :keep], ids_restore)


def random_mask(rng, batch_size: int, grid: tuple[int, int], *, keep: int) -> Mask:
  """Per-sample uniform noise, argsort, keep the first `keep` (MAE Sec. 3)."""
  noise = jax.random.uniform(rng, (batch_size, grid[0] * grid[1]))
  return mask_from_scores(noise, keep)


def num_kept_coarse(grid: tuple[int, int], cell: int, mask_ratio: float) -> int:
  """Patches left visible by `coarse_random_mask`: SimMIM hides
  `ceil(mask_ratio * cells)` cells of `cell` x `cell` patches
  (`MaskGenerator` in microsoft/SimMIM's `data/data_simmim.py`)."""
  gh, gw = grid
  if cell < 1 or gh % cell or gw % cell:
    raise ConfigError(f"the {gh}x{gw} patch grid is not divisible into mask "
                      f"cells of {cell}x{cell} patches; set task.mask_patch_size "
                      "to the patch size times a divisor of the grid.")
  if not 0.0 < mask_ratio < 1.0:
    raise ConfigError(f"mask_ratio={mask_ratio} is outside (0, 1); "
                      "set e.g. --config.task.mask_ratio=0.6.")
  cells = (gh // cell) * (gw // cell)
  hidden = math.ceil(mask_ratio * cells)
  if hidden >= cells:
    raise ConfigError(f"mask_ratio={mask_ratio} hides all {cells} mask cells; "
                      "lower it or use smaller task.mask_patch_size.")
  return (cells - hidden) * cell * cell


def coarse_random_mask(rng, batch_size: int, grid: tuple[int, int], *,
                       cell: int, keep: int) -> Mask:
  """SimMIM's mask: random cells of `cell` x `cell` patches are hidden, all
  or nothing, and the cell mask is upsampled to the patch grid. `keep` is
  `num_kept_coarse(grid, cell, mask_ratio)`."""
  gh, gw = grid
  ch, cw = gh // cell, gw // cell
  coarse = random_mask(rng, batch_size, (ch, cw), keep=keep // (cell * cell))
  hidden = coarse.mask.reshape(batch_size, ch, 1, cw, 1)
  hidden = jnp.broadcast_to(hidden, (batch_size, ch, cell, cw, cell))
  # A stable sort of the 0/1 mask keeps exactly its visible patches first.
  return mask_from_scores(hidden.reshape(batch_size, gh * gw), keep)
