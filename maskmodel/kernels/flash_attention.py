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

One kernel body serves both compiled backends; only the array layout, block
sizes and compiler parameters differ:

- Triton (GPU): arrays stay `[B, N, H, D]`; the head dim is zero-padded to a
  power of two >= 16 (Triton's `dot` needs it). K/V tiles are loaded from HBM
  as the loop reaches them.
- Mosaic (TPU): arrays are transposed to `[B, H, N, D]` so that every block's
  last two dims are `(tokens, D)`; `block_k` is a multiple of 128 lanes. Each
  program's whole-sequence operands (K and V, or Q and dO) are copied to VMEM,
  which bounds the sequence length by VMEM size.

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


def _forward_kernel(q_ref, k_ref, v_ref, bias_ref, valid_ref,
                    o_ref, lse_ref, *, cfg: _Config):
  """Online softmax over key blocks for one query tile (FlashAttention Alg. 1)."""
  block_q, block_k = cfg.blocks.block_q, cfg.blocks.block_k
  num_k_blocks = cfg.nk_pad // block_k
  q_start = pl.program_id(2) * block_q
  q = q_ref[...]

  def body(j, carry):
    acc, m, l = carry
    k_start = pl.multiple_of(j * block_k, block_k)
    k = k_ref[pl.ds(k_start, block_k), :]
    v = v_ref[pl.ds(k_start, block_k), :]
    s, _ = _scores(q, k, bias_ref[j], valid_ref[j], q_start, k_start, cfg)
    m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
    rescale = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new)
    l = rescale * l + p.sum(axis=1, keepdims=True)
    acc = rescale * acc + jnp.dot(p.astype(v.dtype), v,
                                  preferred_element_type=jnp.float32)
    return acc, m_new, l

  init = (jnp.zeros((block_q, q.shape[-1]), jnp.float32),
          jnp.full((block_q, 1), -jnp.inf, jnp.float32),
          jnp.zeros((block_q, 1), jnp.float32))
  end = _key_block_end(q_start, block_q, block_k, num_k_blocks, cfg)
  acc, m, l = lax.fori_loop(0, end, body, init)
  o_ref[...] = (acc / l).astype(o_ref.dtype)
  # A row whose keys are all hidden has m = BIG_NEG, and log(l) vanishes in
  # rounding: lse = BIG_NEG marks it (see `flash_attention`).
  lse_ref[...] = m + jnp.log(l)


