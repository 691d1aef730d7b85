"""Blocked (flash) attention in Pallas, forward and backward.

FlashAttention (Dao et al., 2022, Alg. 1; the backward follows FlashAttention-2,
Dao 2023, Alg. 2): each program owns one tile of queries and streams the keys
and values through in blocks, keeping a running row max `m`, a running
normaliser `l` and an unnormalised output accumulator (the "online softmax").
The `[Nq, Nk]` score matrix never exists in memory; only `(block_q, block_k)`
tiles do. The forward saves one log-sum-exp per query row; the backward and
the key-mass statistic recompute probability tiles from it instead of storing
them.

Semantics are those of `attention_reference`, including its masking: keys
hidden by `kv_mask` or by the causal mask get the logit `finfo(f32).min` (not
-inf), so a query that sees no key at all averages every value, as the
reference does (the kernel skips causal blocks, so such rows are patched after
it). Padding added here to reach a whole number of blocks gets -inf and so
never counts.

The work on one (query tile, key tile) pair is shared by both compiled
backends (`_forward_tile`, `_dkdv_tile`, `_dq_tile`, `_key_mass_tile`); how
the tiles are walked differs:

- Triton (GPU): arrays stay `[B, N, H, D]`; the head dim is zero-padded to a
  power of two >= 16 (Triton's `dot` needs it). The grid is (batch, head,
  tile); each program loops over the streamed operand (K/V, or Q/dO), whose
  tiles it loads from HBM as the loop reaches them.
- Mosaic (TPU): arrays are transposed to `[B, H, N, D]` so that every block's
  last two dims are `(tokens, D)`; `block_k` is a multiple of 128 lanes. The
  grid is (batch, head, tile, streamed tile): the streamed operand moves
  along the last axis ("arbitrary", i.e. sequential), the pipeline copying
  each step's tiles from HBM to VMEM, and the running state (row max,
  normaliser, accumulators) lives in VMEM scratch, set at the first step and
  written out at the last. VMEM holds a few tiles, so the sequence length is
  bounded by HBM, not VMEM.

Per-query vectors are stored as `[B, H, N, 1]` columns and per-key vectors as
`[B, N // block, 1, block]`, so a key tile's vector is picked by a leading
index instead of a dynamic slice along the lane axis.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from maskmodel.kernels.dispatch import triton_target

# The reference fills hidden logits with this, not -inf; keep it identical.
BIG_NEG = float(jnp.finfo(jnp.float32).min)
_NT = (((1,), (1,)), ((), ()))  # contract the last dims: a @ b.T


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes: queries x keys per program, for forward and backward."""
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int


# Mosaic's tiles. Triton's come from `triton_tuning`; its entry here is the
# configuration that the H100 device check ran with (sm_90a keeps it in bf16).
DEFAULT_BLOCK_SIZES = {
    "triton": BlockSizes(block_q=128, block_k=64, block_q_bwd=64,
                         block_k_bwd=64),
    "mosaic": BlockSizes(block_q=128, block_k=128, block_q_bwd=128,
                         block_k_bwd=128),
}


@dataclasses.dataclass(frozen=True)
class TritonTuning:
  """Tiles and Triton launch parameters for one GPU arch, dtype, head dim."""
  blocks: BlockSizes
  num_warps: int  # Forward.
  num_warps_bwd: int  # dK/dV, dQ and key mass.
  num_stages: int


def _tuning(fwd_q, fwd_k, bwd_q, bwd_k, warps, warps_bwd):
  return TritonTuning(BlockSizes(fwd_q, fwd_k, bwd_q, bwd_k), warps,
                      warps_bwd, num_stages=2)


# (dtype, padded head dim) -> Triton configuration. Chosen from ptxas'
# reports for sm_80, sm_86, sm_89 and sm_90a (`python
# benchmarks/gpu_compile.py`; the figures before and after are in
# `maskmodel/kernels/README.md`), not from timings:
# - shared memory: Triton stages K/V (forward, dQ) or Q/dO (dK/dV) tiles,
#   num_stages deep. With the earlier 128 x 64 / 64 x 64 tiles, f32 at
#   D = 128 asked for 131,584 bytes, over the 101,376 of sm_86 and sm_89;
#   32-wide tiles need at most 98,432.
# - registers: the dK/dV kernel holds K, V, dK and dV tiles in registers.
#   In f32, 64-key tiles spilled 1-12 KB per thread (sm_80: 9.7 KB at
#   D = 64, in 32 registers: ptxas gave up allocating); 32-key tiles do not
#   spill, or by at most 32 bytes. bf16 at D >= 64 spilled or hit 255
#   registers with 4 warps; 8 warps halve the per-thread tiles.
# The same configuration fits every arch, and is the one used when the arch
# is unknown at trace time. sm_90a keeps, in bf16, the configuration that the
# H100 device check timed (`triton_tuning`).
_TRITON_TUNING = {
    ("float32", 16): _tuning(128, 64, 32, 64, 8, 4),
    ("float32", 32): _tuning(128, 64, 32, 64, 8, 4),
    ("float32", 64): _tuning(128, 32, 32, 32, 4, 4),
    ("float32", 128): _tuning(128, 32, 32, 32, 8, 8),
    ("bfloat16", 16): _tuning(128, 64, 64, 64, 4, 4),
    ("bfloat16", 32): _tuning(128, 64, 64, 64, 4, 4),
    ("bfloat16", 64): _tuning(128, 64, 64, 64, 8, 8),
    ("bfloat16", 128): _tuning(128, 64, 32, 64, 8, 8),
}


def triton_tuning(arch: str | None, dtype, dim: int) -> TritonTuning:
  """The Triton configuration for `arch` ("sm_80", "sm_86", "sm_89",
  "sm_90a"; None: one that compiles on all of them), `dtype` and the padded
  head dim (a power of two >= 16).

  The kernels are lowered before the GPU they run on is known, so the arch
  comes from `dispatch.triton_target()`: the GPU of this process, or the one
  `dispatch.compiling_for_gpu` names. f16 uses the bf16 entries; head dims
  above 128 get 16 x 32 tiles and 4 warps, unchecked.
  """
  name = "float32" if jnp.dtype(dtype) == jnp.float32 else "bfloat16"
  if arch == "sm_90a" and name == "bfloat16" and dim <= 128:
    # The configuration the H100 timings in the README ran with; it neither
    # spills nor exceeds sm_90a's shared memory, so it stays until a
    # device check times another.
    warps = 4 if dim <= 64 else 8
    return _tuning(128, 64, 64, 64, warps, warps)
  return _TRITON_TUNING.get((name, dim), _tuning(16, 32, 16, 32, 4, 4))


