"""Bookkeeping shared by the token reducers.

Every reducer works on a batch of tokens `x [B, N, D]` with sizes
`size [B, N, 1]` (how many input patches each token stands for, ToMe's
"token size") and, when asked, a source map `source [B, N, N0]`: row i is the
0/1 indicator of the input tokens that token i now holds (ToMe's "source
tracing"). Shapes never depend on data: the number of tokens kept is a static
Python int.
"""
from __future__ import annotations

import operator
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


class Reduced(NamedTuple):
  """What every reducer returns (a pytree, so it passes through `jit`)."""
  x: jax.Array                      # [B, K, D] reduced tokens
  size: jax.Array                   # [B, K, 1] float32 token sizes
  source: Optional[jax.Array] = None  # [B, K, N0] source map, if tracked
  graph: Optional[jax.Array] = None   # [B, K-1, K-1] GTP-ViT's token graph


def init_size(x):
  """Sizes of fresh tokens: every token stands for one patch."""
  return jnp.ones(x.shape[:2] + (1,), jnp.float32)


def init_source(x):
  """Identity source map `[B, N, N]` for tokens that have not been reduced."""
  b, n = x.shape[:2]
  return jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (b, n, n))


def l2_normalize(v, eps=1e-6):
  """Rows scaled to unit L2 norm, in float32; all-zero rows stay zero."""
  v = v.astype(jnp.float32)
  norm = jnp.linalg.norm(v, axis=-1, keepdims=True)
  return v / jnp.maximum(norm, eps)


def cosine_similarity(a, b=None):
  """`[B, Na, Nb]` cosine similarity between the rows of a and b (default a)."""
  a = l2_normalize(a)
  b = a if b is None else l2_normalize(b)
  return jnp.einsum("bic,bjc->bij", a, b, precision=_HIGHEST)


def gather_tokens(x, idx):
  """`x[b, idx[b, k]]` for `x [B, N, ...]` and `idx [B, K]`."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def keep_tokens(x, size, source, idx):
  """Pruning: keep the tokens `idx [B, K]` (and their sizes and sources)."""
  if size is None:
    size = init_size(x)
  return Reduced(gather_tokens(x, idx), gather_tokens(size, idx),
                 None if source is None else gather_tokens(source, idx))


def merge_by_assignment(x, size, source, label, num_out):
  """Size-weighted mean of the tokens assigned to each output slot.

  `label [B, N]` gives each input token's output slot in `[0, num_out)`; a
  label outside that range drops the token. Uses a one-hot matmul (exact for
  disjoint groups, and MXU-friendly), so every slot must receive a token.
  """
  onehot = jax.nn.one_hot(label, num_out, dtype=jnp.float32)  # [B, N, K]
  size = init_size(x) if size is None else size.astype(jnp.float32)
  new_size = jnp.einsum("bnk,bno->bko", onehot, size, precision=_HIGHEST)
  total = jnp.einsum("bnk,bnd->bkd", onehot, x.astype(jnp.float32) * size,
                     precision=_HIGHEST)
  new_x = (total / new_size).astype(x.dtype)
  new_source = None
  if source is not None:
    new_source = jnp.einsum("bnk,bnm->bkm", onehot, source.astype(jnp.float32),
                            precision=_HIGHEST)
  return Reduced(new_x, new_size, new_source)


def with_class_token(idx, class_token):
  """Prepend index 0 (the [CLS] token) to indices of the other tokens.

  `idx [B, K]` counts from the first non-class token; the result counts from
  the start of the sequence.
  """
  if not class_token:
    return idx
  cls = jnp.zeros(idx.shape[:1] + (1,), idx.dtype)
  return jnp.concatenate([cls, idx + 1], axis=1)


def static_int(value, name):
  """`value` as a Python int; traced or non-integer values are refused."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a static Python int, got {value!r}.")
  try:
    return operator.index(value)
  except TypeError:
    raise TypeError(f"{name} must be a static Python int (shapes may not "
                    f"depend on data), got {type(value).__name__}.") from None


def check_keep(keep, num_tokens, class_token, method):
  """Validates `keep`, the number of tokens left (class token included)."""
  keep = static_int(keep, "keep")
  protected = int(bool(class_token))
  if keep <= 0:
    raise ValueError(f"{method}: keep={keep} must be a positive int, the "
                     "number of tokens left after reduction (class token "
                     "included).")
  if keep > num_tokens:
    raise ValueError(f"{method}: keep={keep} exceeds the {num_tokens} tokens "
                     "given; pass keep <= the number of input tokens.")
  if keep < protected + 1:
    raise ValueError(f"{method}: keep={keep} leaves no token besides the class "
                     f"token; pass keep >= {protected + 1}.")
  return keep
