"""I-JEPA's multi-block masks (Assran et al. 2023, Sec. 3 and Fig. 4): one
large context block and several target blocks, the targets removed from the
context.

The official sampler is `MaskCollator` in facebookresearch/ijepa
`src/masks/multiblock.py`. Per batch, one uniform draw u sets a block's
scale s = s0 + u (s1 - s0) and aspect a = a0 + u (a1 - a0) together, so the
two are correlated; `max_keep = int(N s)`, h = round(sqrt(max_keep a)), w =
round(sqrt(max_keep / a)), each lowered to at most the grid side minus one.
The target size is drawn first, then the context size (aspect 1). Per
sample: each target block at a uniform top-left corner in [0, H - h) x [0,
W - w) (the official `randint` excludes the last row and column); then the
context block at a uniform corner, kept only where no target lies. A
context with at most `min_keep` patches is drawn again; after 20 failures
in a row the last target stops constraining it (and so on, one more target
per 20 failures). Each mask is the list of its patch indices in row-major
order, and every mask of a collated batch is truncated to the batch's
shortest (the targets of a batch all have h w patches; the contexts
differ).

Static shapes: the index lists here have a static length, the largest block
the config can draw (`max_block_area`), and a validity mask marks the
entries the official lists would hold, so the sampler and the truncation
are emulated exactly rather than replaced by fixed counts. The model masks
the padding out of attention and the loss (`context_length` may set a
shorter static length for the contexts). The official truncation runs
per collator call, which is one GPU's batch (128 in the released configs);
`group_size` sets that group (default: the whole batch).

The block sizes come from a table of the step function u -> (h, w), made on
the host with every breakpoint (`block_size_table`), so the device draws
exactly the official sizes and never one larger than the static bound.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from maskmodel.config import ConfigError
from maskmodel.masking.random import mask_from_scores

RETRIES = 20  # failed context draws before one target constraint is dropped


class MultiBlockMasks(NamedTuple):
  """Index lists with a static length and the entries that are real.

  context:        [B, Kc] int32 patch indices of the context, ascending.
  context_valid:  [B, Kc] bool; True for the first `c` entries, c the
                  smallest context of the sample's group.
  targets:        [M, B, Kt] int32 patch indices of each target block.
  targets_valid:  [M, B, Kt] bool; True for the first h w entries.
  """
  context: jax.Array
  context_valid: jax.Array
  targets: jax.Array
  targets_valid: jax.Array


def official_block_size(u: float, grid, scale, aspect) -> tuple[int, int]:
  """`MaskCollator._sample_block_size` for the uniform draw `u`, in float64."""
  height, width = grid
  s = scale[0] + u * (scale[1] - scale[0])
  max_keep = int(height * width * s)
  a = aspect[0] + u * (aspect[1] - aspect[0])
  h = int(round(math.sqrt(max_keep * a)))
  w = int(round(math.sqrt(max_keep / a)))
  return min(h, height - 1), min(w, width - 1)


@functools.lru_cache(maxsize=None)
def _table(grid, scale, aspect):
  n = grid[0] * grid[1]
  ds, da = scale[1] - scale[0], aspect[1] - aspect[0]
  cuts = [0.0, 1.0]
  if ds > 0:
    cuts += [(k / n - scale[0]) / ds for k in range(n + 1)]
  keeps = range(int(n * scale[0]), int(n * scale[1]) + 1)  # max_keep's values
  if da > 0:
    side = max(grid) + 2
    for k in keeps:
      for j in range(side):
        half = (j + 0.5) ** 2
        if k > 0:
          cuts.append((half / k - aspect[0]) / da)   # h's round() flips
        cuts.append((k / half - aspect[0]) / da)     # w's round() flips
  cuts = np.unique(np.clip(cuts, 0.0, 1.0))
  mids = (cuts[:-1] + cuts[1:]) / 2
  sizes = np.asarray([official_block_size(u, grid, scale, aspect) for u in mids],
                     np.int32)
  # Merge equal neighbours: the edges where the size actually changes.
  change = np.flatnonzero(np.any(sizes[1:] != sizes[:-1], axis=1))
  return cuts[1:-1][change], sizes[np.concatenate([change, [len(sizes) - 1]])]


def block_size_table(grid, scale, aspect):
  """The official u -> (h, w) as a step function: `(edges, sizes)`, where
  `sizes[i]` is the size for u in [edges[i-1], edges[i]) (with edges[-1] =
  0 and edges[len] = 1). Exact: every u at which the official int() or
  round() can change is a breakpoint, and the size is evaluated between
  consecutive ones."""
  return _table(tuple(int(g) for g in grid), tuple(float(x) for x in scale),
                tuple(float(x) for x in aspect))


def max_block_area(grid, scale, aspect) -> int:
  """The largest h w the official sampler can draw: the static length of
  the index lists."""
  _, sizes = block_size_table(grid, scale, aspect)
  return int((sizes[:, 0] * sizes[:, 1]).max())


def check_config(grid, *, target_scale, target_aspect, context_scale,
                 min_keep: int, num_targets: int):
  """One-line errors for settings the official sampler cannot draw from
  (its retry loop would never end)."""
  for name, (lo, hi) in (("target_scale", target_scale),
                         ("target_aspect", target_aspect),
                         ("context_scale", context_scale)):
    if not 0 < lo <= hi:
      raise ConfigError(f"task.{name}=({lo}, {hi}) must satisfy 0 < min <= max.")
  if target_scale[1] > 1 or context_scale[1] > 1:
    raise ConfigError("task.target_scale and task.context_scale are fractions "
                      "of the image and must be <= 1.")
  if num_targets < 1:
    raise ConfigError(f"task.num_targets={num_targets} must be >= 1 (I-JEPA: 4).")
  if min(grid) < 2:
    raise ConfigError(f"the {grid[0]}x{grid[1]} patch grid is too small for "
                      "block masks; use a smaller model.patch_size.")
  for name, scale, aspect in (("target", target_scale, target_aspect),
                              ("context", context_scale, (1.0, 1.0))):
    _, sizes = block_size_table(grid, scale, aspect)
    smallest = int((sizes[:, 0] * sizes[:, 1]).min())
    if smallest <= min_keep:
      raise ConfigError(
          f"a {name} block can have {smallest} patches on the {grid[0]}x"
          f"{grid[1]} grid, not more than task.min_keep={min_keep}, and the "
          f"official sampler would redraw it forever; lower task.min_keep or "
          f"raise task.{name}_scale.")


def _sample_size(rng, grid, scale, aspect):
  edges, sizes = block_size_table(grid, scale, aspect)
  u = jax.random.uniform(rng)
  i = jnp.searchsorted(jnp.asarray(edges, jnp.float32), u, side="right")
  return jnp.asarray(sizes)[i]


def _rectangle(rng, grid, size):
  """One block of `size` at a uniform corner in [0, H - h) x [0, W - w)."""
  height, width = grid
  k_top, k_left = jax.random.split(rng)
  top = jax.random.randint(k_top, (), 0, height - size[0])
  left = jax.random.randint(k_left, (), 0, width - size[1])
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return ((rows >= top) & (rows < top + size[0])
          & (cols >= left) & (cols < left + size[1])).reshape(-1)


def _context_block(rng, grid, size, targets, min_keep, allow_overlap):
  """The official context draw for one sample: a block, minus the targets
  still constraining it; redrawn until it holds more than `min_keep`
  patches, one target constraint fewer after every `RETRIES` failures."""
  num_targets = targets.shape[0]
  outside = ~targets  # [M, N]

  def attempt(state):
    rng, tries, timeout, _, _ = state
    rng, k = jax.random.split(rng)
    block = _rectangle(k, grid, size)
    if not allow_overlap:
      active = jnp.arange(num_targets)[:, None] < num_targets - tries
      block = block & jnp.all(outside | ~active, axis=0)
    ok = block.sum() > min_keep
    timeout = jnp.where(ok, timeout, timeout - 1)
    tries = jnp.where(timeout == 0, tries + 1, tries)
    timeout = jnp.where(timeout == 0, RETRIES, timeout)
    return rng, tries, timeout, ok, block

  init = (rng, jnp.int32(0), jnp.int32(RETRIES), jnp.array(False),
          jnp.zeros(grid[0] * grid[1], bool))
  *_, block = jax.lax.while_loop(lambda s: ~s[3], attempt, init)
  return block


def _index_lists(masks, length):
  """[R, N] bool -> ([R, length] row-major indices of the True entries
  first, [R] counts)."""
  n = masks.shape[-1]
  order = jnp.arange(n, dtype=jnp.float32)
  scores = jnp.where(masks, order, n + order)
  return mask_from_scores(scores, length).ids_keep, masks.sum(axis=-1)


def context_list_length(grid, context_scale, context_length=None) -> int:
  """The static length of the context lists: the largest context block, or
  `context_length` when that is shorter."""
  longest = max_block_area(grid, context_scale, (1.0, 1.0))
  if context_length is None:
    return longest
  if context_length < 1:
    raise ConfigError(f"task.context_length={context_length} must be >= 1 "
                      "(0 in a config: the largest context block).")
  return min(longest, int(context_length))


def placeholder_masks(batch_size: int, grid: tuple[int, int], *,
                      num_targets: int = 4, target_scale=(0.15, 0.2),
                      target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0),
                      context_length: int | None = None,
                      **unused) -> MultiBlockMasks:
  """Masks of `multiblock_mask`'s shapes, all entries patch 0 and valid:
  for initializing a model without tracing the sampler."""
  del unused
  kt = max_block_area(grid, target_scale, target_aspect)
  kc = context_list_length(grid, context_scale, context_length)
  return MultiBlockMasks(
      jnp.zeros((batch_size, kc), jnp.int32), jnp.ones((batch_size, kc), bool),
      jnp.zeros((num_targets, batch_size, kt), jnp.int32),
      jnp.ones((num_targets, batch_size, kt), bool))


def multiblock_mask(rng, batch_size: int, grid: tuple[int, int], *,
                    num_targets: int = 4, target_scale=(0.15, 0.2),
                    target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0),
                    min_keep: int = 10, allow_overlap: bool = False,
                    group_size: int | None = None,
                    context_length: int | None = None) -> MultiBlockMasks:
  """I-JEPA's masks for a batch (the official defaults of
  `configs/in1k_vith14_ep300.yaml`: 4 targets at scale 0.15-0.2 and aspect
  0.75-1.5, one context at scale 0.85-1.0 and aspect 1, min_keep 10).

  `group_size`: the samples that share one truncation of the contexts (the
  official collator's batch); must divide `batch_size`. None: the batch.
  `context_length`: a static length for the context lists shorter than the
  largest context block, to save the context encoder's work on padding; a
  group whose shortest context is longer is cut to it (a further cut than
  the official one, in the same row-major order). None: no such cut.
  """
  group = batch_size if group_size is None else group_size
  if group < 1 or batch_size % group:
    raise ConfigError(f"task.mask_group_size={group_size} must divide the "
                      f"batch of {batch_size} (the official collator's batch, "
                      "128 per GPU).")
  k_target_size, k_context_size, k_targets, k_context = jax.random.split(rng, 4)
  t_size = _sample_size(k_target_size, grid, target_scale, target_aspect)
  c_size = _sample_size(k_context_size, grid, context_scale, (1.0, 1.0))
  n = grid[0] * grid[1]

  keys = jax.random.split(k_targets, batch_size * num_targets)
  targets = jax.vmap(lambda k: _rectangle(k, grid, t_size))(keys)
  targets = targets.reshape(batch_size, num_targets, n)
  context = jax.vmap(lambda k, t: _context_block(
      k, grid, c_size, t, min_keep, allow_overlap))(
          jax.random.split(k_context, batch_size), targets)

  kt = max_block_area(grid, target_scale, target_aspect)
  kc = context_list_length(grid, context_scale, context_length)
  target_ids, _ = _index_lists(
      jnp.swapaxes(targets, 0, 1).reshape(num_targets * batch_size, n), kt)
  target_ids = target_ids.reshape(num_targets, batch_size, kt)
  target_valid = jnp.arange(kt) < t_size[0] * t_size[1]
  target_valid = jnp.broadcast_to(target_valid, target_ids.shape)

  context_ids, counts = _index_lists(context, kc)
  shortest = counts.reshape(batch_size // group, group).min(axis=1)
  shortest = jnp.repeat(shortest, group)
  context_valid = jnp.arange(kc)[None, :] < shortest[:, None]
  return MultiBlockMasks(context_ids.astype(jnp.int32), context_valid,
                         target_ids.astype(jnp.int32), target_valid)