@dataclasses.dataclass(frozen=True)
class _Config:
  """Everything static about one call; hashable so it can key jit caches."""
  backend: str  # "triton" | "mosaic": layout and compiler parameters.
  interpret: bool
  causal: bool
  has_kv_mask: bool
  nq: int  # Unpadded lengths: they define the causal diagonal and padding.
  nk: int
  nq_pad: int
  nk_pad: int
  scale: float
  blocks: BlockSizes
  triton: TritonTuning | None = None  # Warps and stages (backend "triton").


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _clamp_blocks(blocks: BlockSizes, backend: str, nq: int,
                  nk: int) -> BlockSizes:
  """Shrinks tiles for short sequences so little work is spent on padding."""
  if backend == "mosaic":
    # Query tiles are sublane-tiled (multiples of 8); key tiles sit on the
    # 128-wide lane axis of the score tile, so they stay multiples of 128.
    fit_q = lambda b: min(b, _round_up(nq, 8))
    fit_k = lambda b: b
  else:
    # Triton tiles are powers of two and `dot` needs at least 16.
    fit_q = lambda b: min(b, max(16, pl.next_power_of_2(nq)))
    fit_k = lambda b: min(b, max(16, pl.next_power_of_2(nk)))
  return BlockSizes(fit_q(blocks.block_q), fit_k(blocks.block_k),
                    fit_q(blocks.block_q_bwd), fit_k(blocks.block_k_bwd))


def _padded_lengths(blocks: BlockSizes, nq: int, nk: int) -> tuple[int, int]:
  return (_round_up(nq, math.lcm(blocks.block_q, blocks.block_q_bwd)),
          _round_up(nk, math.lcm(blocks.block_k, blocks.block_k_bwd)))


# Mosaic counts the steps of a kernel's grid in an int32: the compiler
# refuses a grid of 2**31 steps or more ("Iteration bounds are too large").
_MOSAIC_MAX_GRID_STEPS = 2**31 - 1
# The largest tiles `_fit_mosaic_grid` picks by itself: 1024 x 1024 tiles
# compile for v4 (16 MiB of VMEM) in f32 at D = 128, causal, with the
# statistics and gradients.
_MOSAIC_MAX_AUTO_BLOCK = 1024


