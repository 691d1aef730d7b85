"""Kernels: one public entry point per op, with an `impl` switch.

`impl` is one of auto|xla|pallas|interpret (see `dispatch.py`). Each Pallas
kernel has a plain-jnp reference that defines its semantics.
`inference_compiler_options(rows)` gives the `jax.jit` compiler options for
a forward pass on the current backend.
"""
from maskmodel.kernels.attention import (AttentionStats, attention,
                                         attention_probs, attention_reference)
from maskmodel.kernels.dispatch import IMPLS, inference_compiler_options
from maskmodel.kernels.matching import token_matching, token_matching_reference
