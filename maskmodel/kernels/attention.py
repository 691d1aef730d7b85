"""Multi-head attention: the single entry point every model calls.

Layout is `[B, N, H, D]` (batch, tokens, heads, head dim), the layout of
`jax.nn.dot_product_attention`. `bias` is a per-key additive vector `[B, Nk]`
(ToMe's proportional attention passes log(size)); `kv_mask` is `[B, Nk]` with
True = attend.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "pallas", "interpret")


def _check_impl(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f"attention impl={impl!r} is unknown; use one of {IMPLS}.")
  if impl == "auto":
    return "xla"
  return impl


def attention_reference(q, k, v, *, bias=None, kv_mask=None, causal=False):
  """Plain-jnp softmax(q k^T / sqrt(d) + bias) v; the reference for kernels."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                      preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias[:, None, None, :].astype(jnp.float32)
  big_neg = jnp.finfo(jnp.float32).min
  if kv_mask is not None:
    logits = jnp.where(kv_mask[:, None, None, :], logits, big_neg)
  if causal:
    nq, nk = q.shape[1], k.shape[1]
    tri = jnp.tril(jnp.ones((nq, nk), bool), k=nk - nq)
    logits = jnp.where(tri, logits, big_neg)
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def attention(q, k, v, *, bias=None, kv_mask=None, causal=False, impl="auto"):
  """Attention over `[B, N, H, D]` inputs; `impl` in auto|xla|pallas|interpret."""
  impl = _check_impl(impl)
  if impl != "xla":
    raise ValueError(f"attention impl={impl!r} is not available in this build; "
                     "use impl='xla'.")
  return attention_reference(q, k, v, bias=bias, kv_mask=kv_mask, causal=causal)