def _fit_mosaic_grid(blocks: BlockSizes, batch_heads: int, nq: int, nk: int,
                     explicit: bool) -> BlockSizes:
  """Doubles the Mosaic tiles until every kernel's grid (batch x heads x
  query tiles x key tiles) stays within Mosaic's int32 step count.

  Only very long sequences need it: with 128 x 128 tiles the bound is
  reached at Nq = Nk = 4,194,304 for batch x heads = 2, and at about 605,000
  for batch x heads = 96. Tiles given by the caller are not changed: a
  `ValueError` says to pass larger ones.
  """
  def steps(b):
    nq_pad, nk_pad = _padded_lengths(b, nq, nk)
    return batch_heads * max(
        (nq_pad // b.block_q) * (nk_pad // b.block_k),
        (nq_pad // b.block_q_bwd) * (nk_pad // b.block_k_bwd))

  while steps(blocks) > _MOSAIC_MAX_GRID_STEPS:
    if explicit or max(dataclasses.astuple(blocks)) >= _MOSAIC_MAX_AUTO_BLOCK:
      raise ValueError(
          f"flash attention on TPU: {steps(blocks):,} grid steps for "
          f"batch x heads = {batch_heads}, Nq = {nq}, Nk = {nk} and {blocks}, "
          "over Mosaic's int32 bound; pass larger block_sizes or split the "
          "batch.")
    blocks = _clamp_blocks(
        BlockSizes(*(2 * b for b in dataclasses.astuple(blocks))), "mosaic",
        nq, nk)
  return blocks


# ----------------------------------------------------------------------------
# Kernel bodies (shared by Triton, Mosaic and the interpreter).
# ----------------------------------------------------------------------------


def _scores(q, k, key_bias, key_valid, q_start, k_start, cfg: _Config):
  """One `(block_q, block_k)` tile of logits, masked like the reference.

  Returns the logits and the visibility mask (None when everything is
  visible), which the backward needs to zero gradients of hidden logits.
  """
  s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32)
  s = s * cfg.scale + key_bias
  cols = k_start + lax.broadcasted_iota(jnp.int32, s.shape, 1)
  visible = None
  if cfg.has_kv_mask:
    # Compare at full tile shape: Mosaic is stricter about broadcasting
    # boolean vectors than float ones.
    visible = jnp.broadcast_to(key_valid, s.shape) > 0
  if cfg.causal:
    # Bottom-right aligned, as `jnp.tril(..., k=nk - nq)` in the reference.
    rows = q_start + lax.broadcasted_iota(jnp.int32, s.shape, 0)
    diagonal = cols <= rows + (cfg.nk - cfg.nq)
    visible = diagonal if visible is None else visible & diagonal
  if visible is not None:
    s = jnp.where(visible, s, BIG_NEG)
  if cfg.nk_pad != cfg.nk:
    s = jnp.where(cols < cfg.nk, s, -jnp.inf)
  return s, visible


def _key_block_end(q_start, block_q, block_k, num_k_blocks, cfg):
  """One past the last key block that a query tile can see (causal skip).

  At least one block is always visited so that every row has a finite max;
  rows that see no key at all are patched outside the kernel.
  """
  if not cfg.causal:
    return num_k_blocks
  last_col = q_start + (block_q - 1 + cfg.nk - cfg.nq)
  end = lax.div(last_col, jnp.int32(block_k)) + 1
  return jnp.minimum(jnp.maximum(end, 1), num_k_blocks)


def _query_block_start(k_start, block_q, cfg):
  """First query block that can see any key of a key tile (causal skip)."""
  if not cfg.causal:
    return 0
  first_row = jnp.maximum(k_start - (cfg.nk - cfg.nq), 0)
  return lax.div(first_row, jnp.int32(block_q))


# Each kernel's work on one (query tile, key tile) pair is a `_*_tile`
# function. The Triton kernels call it in a loop over the streamed operand,
# whose tiles they load from HBM themselves; the Mosaic kernels call it once
# per step of an inner grid axis, the pipeline bringing the tiles into VMEM,
# and carry the running state across steps in VMEM scratch.


def _forward_tile(q, k, v, key_bias, key_valid, q_start, k_start, carry,
                  cfg: _Config):
  """One key tile of the online softmax: updates (acc, m, l)."""
  acc, m, l = carry
  s, _ = _scores(q, k, key_bias, key_valid, q_start, k_start, cfg)
  m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
  rescale = jnp.exp(m - m_new)
  p = jnp.exp(s - m_new)
  l = rescale * l + p.sum(axis=1, keepdims=True)
  acc = rescale * acc + jnp.dot(p.astype(v.dtype), v,
                                preferred_element_type=jnp.float32)
  return acc, m_new, l


def _forward_finish(acc, m, l, o_ref, lse_ref):
  o_ref[...] = (acc / l).astype(o_ref.dtype)
  # A row whose keys are all hidden has m = BIG_NEG, and log(l) vanishes in
  # rounding: lse = BIG_NEG marks it (see `flash_attention`).
  lse_ref[...] = m + jnp.log(l)


def _forward_kernel(q_ref, k_ref, v_ref, bias_ref, valid_ref,
                    o_ref, lse_ref, *, cfg: _Config):
  """Online softmax over key blocks for one query tile (FlashAttention Alg. 1)."""
  block_q, block_k = cfg.blocks.block_q, cfg.blocks.block_k
  num_k_blocks = cfg.nk_pad // block_k
  q_start = pl.program_id(2) * block_q
  q = q_ref[...]

  def body(j, carry):
    k_start = pl.multiple_of(j * block_k, block_k)
    k = k_ref[pl.ds(k_start, block_k), :]
    v = v_ref[pl.ds(k_start, block_k), :]
    return _forward_tile(q, k, v, bias_ref[j], valid_ref[j], q_start, k_start,
                         carry, cfg)

  init = (jnp.zeros((block_q, q.shape[-1]), jnp.float32),
          jnp.full((block_q, 1), -jnp.inf, jnp.float32),
          jnp.zeros((block_q, 1), jnp.float32))
  end = _key_block_end(q_start, block_q, block_k, num_k_blocks, cfg)
  acc, m, l = lax.fori_loop(0, end, body, init)
  _forward_finish(acc, m, l, o_ref, lse_ref)


def _probs(s, lse):
  # Padded query rows carry lse=+inf, so their probabilities are exactly 0.
  return jnp.exp(s - lse)


def _dkdv_tile(q, do, lse_ref, delta_ref, rows, k, v, key_bias, key_valid,
               q_start, k_start, carry, cfg: _Config):
  """One query tile of the dK/dV kernel: updates (dK, dV, d(bias)).

  `lse_ref[rows, :]` and `delta_ref[rows, :]` are the tile's row statistics.
  """
  dk, dv, dbias = carry
  s, visible = _scores(q, k, key_bias, key_valid, q_start, k_start, cfg)
  p = _probs(s, lse_ref[rows, :])
  dv = dv + jnp.dot(p.astype(do.dtype).T, do,
                    preferred_element_type=jnp.float32)
  dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
  ds = p * (dp - delta_ref[rows, :])
  if visible is not None:  # Hidden logits are constants in the reference.
    ds = jnp.where(visible, ds, 0.0)
  dk = dk + jnp.dot(ds.astype(q.dtype).T, q,
                    preferred_element_type=jnp.float32)
  dbias = dbias + ds.sum(axis=0, keepdims=True)
  return dk, dv, dbias


def _dkdv_finish(dk, dv, dbias, dk_ref, dv_ref, dbias_ref, cfg: _Config):
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  dbias_ref[...] = dbias


def _dkdv_kernel(q_ref, k_ref, v_ref, bias_ref, valid_ref, do_ref, lse_ref,
                 delta_ref, dk_ref, dv_ref, dbias_ref, *, cfg: _Config):
  """dK, dV and the per-head bias gradient for one key tile.

  Streams query tiles (FlashAttention-2 backward, Alg. 2, outer loop over
  keys): dV += P^T dO; dS = P * (dO V^T - delta); dK += dS^T Q * scale; and
  d(bias) is the column sum of dS.
  """
  block_q, block_k = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  num_q_blocks = cfg.nq_pad // block_q
  k_start = pl.program_id(2) * block_k
  k, v = k_ref[...], v_ref[...]
  key_bias, key_valid = bias_ref[...], valid_ref[...]

  def body(i, carry):
    q_start = pl.multiple_of(i * block_q, block_q)
    rows = pl.ds(q_start, block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
    return _dkdv_tile(q, do, lse_ref, delta_ref, rows, k, v, key_bias,
                      key_valid, q_start, k_start, carry, cfg)

  init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32),
          jnp.zeros((1, block_k), jnp.float32))
  start = _query_block_start(k_start, block_q, cfg)
  dk, dv, dbias = lax.fori_loop(start, num_q_blocks, body, init)
  _dkdv_finish(dk, dv, dbias, dk_ref, dv_ref, dbias_ref, cfg)


def _dq_tile(q, do, lse, delta, k, v, key_bias, key_valid, q_start, k_start,
             dq, cfg: _Config):
  """One key tile of the dQ kernel: dQ += dS K (scaled at the end)."""
  s, visible = _scores(q, k, key_bias, key_valid, q_start, k_start, cfg)
  p = _probs(s, lse)
  dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
  ds = p * (dp - delta)
  if visible is not None:
    ds = jnp.where(visible, ds, 0.0)
  return dq + jnp.dot(ds.astype(k.dtype), k,
                      preferred_element_type=jnp.float32)


def _dq_kernel(q_ref, k_ref, v_ref, bias_ref, valid_ref, do_ref, lse_ref,
               delta_ref, dq_ref, *, cfg: _Config):
  """dQ for one query tile: dQ += dS K * scale over the visible key blocks."""
  block_q, block_k = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  num_k_blocks = cfg.nk_pad // block_k
  q_start = pl.program_id(2) * block_q
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]

  def body(j, dq):
    k_start = pl.multiple_of(j * block_k, block_k)
    k = k_ref[pl.ds(k_start, block_k), :]
    v = v_ref[pl.ds(k_start, block_k), :]
    return _dq_tile(q, do, lse, delta, k, v, bias_ref[j], valid_ref[j],
                    q_start, k_start, dq, cfg)

  end = _key_block_end(q_start, block_q, block_k, num_k_blocks, cfg)
  dq = lax.fori_loop(0, end, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _key_mass_tile(q, lse_ref, rows, k, key_bias, key_valid, q_start,
                   k_start, mass, cfg: _Config):
  """One query tile's column sums of the probabilities of a key tile."""
  s, _ = _scores(q, k, key_bias, key_valid, q_start, k_start, cfg)
  p = _probs(s, lse_ref[rows, :])
  return mass + p.sum(axis=0, keepdims=True)


def _key_mass_kernel(q_ref, k_ref, bias_ref, valid_ref, lse_ref, mass_ref, *,
                     cfg: _Config):
  """Column sums of the attention matrix for one key tile, recomputed from
  the saved log-sum-exp (a second pass; nothing `[Nq, Nk]` is stored)."""
  block_q, block_k = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  num_q_blocks = cfg.nq_pad // block_q
  k_start = pl.program_id(2) * block_k
  k = k_ref[...]
  key_bias, key_valid = bias_ref[...], valid_ref[...]

  def body(i, mass):
    q_start = pl.multiple_of(i * block_q, block_q)
    rows = pl.ds(q_start, block_q)
    return _key_mass_tile(q_ref[rows, :], lse_ref, rows, k, key_bias,
                          key_valid, q_start, k_start, mass, cfg)

  start = _query_block_start(k_start, block_q, cfg)
  mass_ref[...] = lax.fori_loop(start, num_q_blocks, body,
                                jnp.zeros((1, block_k), jnp.float32))


# Mosaic (TPU): the grid is (batch, head, outer tile, inner tile). The inner
# axis walks the streamed operand ("arbitrary": sequential on one core); the
# pipeline copies each step's tiles from HBM to VMEM, so VMEM holds a few
# tiles whatever the sequence length. The running state lives in VMEM
# scratch, set at the first inner step and written out at the last. Causal
# tiles that a program cannot see are skipped, and their index maps fetch
# the nearest visible tile instead, so that consecutive steps share one copy
# (`_visible_key_tile`, `_visible_query_tile`).


def _when(cond, fn):
  """`pl.when(cond)(fn)`, or a plain call when `cond` is the constant True."""
  if cond is True:
    fn()
  else:
    pl.when(cond)(fn)


def _visible_key_step(q_start, j, block_q, block_k, num_k_blocks, cfg):
  """Whether key tile `j` holds a key that the query tile can see."""
  if not cfg.causal:
    return True
  return j < _key_block_end(q_start, block_q, block_k, num_k_blocks, cfg)


def _visible_query_step(k_start, i, block_q, cfg):
  """Whether query tile `i` holds a query that sees a key of the key tile."""
  if not cfg.causal:
    return True
  return i >= _query_block_start(k_start, block_q, cfg)


def _forward_kernel_streamed(q_ref, k_ref, v_ref, bias_ref, valid_ref, o_ref,
                             lse_ref, acc_ref, m_ref, l_ref, *, cfg: _Config):
  """`_forward_kernel` with the key tiles on the inner grid axis."""
  block_q, block_k = cfg.blocks.block_q, cfg.blocks.block_k
  num_k_blocks = cfg.nk_pad // block_k
  j = pl.program_id(3)
  q_start, k_start = pl.program_id(2) * block_q, j * block_k

  @pl.when(j == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)

  def step():
    acc, m, l = _forward_tile(
        q_ref[...], k_ref[...], v_ref[...], bias_ref[...], valid_ref[...],
        q_start, k_start, (acc_ref[...], m_ref[...], l_ref[...]), cfg)
    acc_ref[...], m_ref[...], l_ref[...] = acc, m, l

  _when(_visible_key_step(q_start, j, block_q, block_k, num_k_blocks, cfg),
        step)

  @pl.when(j == num_k_blocks - 1)
  def _finish():
    _forward_finish(acc_ref[...], m_ref[...], l_ref[...], o_ref, lse_ref)


def _dkdv_kernel_streamed(q_ref, k_ref, v_ref, bias_ref, valid_ref, do_ref,
                          lse_ref, delta_ref, dk_ref, dv_ref, dbias_ref,
                          dk_acc, dv_acc, dbias_acc, *, cfg: _Config):
  """`_dkdv_kernel` with the query tiles on the inner grid axis."""
  block_q, block_k = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  num_q_blocks = cfg.nq_pad // block_q
  i = pl.program_id(3)
  q_start, k_start = i * block_q, pl.program_id(2) * block_k

  @pl.when(i == 0)
  def _init():
    for acc in (dk_acc, dv_acc, dbias_acc):
      acc[...] = jnp.zeros(acc.shape, jnp.float32)

  def step():
    dk, dv, dbias = _dkdv_tile(
        q_ref[...], do_ref[...], lse_ref, delta_ref, slice(None), k_ref[...],
        v_ref[...], bias_ref[...], valid_ref[...], q_start, k_start,
        (dk_acc[...], dv_acc[...], dbias_acc[...]), cfg)
    dk_acc[...], dv_acc[...], dbias_acc[...] = dk, dv, dbias

  _when(_visible_query_step(k_start, i, block_q, cfg), step)

  @pl.when(i == num_q_blocks - 1)
  def _finish():
    _dkdv_finish(dk_acc[...], dv_acc[...], dbias_acc[...], dk_ref, dv_ref,
                 dbias_ref, cfg)


def _dq_kernel_streamed(q_ref, k_ref, v_ref, bias_ref, valid_ref, do_ref,
                        lse_ref, delta_ref, dq_ref, dq_acc, *, cfg: _Config):
  """`_dq_kernel` with the key tiles on the inner grid axis."""
  block_q, block_k = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  num_k_blocks = cfg.nk_pad // block_k
  j = pl.program_id(3)
  q_start, k_start = pl.program_id(2) * block_q, j * block_k

  @pl.when(j == 0)
  def _init():
    dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

  def step():
    dq_acc[...] = _dq_tile(
        q_ref[...], do_ref[...], lse_ref[...], delta_ref[...], k_ref[...],
        v_ref[...], bias_ref[...], valid_ref[...], q_start, k_start,
        dq_acc[...], cfg)

  _when(_visible_key_step(q_start, j, block_q, block_k, num_k_blocks, cfg),
        step)

  @pl.when(j == num_k_blocks - 1)
  def _finish():
    dq_ref[...] = (dq_acc[...] * cfg.scale).astype(dq_ref.dtype)


def _key_mass_kernel_streamed(q_ref, k_ref, bias_ref, valid_ref, lse_ref,
                              mass_ref, mass_acc, *, cfg: _Config):
  """`_key_mass_kernel` with the query tiles on the inner grid axis."""
  block_q, block_k = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  num_q_blocks = cfg.nq_pad // block_q
  i = pl.program_id(3)
  q_start, k_start = i * block_q, pl.program_id(2) * block_k

  @pl.when(i == 0)
  def _init():
    mass_acc[...] = jnp.zeros(mass_acc.shape, jnp.float32)

  def step():
    mass_acc[...] = _key_mass_tile(
        q_ref[...], lse_ref, slice(None), k_ref[...], bias_ref[...],
        valid_ref[...], q_start, k_start, mass_acc[...], cfg)

  _when(_visible_query_step(k_start, i, block_q, cfg), step)

  @pl.when(i == num_q_blocks - 1)
  def _finish():
    mass_ref[...] = mass_acc[...]


# ----------------------------------------------------------------------------
# BlockSpecs and pallas_call plumbing. Triton grids are (batch, head, tile),
# Mosaic grids (batch, head, tile, streamed tile).
# ----------------------------------------------------------------------------


def _token_spec(cfg: _Config, block: int | None, length: int, dim: int):
  """Triton spec for a [B, N, H, D] array; `block=None`: the whole sequence."""
  del cfg
  tiled = block is not None
  block = block if tiled else length
  index = (lambda b, h, i: (b, i, h, 0)) if tiled else (
      lambda b, h, i: (b, 0, h, 0))
  return pl.BlockSpec((None, block, None, dim), index)


def _row_spec(block: int | None, length: int):
  """Spec for a per-query column vector stored as [B, H, N, 1]."""
  if block is None:
    return pl.BlockSpec((None, None, length, 1), lambda b, h, i: (b, h, 0, 0))
  return pl.BlockSpec((None, None, block, 1), lambda b, h, i: (b, h, i, 0))


def _key_spec(block: int, num_blocks: int, tiled: bool):
  """Spec for a per-key vector stored as [B, num_blocks, 1, block]."""
  if tiled:
    return pl.BlockSpec((None, None, 1, block), lambda b, h, i: (b, i, 0, 0))
  return pl.BlockSpec((None, num_blocks, 1, block), lambda b, h, i: (b, 0, 0, 0))


def _triton_params(cfg: _Config, backward: bool):
  if cfg.interpret:
    return None
  from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
  tuning = cfg.triton
  return plgpu.CompilerParams(
      num_warps=tuning.num_warps_bwd if backward else tuning.num_warps,
      num_stages=tuning.num_stages)


def _pallas(kernel, cfg, grid, in_specs, out_specs, out_shape, name,
            backward):
  return pl.pallas_call(
      functools.partial(kernel, cfg=cfg),
      grid=grid,
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_triton_params(cfg, backward),
      interpret=cfg.interpret,
      name=name,
  )


# The VMEM of the smallest TPU (v4: 16 MiB; v5p and TPU7x have 64 MiB, v5e
# and v6e 128 MiB). The generation a program will run on is not known when
# it is lowered, so no kernel asks for more than this.
_SMALLEST_VMEM_BYTES = 16 * 2**20
# Below this the compiler's default scoped VMEM limit is kept.
_DEFAULT_SCOPED_VMEM_BYTES = 8 * 2**20


def _vmem_bytes(shape, dtype) -> int:
  """VMEM taken by one buffer of a block (`None` dims squeezed).

  VMEM holds arrays in tiles of 8 sublanes (16 for 16-bit types, which pack
  two rows per sublane) x 128 lanes: a `[128, 64]` block takes full 128-lane
  rows, and a `[128, 1]` column as much as a `[128, 128]` block.
  """
  dims = [d for d in shape if d is not None]
  itemsize = jnp.dtype(dtype).itemsize
  sublanes = 8 * max(1, 4 // itemsize)
  rows, lanes = (1, dims[0]) if len(dims) == 1 else dims[-2:]
  leading = math.prod(dims[:-2])
  return (leading * _round_up(rows, sublanes) * _round_up(lanes, 128)
          * itemsize)


def _mosaic_vmem_limit(name, in_specs, args, out_specs, out_shape, scratch,
                       score_tiles):
  """The `vmem_limit_bytes` for a streamed Mosaic kernel, or None.

  An estimate: every input and output block double-buffered by the
  pipeline, scratch once, and `score_tiles` = (count, block_q, block_k) f32
  tiles of intermediates (scores, probabilities, dP, dS). With the default
  tiles (128 x 128) a kernel needs about 1-2 MiB whatever the sequence
  length, and the compiler's default scoped limit is kept. Larger tiles get
  the VMEM of the smallest TPU, never more; tiles that need more than that
  fail in Mosaic ("Ran out of memory in memory space vmem").
  """
  del name
  blocks = ([(s.block_shape, a.dtype) for s, a in zip(in_specs, args)]
            + [(s.block_shape, o.dtype) for s, o in zip(out_specs, out_shape)])
  count, block_q, block_k = score_tiles
  need = (2 * sum(_vmem_bytes(shape, dtype) for shape, dtype in blocks)
          + sum(_vmem_bytes(s.shape, s.dtype) for s in scratch)
          + count * _vmem_bytes((block_q, block_k), jnp.float32))
  if need <= _DEFAULT_SCOPED_VMEM_BYTES:
    return None
  return _SMALLEST_VMEM_BYTES


def _mosaic(kernel, cfg, grid, in_specs, out_specs, out_shape, scratch,
            score_tiles, name, *args):
  """A streamed Mosaic kernel: the last grid axis is the reduction."""
  if cfg.interpret:
    params = None
  else:
    from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
    params = pltpu.CompilerParams(
        dimension_semantics=("parallel", "parallel", "parallel",
                             "arbitrary"),
        vmem_limit_bytes=_mosaic_vmem_limit(
            name, in_specs, args, out_specs, out_shape, scratch,
            score_tiles))
  return pl.pallas_call(
      functools.partial(kernel, cfg=cfg),
      grid=grid,
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      scratch_shapes=scratch,
      compiler_params=params,
      interpret=cfg.interpret,
      name=name,
  )(*args)


def _vmem(shape):
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  return pltpu.VMEM(shape, jnp.float32)


def _visible_key_tile(cfg: _Config, block_q: int, block_k: int):
  """Index map of the key tile fetched at step j of query tile i.

  Causal steps past the last visible tile repeat it: the pipeline issues no
  copy for a block index that does not change, and the kernel skips them.
  """
  num_k_blocks = cfg.nk_pad // block_k
  if not cfg.causal:
    return lambda i, j: j
  return lambda i, j: jnp.minimum(
      j, _key_block_end(i * block_q, block_q, block_k, num_k_blocks, cfg) - 1)


def _visible_query_tile(cfg: _Config, block_q: int, block_k: int):
  """Index map of the query tile fetched at step i of key tile k: causal
  steps before the first query tile that sees the key tile fetch that one."""
  if not cfg.causal:
    return lambda k, i: i
  return lambda k, i: jnp.maximum(
      i, _query_block_start(k * block_k, block_q, cfg))


def _outer_spec(block: int, dim: int):
  """A `[B, H, N, dim]` array tiled along the outer grid axis."""
  return pl.BlockSpec((None, None, block, dim),
                      lambda b, h, o, n: (b, h, o, 0))


def _inner_spec(block: int, dim: int, index):
  """A `[B, H, N, dim]` array streamed along the inner axis: tile
  `index(o, n)` at step n of outer tile o."""
  return pl.BlockSpec((None, None, block, dim),
                      lambda b, h, o, n: (b, h, index(o, n), 0))


def _key_vector_spec(block: int, index):
  """A per-key vector `[B, num_blocks, 1, block]`: tile `index(o, n)`."""
  return pl.BlockSpec((None, None, 1, block),
                      lambda b, h, o, n: (b, index(o, n), 0, 0))


def _per_head_key_spec(block: int):
  """A per-head, per-key output `[B, H, num_blocks, 1, block]`, tiled along
  the outer (key) axis."""
  return pl.BlockSpec((None, None, None, 1, block),
                      lambda b, h, o, n: (b, h, o, 0, 0))


def _dims(cfg: _Config, x):
  """(batch, heads, head_dim) of a q/k/v array in the kernel layout."""
  if cfg.backend == "mosaic":
    return x.shape[0], x.shape[1], x.shape[3]
  return x.shape[0], x.shape[2], x.shape[3]


def _key_vector(x, block):
  return x.reshape(x.shape[0], -1, 1, block)


def _forward(q, k, v, key_bias, key_valid, cfg: _Config):
  batch, heads, dim = _dims(cfg, q)
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  nkb = cfg.nk_pad // bk
  row = jax.ShapeDtypeStruct((batch, heads, cfg.nq_pad, 1), jnp.float32)
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), row]
  args = (q, k, v, _key_vector(key_bias, bk), _key_vector(key_valid, bk))
  if cfg.backend == "mosaic":
    key_tile = _visible_key_tile(cfg, bq, bk)
    return _mosaic(
        _forward_kernel_streamed, cfg,
        (batch, heads, cfg.nq_pad // bq, nkb),
        [_outer_spec(bq, dim), _inner_spec(bk, dim, key_tile),
         _inner_spec(bk, dim, key_tile), _key_vector_spec(bk, key_tile),
         _key_vector_spec(bk, key_tile)],
        [_outer_spec(bq, dim), _outer_spec(bq, 1)], out_shape,
        [_vmem((bq, dim)), _vmem((bq, 1)), _vmem((bq, 1))], (2, bq, bk),
        "flash_attention_forward", *args)
  return _pallas(
      _forward_kernel, cfg,
      grid=(batch, heads, cfg.nq_pad // bq),
      in_specs=[_token_spec(cfg, bq, cfg.nq_pad, dim),
                _token_spec(cfg, None, cfg.nk_pad, dim),
                _token_spec(cfg, None, cfg.nk_pad, dim),
                _key_spec(bk, nkb, tiled=False),
                _key_spec(bk, nkb, tiled=False)],
      out_specs=[_token_spec(cfg, bq, cfg.nq_pad, dim),
                 _row_spec(bq, cfg.nq_pad)],
      out_shape=out_shape,
      name="flash_attention_forward", backward=False,
  )(*args)


def _mask_padded_rows(cfg: _Config, lse):
  """Padded query rows get lse=+inf: probability exactly 0 everywhere."""
  if cfg.nq_pad == cfg.nq:
    return lse
  real = jnp.arange(cfg.nq_pad)[:, None] < cfg.nq
  return jnp.where(real, lse, jnp.inf)


def _backward(q, k, v, key_bias, key_valid, out, lse, dout, cfg: _Config):
  batch, heads, dim = _dims(cfg, q)
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  nkb = cfg.nk_pad // bk
  nqb = cfg.nq_pad // bq
  lse = _mask_padded_rows(cfg, lse)
  # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij: the D_i of FlashAttention-2.
  delta = jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32), -1)
  if cfg.backend == "triton":
    delta = delta.transpose(0, 2, 1)  # [B, N, H] -> [B, H, N]
  delta = delta[..., None]
  kbias, kvalid = _key_vector(key_bias, bk), _key_vector(key_valid, bk)
  args = (q, k, v, kbias, kvalid, dout, lse, delta)
  dkdv_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype),
                jax.ShapeDtypeStruct(v.shape, v.dtype),
                jax.ShapeDtypeStruct((batch, heads, nkb, 1, bk), jnp.float32)]
  dq_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)

  if cfg.backend == "mosaic":
    query_tile = _visible_query_tile(cfg, bq, bk)
    key_tile = _visible_key_tile(cfg, bq, bk)
    own = lambda o, n: o
    dk, dv, dbias = _mosaic(
        _dkdv_kernel_streamed, cfg, (batch, heads, nkb, nqb),
        [_inner_spec(bq, dim, query_tile), _outer_spec(bk, dim),
         _outer_spec(bk, dim), _key_vector_spec(bk, own),
         _key_vector_spec(bk, own), _inner_spec(bq, dim, query_tile),
         _inner_spec(bq, 1, query_tile), _inner_spec(bq, 1, query_tile)],
        [_outer_spec(bk, dim), _outer_spec(bk, dim), _per_head_key_spec(bk)],
        dkdv_shape,
        [_vmem((bk, dim)), _vmem((bk, dim)), _vmem((1, bk))], (2, bq, bk),
        "flash_attention_dkdv", *args)
    dq = _mosaic(
        _dq_kernel_streamed, cfg, (batch, heads, nqb, nkb),
        [_outer_spec(bq, dim), _inner_spec(bk, dim, key_tile),
         _inner_spec(bk, dim, key_tile), _key_vector_spec(bk, key_tile),
         _key_vector_spec(bk, key_tile), _outer_spec(bq, dim),
         _outer_spec(bq, 1), _outer_spec(bq, 1)],
        [_outer_spec(bq, dim)], [dq_shape], [_vmem((bq, dim))], (2, bq, bk),
        "flash_attention_dq", *args)[0]
  else:
    dk, dv, dbias = _pallas(
        _dkdv_kernel, cfg,
        grid=(batch, heads, nkb),
        in_specs=[_token_spec(cfg, None, cfg.nq_pad, dim),
                  _token_spec(cfg, bk, cfg.nk_pad, dim),
                  _token_spec(cfg, bk, cfg.nk_pad, dim),
                  _key_spec(bk, nkb, tiled=True),
                  _key_spec(bk, nkb, tiled=True),
                  _token_spec(cfg, None, cfg.nq_pad, dim),
                  _row_spec(None, cfg.nq_pad),
                  _row_spec(None, cfg.nq_pad)],
        out_specs=[_token_spec(cfg, bk, cfg.nk_pad, dim),
                   _token_spec(cfg, bk, cfg.nk_pad, dim),
                   pl.BlockSpec((None, None, None, 1, bk),
                                lambda b, h, i: (b, h, i, 0, 0))],
        out_shape=dkdv_shape,
        name="flash_attention_dkdv", backward=True,
    )(*args)

    dq = _pallas(
        _dq_kernel, cfg,
        grid=(batch, heads, nqb),
        in_specs=[_token_spec(cfg, bq, cfg.nq_pad, dim),
                  _token_spec(cfg, None, cfg.nk_pad, dim),
                  _token_spec(cfg, None, cfg.nk_pad, dim),
                  _key_spec(bk, nkb, tiled=False),
                  _key_spec(bk, nkb, tiled=False),
                  _token_spec(cfg, bq, cfg.nq_pad, dim),
                  _row_spec(bq, cfg.nq_pad),
                  _row_spec(bq, cfg.nq_pad)],
        out_specs=_token_spec(cfg, bq, cfg.nq_pad, dim),
        out_shape=dq_shape,
        name="flash_attention_dq", backward=True,
    )(*args)

  dbias = dbias.sum(axis=1).reshape(key_bias.shape)
  return dq, dk, dv, dbias


