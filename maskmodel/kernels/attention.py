"""Multi-head attention: the single entry point every model calls.

Layout is `[B, N, H, D]` (batch, tokens, heads, head dim), the layout of
`jax.nn.dot_product_attention`. `bias` is a per-key additive vector `[B, Nk]`
(ToMe's proportional attention passes log(size)); `kv_mask` is `[B, Nk]` with
True = attend.

`impl="pallas"` (and `auto` where the kernel is validated, see
`dispatch.VALIDATED_PLATFORMS`) runs the FlashAttention kernels of
`flash_attention.py`; `impl="xla"` runs `attention_reference` (or, lowered
for a GPU, `jax.nn.dot_product_attention`, which has the same semantics).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from maskmodel.kernels import flash_attention as flash
from maskmodel.kernels.dispatch import IMPLS, by_platform

__all__ = ["AttentionStats", "IMPLS", "attention", "attention_probs",
           "attention_reference"]


class AttentionStats(NamedTuple):
  """Attention statistics that token reducers read, all `[B, H, Nk]` f32.

  cls_probs: the softmax row of query 0 (the [CLS] token's attention), as
    used by attention-score pruning (e.g. EViT, ATS).
  key_mass: for each key, the sum over queries of the probability it
    receives (the column sums of the attention matrix).
  """
  cls_probs: jax.Array
  key_mass: jax.Array


def _heads_first(x):
  """`[B, N, H, D] -> [B, H, N, D]`.

  Both attention products then batch over leading (B, H) dimensions. Written
  as einsums over the `[B, N, H, D]` layout, XLA's CPU backend lowered them
  to batched dots that re-gather the operands for every (batch, head): ViT-B
  attention (batch 8, 197 tokens) ran 2.5x slower than with one transpose
  up front.
  """
  return jnp.swapaxes(x, 1, 2)


def _logits(q, k, bias, kv_mask, causal):
  """`[B, H, Nq, Nk]` f32 logits of q `[B, Nq, H, D]` and k `[B, Nk, H, D]`.

  The 1/sqrt(d) scale is applied to q (`Nq x D` multiplies), not to the
  logits (`Nq x Nk`).
  """
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum("bhqd,bhkd->bhqk", _heads_first(q), _heads_first(k),
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias[:, None, None, :].astype(jnp.float32)
  big_neg = jnp.finfo(jnp.float32).min
  if kv_mask is not None:
    logits = jnp.where(kv_mask[:, None, None, :], logits, big_neg)
  if causal:
    nq, nk = q.shape[1], k.shape[1]
    tri = jnp.tril(jnp.ones((nq, nk), bool), k=nk - nq)
    logits = jnp.where(tri, logits, big_neg)
  return logits


def attention_probs(q, k, *, bias=None, kv_mask=None, causal=False):
  """The `[B, H, Nq, Nk]` f32 softmax probabilities of `attention_reference`.

  Materializes the full attention matrix, which the kernels never do: for
  the few methods that read the whole attention graph (Zero-TPrune).
  """
  return jax.nn.softmax(_logits(q, k, bias, kv_mask, causal), axis=-1)


def attention_reference(q, k, v, *, bias=None, kv_mask=None, causal=False,
                        return_stats=False):
  """Plain-jnp softmax(q k^T / sqrt(d) + bias) v; the reference for kernels.

  Hidden logits (kv_mask False, or above the causal diagonal) are set to
  `finfo(f32).min`, so a query that sees no key averages all values. The
  causal mask is bottom-right aligned: query i sees key j iff
  `j <= i + Nk - Nq`. With `return_stats`, also returns `AttentionStats`
  (built from the full `[B, H, Nq, Nk]` probabilities).

  The softmax is normalized after the values product, `(e v) / sum(e)` with
  `e = exp(s - max s)`, as flash attention does: one `Nq x D` division
  instead of an `Nq x Nk` one; on XLA's CPU backend that pass is memory
  bound (`benchmarks/README.md` has the ViT-B/16 and MAE step timings
  before and after). The max is a constant shift of the logits, so it
  carries no gradient.
  """
  logits = _logits(q, k, bias, kv_mask, causal)
  shift = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
  unnorm = jnp.exp(logits - shift)
  denom = unnorm.sum(axis=-1, keepdims=True)
  out = jnp.einsum("bhqk,bhkd->bhqd", unnorm.astype(v.dtype), _heads_first(v),
                   preferred_element_type=jnp.float32) / denom
  out = _heads_first(out.astype(v.dtype))
  if not return_stats:
    return out
  probs = jax.lax.stop_gradient(unnorm / denom)
  return out, AttentionStats(cls_probs=probs[:, :, 0, :],
                             key_mass=probs.sum(axis=2))


def _xla_attention(q, k, v, bias, kv_mask, causal, use_dot_product_attention):
  """The `xla` implementation; on GPU it goes through the JAX library op."""
  nq, nk = q.shape[1], k.shape[1]
  # jax.nn's causal mask is top-left aligned; ours is bottom-right.
  if not use_dot_product_attention or (causal and nq != nk):
    return attention_reference(q, k, v, bias=bias, kv_mask=kv_mask,
                               causal=causal)
  return jax.nn.dot_product_attention(
      q, k, v,
      bias=None if bias is None else bias[:, None, None, :],
      mask=None if kv_mask is None else kv_mask[:, None, None, :],
      is_causal=causal)


def _xla_branches(causal, return_stats):
  """The `xla` path per lowering platform (see `dispatch.by_platform`)."""
  if return_stats:
    def with_stats(q, k, v, bias, kv_mask):
      out, stats = attention_reference(q, k, v, bias=bias, kv_mask=kv_mask,
                                       causal=causal, return_stats=True)
      return out, stats.cls_probs, stats.key_mass
    return {None: with_stats}
  branch = lambda dpa: lambda q, k, v, bias, kv_mask: _xla_attention(
      q, k, v, bias, kv_mask, causal, use_dot_product_attention=dpa)
  return {None: branch(False), "cuda": branch(True)}


def _auto_kernel(q) -> bool:
  """Whether `auto` may pick the kernel for these inputs.

  f32 and bf16 with a head dim up to 128: the configurations that ptxas
  has checked for sm_80, sm_86, sm_89 and sm_90a (shared memory within each
  arch's limit, spills within the bounds of `tests/test_gpu_compile.py`).
  """
  return q.dtype in (jnp.float32, jnp.bfloat16) and q.shape[-1] <= 128


def attention(q, k, v, *, bias=None, kv_mask=None, causal=False, impl="auto",
              return_stats=False):
  """Attention over `[B, N, H, D]` inputs; `impl` in auto|xla|pallas|interpret.

  Args:
    q: `[B, Nq, H, D]`; k, v: `[B, Nk, H, D]`.
    bias: optional `[B, Nk]` additive logit per key (differentiable).
    kv_mask: optional `[B, Nk]` bool, True = attend.
    causal: bottom-right aligned causal mask.
    impl: `xla` (jnp reference; lowered for a GPU,
      `jax.nn.dot_product_attention`, whose default is XLA), `pallas` (FlashAttention kernel compiled for
      GPU/TPU), `interpret` (same kernel, Pallas interpreter; runs on CPU),
      `auto` (`pallas` on the platforms in
      `dispatch.VALIDATED_PLATFORMS["attention"]`, for f32 and bf16 with a
      head dim up to 128; `xla` elsewhere).
    return_stats: also return `AttentionStats`; the statistics carry no
      gradient. The kernels compute them without an `[Nq, Nk]` buffer.

  Returns:
    `[B, Nq, H, D]` in q's dtype, or `(out, AttentionStats)`.
  """
  kernel = functools.partial(flash.flash_attention, causal=causal,
                             return_stats=return_stats)
  result = by_platform("attention", impl, (q, k, v, bias, kv_mask),
                       kernel=kernel, xla=_xla_branches(causal, return_stats),
                       auto_kernel=_auto_kernel(q))
  if not return_stats:
    return result
  out, cls_probs, key_mass = result
  return out, AttentionStats(cls_probs=cls_probs, key_mass=key_mass)
