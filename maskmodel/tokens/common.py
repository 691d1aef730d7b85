"""Bookkeeping shared by the token reducers.

Every reducer works on a batch of tokens `x [B, N, D]` with sizes
`size [B, N, 1]` (how many input patches each token stands for, ToMe's
"token size") and, when asked, a source map `source [B, N0]` int32 (ToMe's
"source tracing"): for each of the N0 input tokens, the index of the current
token that holds it, or `PRUNED` (-1) once a pruning method has dropped it.
That is O(N0) memory where ToMe's one-hot `[B, N, N0]` map is O(N N0) (4.3 GB
at N0 = 4,096 and batch 64); `dense_source` builds the one-hot map for the
few places that want it (tests, figures). Shapes never depend on data: the
number of tokens kept is a static Python int.
"""
from __future__ import annotations

import operator
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
PRUNED = -1   # source-map entry of an input token no output token holds


class Reduced(NamedTuple):
  """What every reducer returns (a pytree, so it passes through `jit`)."""
  x: jax.Array                      # [B, K, D] reduced tokens
  size: jax.Array                   # [B, K, 1] float32 token sizes
  source: Optional[jax.Array] = None  # [B, N0] int32 index map, if tracked
  graph: Optional[jax.Array] = None   # [B, K-1, K-1] GTP-ViT's token graph


def init_size(x):
  """Sizes of fresh tokens: every token stands for one patch."""
  return jnp.ones(x.shape[:2] + (1,), jnp.float32)


def init_source(x):
  """Identity index map `[B, N]` int32 for tokens not reduced yet: input
  token j is held by token j."""
  b, n = x.shape[:2]
  return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))


def relabel(source, label):
  """Carries the index map `source [B, N0]` through one reduction.

  `label [B, N]` gives each current token's output slot, or a negative value
  when it is dropped. A gather of N0 entries: each input follows its holder.
  """
  if source is None:
    return None
  label = label.astype(jnp.int32)
  moved = jnp.take_along_axis(label, jnp.maximum(source, 0), axis=1)
  return jnp.where((source >= 0) & (moved >= 0), moved, PRUNED)


def kept_label(idx, num_tokens):
  """`label [B, N]` of a pruning step that keeps the tokens `idx [B, K]`
  (output slot k holds token idx[b, k]); the others are dropped."""
  b, k = idx.shape
  label = jnp.full((b, num_tokens), PRUNED, jnp.int32)
  slots = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
  return jax.vmap(lambda lab, i, s: lab.at[i].set(s))(label, idx, slots)


def dense_source(source, num_tokens):
  """The one-hot source map `[B, K, N0]` float32 of the index map
  `source [..., N0]` (`K = num_tokens`): row k marks the inputs token k
  holds, as ToMe's `merge_source` gives. For figures and tests only; it is
  O(K N0) memory."""
  return jnp.swapaxes(jax.nn.one_hot(source, num_tokens, dtype=jnp.float32),
                      -1, -2)


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
                 relabel(source, kept_label(idx, x.shape[1])))


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
  label = jnp.where((label >= 0) & (label < num_out), label, PRUNED)
  return Reduced(new_x, new_size, relabel(source, label))


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
