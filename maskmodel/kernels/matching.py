"""Token matching: the core of ToMe's bipartite soft matching.

ToMe's bipartite soft matching (Bolya et al., 2023) splits the tokens
into two sets A and B, and draws one edge from every A token to its most
similar B token (cosine similarity of the attention keys). This module finds
those edges: for each row of A `[B, Na, C]` the best row of B `[B, Nb, C]`
by dot product of pre-normalized metrics.

The Pallas kernel never builds the `[Na, Nb]` similarity matrix: each program
owns a tile of A rows and streams B in tiles, keeping a running (max, argmax)
per row. Ties go to the smallest B index, as with `jnp.argmax`.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from maskmodel.kernels.dispatch import by_platform, triton_target

_NT = (((1,), (1,)), ((), ()))


def token_matching_reference(a, b, *, class_token=False):
  """Returns (node_max [B, Na] f32, node_idx [B, Na] int32).

  With `class_token`, A's row 0 (the [CLS] token) scores -inf so it is never
  chosen for merging, as in ToMe's `bipartite_soft_matching`. Scores use full
  f32 precision (no TF32/bf16 passes), so near-ties resolve the same way on
  every backend and in the kernel.
  """
  scores = jnp.einsum("bac,bnc->ban", a, b, precision=lax.Precision.HIGHEST,
                      preferred_element_type=jnp.float32)
  node_max = scores.max(axis=-1)
  node_idx = scores.argmax(axis=-1).astype(jnp.int32)
  if class_token:
    node_max = node_max.at[:, 0].set(-jnp.inf)
  return node_max, node_idx


@dataclasses.dataclass(frozen=True)
class MatchingBlocks:
  """Rows of A per program, rows of B per loop step."""
  block_a: int
  block_b: int


# Starting points, not tuned on hardware. On TPU the B tile is the lane axis
# of the score tile (multiple of 128); on GPU tiles are powers of two >= 16.
DEFAULT_MATCHING_BLOCKS = {
    "triton": MatchingBlocks(block_a=64, block_b=64),
    "mosaic": MatchingBlocks(block_a=128, block_b=128),
}


def _matching_kernel(a_ref, b_ref, max_ref, idx_ref, *, nb: int,
                     block_b: int, precision):
  """Running (max, first argmax) over B tiles for one tile of A rows."""
  a = a_ref[...]
  block_a = a.shape[0]
  num_b_blocks = b_ref.shape[0] // block_b

  def body(j, carry):
    best, best_idx = carry
    start = pl.multiple_of(j * block_b, block_b)
    s = lax.dot_general(a, b_ref[pl.ds(start, block_b), :], _NT,
                        precision=precision,
                        preferred_element_type=jnp.float32)
    cols = start + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    if b_ref.shape[0] != nb:  # Padded B rows can never win.
      s = jnp.where(cols < nb, s, -jnp.inf)
    tile_max = s.max(axis=1, keepdims=True)
    # First column attaining the max; f32 indices are exact below 2**24 and
    # keep the reduction in the float unit on every backend.
    tile_idx = jnp.where(s == tile_max, cols.astype(jnp.float32),
                         jnp.inf).min(axis=1, keepdims=True)
    # Strictly greater: on ties the earlier tile, hence the lower index, wins.
    better = tile_max > best
    return (jnp.where(better, tile_max, best),
            jnp.where(better, tile_idx, best_idx))

  init = (jnp.full((block_a, 1), -jnp.inf, jnp.float32),
          jnp.zeros((block_a, 1), jnp.float32))
  best, best_idx = lax.fori_loop(0, num_b_blocks, body, init)
  max_ref[...] = best
  idx_ref[...] = best_idx.astype(jnp.int32)


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def triton_matching_tuning(arch: str | None, dtype,
                           dim: int) -> tuple[MatchingBlocks, int]:
  """(tiles, warps) of the Triton matching kernel for `arch` (see
  `flash_attention.triton_tuning`), `dtype` and the padded metric dim.

  f32 runs its dot at full precision (several TF32 passes), which with
  64 x 64 tiles and 4 warps spilled 0.4-0.9 KB per thread at C = 64 on
  every arch (ptxas; `maskmodel/kernels/README.md`); 32-row B tiles over 8
  warps do not spill. The same holds on every arch checked.
  """
  del arch
  if jnp.dtype(dtype) == jnp.float32:
    # At C = 128, 32 x 32 tiles: 112 bytes of spills, against 200 for
    # 64 x 32 and 5-7 KB for 64 x 64.
    return MatchingBlocks(block_a=64 if dim <= 64 else 32, block_b=32), 8
  return DEFAULT_MATCHING_BLOCKS["triton"], 4


def token_matching_pallas(a, b, *, backend="triton", interpret=False,
                          blocks=None, num_warps=None):
  """Pallas (max, argmax) of `a @ b^T` per A row; returns `[B, Na]` f32, i32.

  On GPU, `blocks` and `num_warps` default to the configuration for the
  arch that `dispatch.triton_target()` names.
  """
  if backend == "triton" and (blocks is None or num_warps is None):
    tuned_blocks, tuned_warps = triton_matching_tuning(
        triton_target(), a.dtype, max(16, pl.next_power_of_2(a.shape[-1])))
    blocks = blocks or tuned_blocks
    num_warps = num_warps or tuned_warps
  return _token_matching_pallas(a, b, backend=backend, interpret=interpret,
                                blocks=blocks, num_warps=num_warps)


@functools.partial(jax.jit, static_argnames=("backend", "interpret",
                                             "blocks", "num_warps"))
def _token_matching_pallas(a, b, *, backend, interpret, blocks, num_warps):
  if backend not in DEFAULT_MATCHING_BLOCKS:
    raise ValueError(f"backend={backend!r}; use 'triton' or 'mosaic'.")
  batch, na, dim = a.shape
  nb = b.shape[1]
  if b.shape != (batch, nb, dim):
    raise ValueError(f"a {a.shape} and b {b.shape} must be [B, Na, C] and "
                     "[B, Nb, C].")
  blocks = blocks or DEFAULT_MATCHING_BLOCKS[backend]
  block_a, block_b = blocks.block_a, blocks.block_b
  if backend == "triton":  # Power-of-two tiles, at least 16 for `dot`.
    block_a = min(block_a, max(16, pl.next_power_of_2(na)))
    block_b = min(block_b, max(16, pl.next_power_of_2(nb)))
    dim_pad = max(16, pl.next_power_of_2(dim))
  else:
    block_a = min(block_a, _round_up(na, 8))
    dim_pad = dim
  na_pad, nb_pad = _round_up(na, block_a), _round_up(nb, block_b)
  # Zero columns change no dot product.
  a = jnp.pad(a, ((0, 0), (0, na_pad - na), (0, dim_pad - dim)))
  b = jnp.pad(b, ((0, 0), (0, nb_pad - nb), (0, dim_pad - dim)))

  # Full f32 precision, as in the reference: a TF32 matmul could flip the
  # argmax between near-equal candidates.
  precision = (lax.Precision.HIGHEST if a.dtype == jnp.float32
               else lax.Precision.DEFAULT)
  compiler_params = None
  if not interpret and backend == "triton":
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
    compiler_params = plgpu.CompilerParams(num_warps=num_warps, num_stages=2)
  elif not interpret:
    from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
    compiler_params = pltpu.CompilerParams(
        dimension_semantics=("parallel", "parallel"))

  column = jax.ShapeDtypeStruct((batch, na_pad, 1), jnp.float32)
  node_max, node_idx = pl.pallas_call(
      functools.partial(_matching_kernel, nb=nb, block_b=block_b,
                        precision=precision),
      grid=(batch, na_pad // block_a),
      in_specs=[pl.BlockSpec((None, block_a, dim_pad), lambda i, j: (i, j, 0)),
                pl.BlockSpec((None, nb_pad, dim_pad), lambda i, j: (i, 0, 0))],
      out_specs=[pl.BlockSpec((None, block_a, 1), lambda i, j: (i, j, 0)),
                 pl.BlockSpec((None, block_a, 1), lambda i, j: (i, j, 0))],
      out_shape=[column, jax.ShapeDtypeStruct(column.shape, jnp.int32)],
      compiler_params=compiler_params,
      interpret=interpret,
      name="token_matching",
  )(a, b)
  return node_max[:, :na, 0], node_idx[:, :na, 0]


def token_matching(a, b, *, class_token=False, impl="auto"):
  """Best B match for each A row; `impl` in auto|xla|pallas|interpret.

  Args:
    a: `[B, Na, C]` and b: `[B, Nb, C]`, L2-normalized metrics (any float).
    class_token: A's row 0 is [CLS]; its score is set to -inf.
    impl: `xla` (jnp reference), `pallas` (kernel compiled for GPU/TPU),
      `interpret` (same kernel, Pallas interpreter), `auto` (`pallas` on the
      platforms in `dispatch.VALIDATED_PLATFORMS["token_matching"]`, `xla`
      elsewhere).

  Returns:
    node_max `[B, Na]` f32 and node_idx `[B, Na]` int32 (first index on ties).
  """
  node_max, node_idx = by_platform(
      "token_matching", impl, (a, b), kernel=token_matching_pallas,
      xla={None: token_matching_reference})
  if class_token:
    node_max = node_max.at[:, 0].set(-jnp.inf)
  return node_max, node_idx
