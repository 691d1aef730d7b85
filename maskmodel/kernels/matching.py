"""Token matching: the core of ToMe's bipartite soft matching.

For each row of A `[B, Na, C]` find its most similar row of B `[B, Nb, C]`
(dot product of pre-normalized metrics, i.e. cosine similarity).
"""
from __future__ import annotations

import jax.numpy as jnp

from maskmodel.kernels.attention import _check_impl


def token_matching_reference(a, b, *, class_token=False):
  """Returns (node_max [B, Na] f32, node_idx [B, Na] int32).

  With `class_token`, A's row 0 (the [CLS] token) scores -inf so it is never
  chosen for merging, as in ToMe's `bipartite_soft_matching`.
  """
  scores = jnp.einsum("bac,bnc->ban", a, b, preferred_element_type=jnp.float32)
  node_max = scores.max(axis=-1)
  node_idx = scores.argmax(axis=-1).astype(jnp.int32)
  if class_token:
    node_max = node_max.at[:, 0].set(-jnp.inf)
  return node_max, node_idx


def token_matching(a, b, *, class_token=False, impl="auto"):
  """Best B match for each A row; `impl` in auto|xla|pallas|interpret."""
  impl = _check_impl(impl)
  if impl != "xla":
    raise ValueError(f"token_matching impl={impl!r} is not available in this "
                     "build; use impl='xla'.")
  return token_matching_reference(a, b, class_token=class_token)