def _key_mass(q, k, key_bias, key_valid, lse, cfg: _Config):
  batch, heads, dim = _dims(cfg, q)
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  nkb = cfg.nk_pad // bk
  lse = _mask_padded_rows(cfg, lse)
  args = (q, k, _key_vector(key_bias, bk), _key_vector(key_valid, bk), lse)
  out_shape = jax.ShapeDtypeStruct((batch, heads, nkb, 1, bk), jnp.float32)
  if cfg.backend == "mosaic":
    query_tile = _visible_query_tile(cfg, bq, bk)
    own = lambda o, n: o
    mass = _mosaic(
        _key_mass_kernel_streamed, cfg,
        (batch, heads, nkb, cfg.nq_pad // bq),
        [_inner_spec(bq, dim, query_tile), _outer_spec(bk, dim),
         _key_vector_spec(bk, own), _key_vector_spec(bk, own),
         _inner_spec(bq, 1, query_tile)],
        [_per_head_key_spec(bk)], [out_shape], [_vmem((1, bk))], (2, bq, bk),
        "flash_attention_key_mass", *args)[0]
  else:
    mass = _pallas(
        _key_mass_kernel, cfg,
        grid=(batch, heads, nkb),
        in_specs=[_token_spec(cfg, None, cfg.nq_pad, dim),
                  _token_spec(cfg, bk, cfg.nk_pad, dim),
                  _key_spec(bk, nkb, tiled=True),
                  _key_spec(bk, nkb, tiled=True),
                  _row_spec(None, cfg.nq_pad)],
        out_specs=pl.BlockSpec((None, None, None, 1, bk),
                               lambda b, h, i: (b, h, i, 0, 0)),
        out_shape=out_shape,
        name="flash_attention_key_mass", backward=True,
    )(*args)
  return mass.reshape(batch, heads, cfg.nk_pad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, key_bias, key_valid, cfg):
  """Returns (out, lse) on padded kernel-layout arrays; lse: [B, H, Nq, 1]."""
  return _forward(q, k, v, key_bias, key_valid, cfg)


def _flash_fwd(q, k, v, key_bias, key_valid, cfg):
  out, lse = _forward(q, k, v, key_bias, key_valid, cfg)
  return (out, lse), (q, k, v, key_bias, key_valid, out, lse)


def _flash_bwd(cfg, residuals, cotangents):
  q, k, v, key_bias, key_valid, out, lse = residuals
  dout = cotangents[0]  # lse only feeds statistics, which are constants.
  dq, dk, dv, dbias = _backward(q, k, v, key_bias, key_valid, out, lse, dout,
                                cfg)
  return dq, dk, dv, dbias.astype(key_bias.dtype), jnp.zeros_like(key_valid)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, bias=None, kv_mask=None, *, causal=False,
                    backend="triton", interpret=False, block_sizes=None,
                    return_stats=False, tuning=None):
  """Flash attention on `[B, N, H, D]` inputs; see `attention` for semantics.

  Args:
    q: `[B, Nq, H, D]`; k, v: `[B, Nk, H, D]`; f32 or bf16.
    bias: optional per-key additive logits `[B, Nk]` (differentiable).
    kv_mask: optional `[B, Nk]` bool, True = attend.
    causal: query i sees key j iff `j <= i + Nk - Nq`.
    backend: "triton" or "mosaic": layout, tile sizes and compiler params.
    interpret: run the kernels in the Pallas interpreter (any platform).
    block_sizes: optional `BlockSizes`; defaults per backend (on TPU the
      default tiles double where a grid would pass Mosaic's 2**31 steps).
    return_stats: also return `(cls_probs, key_mass)`, both `[B, H, Nk]` f32
      and without gradient.

    tuning: optional `TritonTuning` (tiles, warps, stages); by default
      `triton_tuning` for the GPU arch that `dispatch.triton_target()` names.
      `block_sizes` overrides its tiles.

  Returns:
    out `[B, Nq, H, D]`, or `(out, cls_probs, key_mass)`.
  """
  if backend == "triton" and tuning is None:
    tuning = triton_tuning(triton_target(), q.dtype, _triton_dim(q.shape[-1]))
  if backend != "triton":
    tuning = None
  elif block_sizes is not None:
    tuning = dataclasses.replace(tuning, blocks=block_sizes)
  return _flash_attention(q, k, v, bias, kv_mask, causal=causal,
                          backend=backend, interpret=interpret,
                          block_sizes=block_sizes, return_stats=return_stats,
                          tuning=tuning)