def _probs(s, lse):
  # Padded query rows carry lse=+inf, so their probabilities are exactly 0.
  return jnp.exp(s - lse)


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
    dk, dv, dbias = carry
    q_start = pl.multiple_of(i * block_q, block_q)
    rows = pl.ds(q_start, block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
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

  init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32),
          jnp.zeros((1, block_k), jnp.float32))
  start = _query_block_start(k_start, block_q, cfg)
  dk, dv, dbias = lax.fori_loop(start, num_q_blocks, body, init)
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  dbias_ref[...] = dbias


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
    s, visible = _scores(q, k, bias_ref[j], valid_ref[j], q_start, k_start,
                         cfg)
    p = _probs(s, lse)
    dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    ds = p * (dp - delta)
    if visible is not None:
      ds = jnp.where(visible, ds, 0.0)
    return dq + jnp.dot(ds.astype(k.dtype), k,
                        preferred_element_type=jnp.float32)

  end = _key_block_end(q_start, block_q, block_k, num_k_blocks, cfg)
  dq = lax.fori_loop(0, end, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


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
    s, _ = _scores(q_ref[rows, :], k, key_bias, key_valid, q_start, k_start,
                   cfg)
    p = _probs(s, lse_ref[rows, :])
    return mass + p.sum(axis=0, keepdims=True)

  start = _query_block_start(k_start, block_q, cfg)
  mass_ref[...] = lax.fori_loop(start, num_q_blocks, body,
                                jnp.zeros((1, block_k), jnp.float32))


# ----------------------------------------------------------------------------
# BlockSpecs and pallas_call plumbing. Every grid is (batch, head, tile).
# ----------------------------------------------------------------------------


def _token_spec(cfg: _Config, block: int | None, length: int, dim: int):
  """Spec for a q/k/v-like array; `block=None` gives the whole sequence."""
  tiled = block is not None
  block = block if tiled else length
  if cfg.backend == "mosaic":  # [B, H, N, D]
    index = (lambda b, h, i: (b, h, i, 0)) if tiled else (
        lambda b, h, i: (b, h, 0, 0))
    return pl.BlockSpec((None, None, block, dim), index)
  index = (lambda b, h, i: (b, i, h, 0)) if tiled else (  # [B, N, H, D]
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


# The largest VMEM of any TPU generation (v5e, v6e: 128 MiB; v5p, TPU7x:
# 64 MiB; v4: 16 MiB). A limit above a chip's VMEM is not an error there: the
# program then fails only if it really needs more than the chip has.
_MAX_VMEM_BYTES = 128 * 2**20


def _compiler_params(cfg: _Config, backward: bool, vmem_bytes: int):
  """Backend compiler parameters; `vmem_bytes` estimates Mosaic's residency."""
  if cfg.interpret:
    return None
  if cfg.backend == "triton":
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
    tuning = cfg.triton
    return plgpu.CompilerParams(
        num_warps=tuning.num_warps_bwd if backward else tuning.num_warps,
        num_stages=tuning.num_stages)
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  vmem_limit = None  # The default scoped limit suffices for short sequences.
  if vmem_bytes > 8 * 2**20:
    vmem_limit = min(vmem_bytes + 16 * 2**20, _MAX_VMEM_BYTES)
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel"),
      vmem_limit_bytes=vmem_limit)


def _resident_vmem_bytes(tokens: int, dim: int, itemsize: int,
                         num_token_operands: int, num_row_operands: int,
                         num_key_operands: int) -> int:
  """Double-buffered VMEM held by whole-sequence blocks on TPU.

  VMEM holds arrays in (8 sublane x 128 lane) tiles: a `[N, D]` block with
  D < 128 occupies full 128-lane rows (the compiler reports `f32[16384, 64]`
  as 8 MiB, not 4), an `[N, 1]` f32 column full 128-lane tiles, and a
  `[N // b, 1, b]` key vector full 8-sublane tiles.
  """
  lanes = -(-dim // 128) * 128
  per_buffer = (num_token_operands * tokens * lanes * itemsize
                + num_row_operands * tokens * 128 * 4
                + num_key_operands * tokens * 8 * 4)
  return 2 * per_buffer


def _pallas(kernel, cfg, grid, in_specs, out_specs, out_shape, name,
            backward, vmem_bytes):
  return pl.pallas_call(
      functools.partial(kernel, cfg=cfg),
      grid=grid,
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_compiler_params(cfg, backward, vmem_bytes),
      interpret=cfg.interpret,
      name=name,
  )


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
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), row],
      name="flash_attention_forward", backward=False,
      vmem_bytes=_resident_vmem_bytes(cfg.nk_pad, dim, q.dtype.itemsize, 2, 0,
                                      2),
  )(q, k, v, _key_vector(key_bias, bk), _key_vector(key_valid, bk))


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
  lse = _mask_padded_rows(cfg, lse)
  # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij: the D_i of FlashAttention-2.
  delta = jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32), -1)
  if cfg.backend == "triton":
    delta = delta.transpose(0, 2, 1)  # [B, N, H] -> [B, H, N]
  delta = delta[..., None]
  kbias, kvalid = _key_vector(key_bias, bk), _key_vector(key_valid, bk)
  itemsize = q.dtype.itemsize

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
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype),
                 jax.ShapeDtypeStruct((batch, heads, nkb, 1, bk),
                                      jnp.float32)],
      name="flash_attention_dkdv", backward=True,
      vmem_bytes=_resident_vmem_bytes(cfg.nq_pad, dim, itemsize, 2, 2, 0),
  )(q, k, v, kbias, kvalid, dout, lse, delta)

  dq = _pallas(
      _dq_kernel, cfg,
      grid=(batch, heads, cfg.nq_pad // bq),
      in_specs=[_token_spec(cfg, bq, cfg.nq_pad, dim),
                _token_spec(cfg, None, cfg.nk_pad, dim),
                _token_spec(cfg, None, cfg.nk_pad, dim),
                _key_spec(bk, nkb, tiled=False),
                _key_spec(bk, nkb, tiled=False),
                _token_spec(cfg, bq, cfg.nq_pad, dim),
                _row_spec(bq, cfg.nq_pad),
                _row_spec(bq, cfg.nq_pad)],
      out_specs=_token_spec(cfg, bq, cfg.nq_pad, dim),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      name="flash_attention_dq", backward=True,
      vmem_bytes=_resident_vmem_bytes(cfg.nk_pad, dim, itemsize, 2, 0, 2),
  )(q, k, v, kbias, kvalid, dout, lse, delta)

  dbias = dbias.sum(axis=1).reshape(key_bias.shape)
  return dq, dk, dv, dbias


def _key_mass(q, k, key_bias, key_valid, lse, cfg: _Config):
  batch, heads, dim = _dims(cfg, q)
  bk = cfg.blocks.block_k_bwd
  nkb = cfg.nk_pad // bk
  lse = _mask_padded_rows(cfg, lse)
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
      out_shape=jax.ShapeDtypeStruct((batch, heads, nkb, 1, bk), jnp.float32),
      name="flash_attention_key_mass", backward=True,
      vmem_bytes=_resident_vmem_bytes(cfg.nq_pad, dim, q.dtype.itemsize, 1, 1,
                                      0),
  )(q, k, _key_vector(key_bias, bk), _key_vector(key_valid, bk), lse)
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
    block_sizes: optional `BlockSizes`; defaults per backend.
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
  nq_pad = _round_up(nq, math.lcm(blocks.block_q, blocks.block_q_bwd))
  nk_pad = _round_up(nk, math.lcm(blocks.block_k, blocks.block_k_bwd))
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
