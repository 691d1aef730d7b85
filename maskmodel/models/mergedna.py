"""MergeDNA's networks: a learned tokenizer of local token merging, latent
Transformers over the merged tokens, and a local decoder back to bases.

Li et al. 2026, "MergeDNA: Context-aware Genome Modeling with Dynamic
Tokenization through Token Merging" (AAAI 2026, arXiv 2511.14806), Sec. 3.2.
There is no official code; where the paper leaves a choice, this file names
it.

- `LocalEncoder` (the tokenizer): base embeddings plus learned positions,
  then blocks of attention restricted to windows of `window` bases, each
  followed by ToMe's bipartite soft matching inside its window (between
  attention and MLP, as ToMe places it). Matching is `tokens.merge`'s
  `bipartite_soft_matching` on the head-averaged keys; the merge is its
  size-weighted average (`merge_wavg`) and the source map goes through
  `merge_source`. Choice: to chunk *adjacent* bases into words, as the
  paper describes, the matching metric is `adjacent_metric`: the keys'
  cosine (weight 1 - `ADJACENCY`) joined with a position code under which
  a token's two neighbours in sequence order always outscore every other
  token, so an A token can only merge into a neighbouring B token, and after
  each merge the window's tokens are put back in sequence order
  (`sort_by_first_base`). Every token then holds one contiguous run of
  bases inside one window. The number of tokens each window keeps after
  each block is static (`keep` per block). `local_merge="fixed"` is the
  ablation of a fixed k-mer tokenizer at the same L (`fixed_merge`, all
  in the first block, so the groups are equal runs of bases).
- `LatentStack`: pre-LN `SeqBlock`s with full attention over the merged
  tokens; the latent encoder and the latent decoder are two of them. With a
  `SeqTokenReduction` plan (ToMe, no [CLS]) the latent encoder merges its
  tokens further, which MergeDNA's second loss term uses.
- `LocalDecoder`: each base takes back its own token's output (`unmerge`,
  a gather through the source map), adds its own learned position (the
  tokens of a group are otherwise identical), then window attention blocks,
  a final LayerNorm and a Dense head over the vocabulary.

The source map is `maskmodel.tokens`' index map `source [B, N]`: for each
base, the index of the merged token that holds it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskmodel import tokens
from maskmodel.models import norm as norm_lib
from maskmodel.models import registry
from maskmodel.models.seq import num_tokens as seq_num_tokens
from maskmodel.models.seq import (SeqAttention, SeqBlock, SeqTokenReduction,
                                  _Mlp, check_length, check_token_ids,
                                  dense_init, embed_init)
from maskmodel.models.vit import token_dense
from maskmodel.tokens.common import (gather_tokens, l2_normalize,
                                     merge_by_assignment, relabel)

# Weight of the position code in the matching metric. Neighbours score
# 0.5 * ADJACENCY + (1 - ADJACENCY) * cos >= 0.35, every other token at most
# (1 - ADJACENCY) = 0.1, so only neighbours can match; among neighbours the
# order is that of the keys' cosine.
ADJACENCY = 0.9


def adjacent_metric(keys_mean):
  """ToMe's matching metric `[G, w, C]` restricted to neighbours.

  Row p becomes `[sqrt(1 - a) k_p / |k_p|, sqrt(a) e_p]`, a unit vector, with
  `e_p = (onehot(p) + onehot(p + 1)) / sqrt(2)` over w + 1 slots (a =
  `ADJACENCY`). Then `e_p . e_q` is 1/2 for |p - q| = 1 and 0 for |p - q| >=
  2, so in bipartite matching (A = even, B = odd positions) an A token's
  best B token is one of its two neighbours.
  """
  g, w, _ = keys_mean.shape
  unit = l2_normalize(keys_mean)
  pos = jnp.arange(w)
  code = (jax.nn.one_hot(pos, w + 1) + jax.nn.one_hot(pos + 1, w + 1))
  code = jnp.broadcast_to(code / math.sqrt(2.0), (g, w, w + 1))
  return jnp.concatenate([unit * math.sqrt(1 - ADJACENCY),
                          code * math.sqrt(ADJACENCY)], axis=-1)


def sort_by_first_base(x, size, source):
  """Puts the tokens of each window `[G, K, ...]` back in sequence order,
  by the first base each holds (`source [G, W]`, window-local)."""
  g, k = x.shape[:2]
  w = source.shape[1]
  first = jax.vmap(lambda s: jnp.full((k,), w, jnp.int32).at[s].min(
      jnp.arange(w, dtype=jnp.int32)))(source)
  order = jnp.argsort(first, axis=1)                       # new -> old
  new_slot = jnp.argsort(order, axis=1)                    # old -> new
  return (gather_tokens(x, order), gather_tokens(size, order),
          relabel(source, new_slot))


def local_merge(x, size, source, keys, keep: int):
  """One local merging step on windows `x [G, w, D]`: adjacent-only ToMe
  (`adjacent_metric`) down to `keep` tokens, in sequence order."""
  r = x.shape[1] - keep
  merge, unmerge = tokens.bipartite_soft_matching(
      adjacent_metric(keys.mean(axis=2)), r, class_token=False)
  x, size = tokens.merge_wavg(merge, x, size)
  source = tokens.merge_source(unmerge, source, keep)
  return sort_by_first_base(x, size, source)


def fixed_merge(x, size, source, keep: int):
  """The ablation of a fixed tokenizer: the w tokens of each window merge
  into `keep` contiguous groups of (nearly) equal length, whatever they
  hold (a k-mer tokenization with k = w / keep), by size-weighted mean."""
  g, w = x.shape[:2]
  label = jnp.broadcast_to((jnp.arange(w) * keep) // w, (g, w))
  x, size, source, _ = merge_by_assignment(x, size, source, label, keep)
  return x, size, source


def to_windows(x, window: int):
  """`[B, N, ...] -> [B * N / window, window, ...]`."""
  b, n = x.shape[:2]
  return x.reshape((b * (n // window), window) + x.shape[2:])


def from_windows(x, batch: int):
  """`[B * nw, w, ...] -> [B, nw * w, ...]`."""
  return x.reshape((batch, -1) + x.shape[2:])


def window_source_to_global(source, batch: int, keep: int):
  """Window-local source maps `[B * nw, W]` (values in [0, keep)) as one map
  `[B, N]` into the `nw * keep` merged tokens of each sequence."""
  nw = source.shape[0] // batch
  offset = (jnp.arange(source.shape[0]) % nw) * keep
  return (source + offset[:, None]).reshape(batch, -1)


def unmerge(z, source):
  """Each base takes its token's vector: `z [B, L, D]`, `source [B, N]` ->
  `[B, N, D]` (ToMe's unmerge through an index map)."""
  return jnp.take_along_axis(z, source[..., None], axis=1)


def window_keep_schedule(window: int, keep: int, depth: int):
  """Tokens per window after each of `depth` merging blocks, `window` ->
  `keep`, removing as evenly as possible (earlier blocks first). A step
  that bipartite matching cannot take (more than half) is a ValueError."""
  removed = window - keep
  out, prev = [], window
  for i in range(depth):
    k = window - (removed * (i + 1) + depth - 1) // depth
    if prev - k > prev // 2:
      raise ValueError(f"the local encoder cannot merge {window} tokens per "
                       f"window to {keep} in {depth} blocks (ToMe removes at "
                       "most half per block); add local blocks or keep more.")
    out.append(k)
    prev = k
  return tuple(out)


class LocalMergeBlock(nn.Module):
  """Pre-LN block over windows `[G, w, D]`: attention inside each window,
  then (when `keep` < w) adjacent-only ToMe (`merge="learned"`) or fixed
  groups (`"fixed"`, `fixed_merge`), then the MLP."""
  num_heads: int
  mlp_dim: int
  keep: int
  layer_norm_eps: float = 1e-6
  attn_impl: str = "auto"
  merge: str = "learned"

  @nn.compact
  def __call__(self, x, size, source):
    ln = lambda name: norm_lib.LayerNorm(epsilon=self.layer_norm_eps, name=name)
    y, k = SeqAttention(self.num_heads, attn_impl=self.attn_impl,
                        name="attn")(ln("norm1")(x), None, False)
    x = x + y
    if self.keep < x.shape[1] and self.merge == "fixed":
      x, size, source = fixed_merge(x, size, source, self.keep)
    elif self.keep < x.shape[1]:
      x, size, source = local_merge(x, size, source, k, self.keep)
    return x + _Mlp(self.mlp_dim, name="mlp")(ln("norm2")(x)), size, source


class LocalEncoder(nn.Module):
  """Embeds bases and merges them within windows (module docstring).

  `__call__(ids) -> (z [B, L, D], size [B, L], source [B, N])` with L =
  (N / window) * keep[-1]; `size` counts the bases each token holds.
  """
  vocab_size: int
  max_len: int
  width: int
  num_heads: int
  mlp_dim: int
  window: int
  keep: tuple
  layer_norm_eps: float = 1e-6
  attn_impl: str = "auto"
  merge: str = "learned"

  @nn.compact
  def __call__(self, ids):
    b, n = ids.shape
    check_length(n, self.max_len)
    if not isinstance(ids, jax.core.Tracer):
      check_token_ids(ids, self.vocab_size)
    x = nn.Embed(self.vocab_size, self.width, embedding_init=embed_init,
                 name="token_embed")(ids).astype(jnp.float32)
    pos = self.param("pos_embed", embed_init, (self.max_len, self.width))
    x = to_windows(x + pos[None, :n], self.window)
    size = tokens.init_size(x)
    source = tokens.init_source(x)
    for i, keep in enumerate(self.keep):
      x, size, source = LocalMergeBlock(
          self.num_heads, self.mlp_dim, keep, self.layer_norm_eps,
          self.attn_impl, self.merge, name=f"block_{i}")(x, size, source)
    x = norm_lib.LayerNorm(epsilon=self.layer_norm_eps, name="norm")(x)
    keep = x.shape[1]
    return (from_windows(x, b), from_windows(size, b)[..., 0],
            window_source_to_global(source, b, keep))


class LatentStack(nn.Module):
  """Pre-LN `SeqBlock`s with full attention over `[B, L, D]`, then a
  LayerNorm. With `reduction` (a ToMe `SeqTokenReduction` for L tokens) the
  blocks merge tokens; `__call__` returns `(z, source [B, L])`, the source
  None without a reduction."""
  depth: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  attn_impl: str = "auto"
  reduction: Optional[SeqTokenReduction] = None

  @nn.compact
  def __call__(self, z):
    b, n = z.shape[:2]
    mask = jnp.ones((b, n), bool)
    plan = self.reduction
    size = source = None
    if plan is not None:
      size, source = tokens.init_size(z), tokens.init_source(z)
    for i in range(self.depth):
      z, size, source, mask = SeqBlock(
          self.num_heads, self.mlp_dim, "pre", False, self.layer_norm_eps,
          self.attn_impl, reduction=plan,
          keep=None if plan is None else plan.keep[i], layer=i,
          depth=self.depth, name=f"block_{i}")(z, mask, False, None, size,
                                               source)
    return norm_lib.LayerNorm(epsilon=self.layer_norm_eps, name="norm")(z), source


class LocalDecoder(nn.Module):
  """Unmerges `z [B, L, D]` through `source [B, N]` to the bases, adds
  learned base positions, runs window-attention blocks, and predicts each
  base: logits `[B, N, vocab_size]`."""
  vocab_size: int
  max_len: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  window: int
  layer_norm_eps: float = 1e-6
  attn_impl: str = "auto"

  @nn.compact
  def __call__(self, z, source):
    b, n = source.shape
    pos = self.param("pos_embed", embed_init, (self.max_len, self.width))
    x = to_windows(unmerge(z, source) + pos[None, :n], self.window)
    for i in range(self.depth):
      x = LocalMergeBlock(self.num_heads, self.mlp_dim, self.window,
                          self.layer_norm_eps, self.attn_impl,
                          name=f"block_{i}")(x, None, None)[0]
    x = norm_lib.LayerNorm(epsilon=self.layer_norm_eps, name="norm")(x)
    head = nn.Dense(self.vocab_size, kernel_init=dense_init, name="head")
    return token_dense(head, from_windows(x, b)).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class MergeDNANetworks:
  """The four networks of one compression level; their params are the same
  for every level (the level only sets how many tokens are kept)."""
  local_encoder: LocalEncoder
  latent_encoder: LatentStack
  latent_selector: LatentStack     # the latent encoder with ToMe to L / 2
  latent_decoder: LatentStack
  local_decoder: LocalDecoder
  num_latent: int                  # L
  num_selected: int                # tokens the latent ToMe keeps


def latent_keep_schedule(num_tokens: int, keep: int, depth: int):
  """Tokens after each latent block, `num_tokens` -> `keep`, evenly."""
  removed = num_tokens - keep
  return tuple(num_tokens - (removed * (i + 1) + depth - 1) // depth
               for i in range(depth))


def build_networks(m, num_bases: int, window_keep: int) -> MergeDNANetworks:
  """The networks of `config.model` (`mergedna_config`) for sequences of
  `num_bases` tokens whose windows each keep `window_keep` tokens."""
  common = dict(num_heads=m.num_heads, mlp_dim=m.mlp_dim,
                layer_norm_eps=m.get("layer_norm_eps", 1e-6),
                attn_impl=m.get("attn_impl", "auto"))
  num_latent = num_bases // m.window * window_keep
  merge = m.get("local_merge", "learned")
  if merge == "fixed":   # equal k-mers: the first block cuts the window
    keep = (window_keep,) * m.local_depth
  else:
    keep = window_keep_schedule(m.window, window_keep, m.local_depth)
  selected = max(1, int(round(num_latent * m.get("latent_keep", 0.5))))
  plan = SeqTokenReduction(
      method="tome", keep=latent_keep_schedule(num_latent, selected,
                                               m.latent_depth),
      num_tokens=num_latent, options=(), prop_attn=False, class_token=False)
  return MergeDNANetworks(
      local_encoder=LocalEncoder(
          m.vocab_size, m.max_len, m.width, window=m.window,
          keep=keep, merge=merge, **common),
      latent_encoder=LatentStack(m.latent_depth, **common),
      latent_selector=LatentStack(m.latent_depth, reduction=plan, **common),
      latent_decoder=LatentStack(m.latent_decoder_depth, **common),
      local_decoder=LocalDecoder(m.vocab_size, m.max_len, m.width,
                                 m.local_decoder_depth, window=m.window,
                                 **common),
      num_latent=num_latent, num_selected=selected)


def mergedna_config(**overrides):
  """A `config.model` for `model.name = "mergedna"`, with `overrides`."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(dict(
      name="mergedna", vocab_size=9, max_len=128, width=64, num_heads=4,
      mlp_dim=256, window=16, local_depth=2, latent_depth=2,
      latent_decoder_depth=1, local_decoder_depth=1,
      window_keep=(7, 8, 9), eval_window_keep=8, latent_keep=0.5,
      local_merge="learned",
      layer_norm_eps=1e-6, attn_impl="auto", dtype="float32"))
  c.update(overrides)
  return c


def _build(model_config, *, num_classes=0, num_tokens=None):
  """The registry's `build`: the local + latent encoder pair is not one
  module, so this gives the networks at the evaluation compression."""
  del num_classes
  m = model_config
  return build_networks(m, num_tokens or m.max_len, m.eval_window_keep)


def _describe(config) -> str:
  m = config.model
  return (f"MergeDNA width {m.width}: local encoder {m.local_depth} merging "
          f"blocks (window {m.window}, keeps {tuple(m.window_keep)} per "
          f"window), latent encoder {m.latent_depth}, latent decoder "
          f"{m.latent_decoder_depth}, local decoder {m.local_decoder_depth}")


registry.register("mergedna", build=_build, num_tokens=seq_num_tokens,
                  describe=_describe)