def _triton_dim(dim: int) -> int:
  """The head dim inside the Triton kernels: a power of two >= 16 (`dot`)."""
  return max(16, pl.next_power_of_2(dim))


@functools.partial(
    jax.jit, static_argnames=("causal", "backend", "interpret", "block_sizes",
                              "return_stats", "tuning"))
def _flash_attention(q, k, v, bias, kv_mask, *, causal, backend, interpret,
                     block_sizes, return_stats, tuning):
  if backend not in DEFAULT_BLOCK_SIZES:
    raise ValueError(f"backend={backend!r}; use 'triton' or 'mosaic'.")
  batch, nq, heads, dim = q.shape
  nk = k.shape[1]
  if k.shape != (batch, nk, heads, dim) or v.shape != k.shape:
    raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: expected "
                     "[B, Nq, H, D] and two [B, Nk, H, D].")
  for name, x in (("bias", bias), ("kv_mask", kv_mask)):
    if x is not None and x.shape != (batch, nk):
      raise ValueError(f"{name} has shape {x.shape}; expected {(batch, nk)}.")

  if tuning is not None:
    blocks = tuning.blocks
  else:
    blocks = block_sizes or DEFAULT_BLOCK_SIZES[backend]
  blocks = _clamp_blocks(blocks, backend, nq, nk)
  if backend == "mosaic":
    blocks = _fit_mosaic_grid(blocks, batch * heads, nq, nk,
                              explicit=block_sizes is not None)
  nq_pad, nk_pad = _padded_lengths(blocks, nq, nk)
  cfg = _Config(backend=backend, interpret=interpret, causal=causal,
                has_kv_mask=kv_mask is not None, nq=nq, nk=nk, nq_pad=nq_pad,
                nk_pad=nk_pad, scale=dim ** -0.5, blocks=blocks,
                triton=tuning)

  # Zero-padding the head dim changes no logit and adds only zero columns.
  dim_pad = dim if backend == "mosaic" else _triton_dim(dim)

  def to_kernel_layout(x, n_pad):
    x = jnp.pad(x, ((0, 0), (0, n_pad - x.shape[1]), (0, 0),
                    (0, dim_pad - dim)))
    return x.transpose(0, 2, 1, 3) if backend == "mosaic" else x

  qp, kp, vp = (to_kernel_layout(q, nq_pad), to_kernel_layout(k, nk_pad),
                to_kernel_layout(v, nk_pad))
  key_bias = (jnp.zeros((batch, nk), jnp.float32) if bias is None
              else bias.astype(jnp.float32))
  key_valid = (jnp.ones((batch, nk), jnp.float32) if kv_mask is None
               else kv_mask.astype(jnp.float32))
  key_bias = jnp.pad(key_bias, ((0, 0), (0, nk_pad - nk)))
  key_valid = jnp.pad(key_valid, ((0, 0), (0, nk_pad - nk)))

  out, lse = _flash(qp, kp, vp, key_bias, key_valid, cfg)
  if backend == "mosaic":
    out = out.transpose(0, 2, 1, 3)
  out = out[:, :nq, :, :dim]
  lse = lax.stop_gradient(lse[..., 0])  # [B, H, Nq_pad]

  # A query that sees no key (all hidden by kv_mask or the causal mask) has
  # every logit equal to BIG_NEG in the reference, hence uniform weights over
  # all keys. The kernel skipped causal blocks, so patch those rows here; plain
  # jnp autodiff then routes their gradient to v. The kernel's backward sees
  # a zero output cotangent for them (dO = delta = 0), so they add nothing
  # there, whatever their lse.
  hidden = None
  if causal or kv_mask is not None:
    hidden = lse < 0.5 * BIG_NEG  # [B, H, Nq_pad]
    mean_v = v.astype(jnp.float32).mean(axis=1).astype(v.dtype)  # [B, H, D]
    out = jnp.where(hidden[:, :, :nq].transpose(0, 2, 1)[..., None],
                    mean_v[:, None], out)
  if not return_stats:
    return out

  if hidden is not None:  # Their uniform mass is added back below.
    lse = jnp.where(hidden, jnp.inf, lse)
  key_mass = _key_mass(lax.stop_gradient(qp), lax.stop_gradient(kp),
                       lax.stop_gradient(key_bias), key_valid, lse[..., None],
                       cfg)[:, :, :nk]
  cls_probs = _cls_probs(lax.stop_gradient(q), lax.stop_gradient(k),
                         lax.stop_gradient(key_bias[:, :nk]), kv_mask,
                         lse[:, :, 0], cfg)
  if hidden is not None:
    num_hidden = hidden[:, :, :nq].sum(axis=-1, dtype=jnp.float32)
    key_mass = key_mass + (num_hidden / nk)[..., None]
    cls_probs = jnp.where(hidden[:, :, :1], 1.0 / nk, cls_probs)
  return out, cls_probs, key_mass


def _cls_probs(q, k, key_bias, kv_mask, lse0, cfg: _Config):
  """Softmax row of query 0, `[B, H, Nk]`: one row, so plain jnp is cheap."""
  s = jnp.einsum("bhd,bkhd->bhk", q[:, 0], k,
                 preferred_element_type=jnp.float32)
  s = s * cfg.scale + key_bias[:, None, :]
  if kv_mask is not None:
    s = jnp.where(kv_mask[:, None, :], s, BIG_NEG)
  if cfg.causal:
    s = jnp.where(jnp.arange(cfg.nk) <= cfg.nk - cfg.nq, s, BIG_NEG)
  return _probs(s, lse0[..., None])
