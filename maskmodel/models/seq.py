"""A Transformer over token sequences, with BERT's conventions as options.

BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding", Sec. 3 and Appendix A) is the
configuration `norm="post"`, `positions="learned"`, `type_vocab_size=2`,
`embed_norm=True`, `layer_norm_eps=1e-12`, `mlm_head=True`; with those
options the parameters map one to one onto a Hugging Face `BertModel`
checkpoint (`maskmodel.models.minilm` loads all-MiniLM-L6-v2 that way).

Options and what each reproduces:

- `positions`: "learned" adds a trained `[max_len, D]` table to the token
  embeddings (BERT, Sec. 3.2); "rope" rotates queries and keys by their
  position instead (RoFormer, Su et al. 2021, Eq. 34, in the half-split
  layout of GPT-NeoX and LLaMA) and adds nothing to the embeddings.
- `norm`: "pre" is x + f(LN(x)) with a final LayerNorm (GPT-2, and the
  ViT's blocks in `vit.py`); "post" is LN(x + f(x)) with no final
  LayerNorm (BERT, as in the original Transformer).
- `type_vocab_size` > 0 adds BERT's segment (token type) embeddings;
  `embed_norm` applies BERT's LayerNorm to the summed embeddings.
- `causal`: each position attends to itself and earlier positions only
  (GPT-style CLM); a call may override it (`causal=` in `__call__`), so one
  set of params serves a CLM phase and then an MLM phase.
- `mlm_head`: BERT's masked-LM head (`BertLMPredictionHead`): dense + GELU
  + LayerNorm, then a decoder tied to the token embedding matrix, plus an
  output bias.

Padding is a key mask: `mask [B, N]` (True = real token) goes to the
attention kernel as `kv_mask`, so no query ever reads a padded key. Shapes
are static; nothing depends on the data. Attention goes through
`maskmodel.kernels.attention`, like every model.

Token ids are checked on the host (`check_token_ids`): the model checks
them when it gets concrete ids, and skips the check under `jit`, where the
ids are tracers and an out-of-range id would silently read a clipped row.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskmodel.kernels import attention
from maskmodel.config import ConfigError
from maskmodel.models import norm as norm_lib
from maskmodel.models import registry
from maskmodel.models.vit import gelu, token_dense

Dtype = Any
POSITIONS = ("learned", "rope")
NORMS = ("pre", "post")
embed_init = nn.initializers.normal(stddev=0.02)   # BERT's initializer_range
dense_init = nn.initializers.normal(stddev=0.02)


def check_token_ids(ids, vocab_size: int):
  """Raises a one-line ValueError if a host-side id is outside [0, vocab).

  For ids that come from the host (tokenizers, data pipelines); under `jit`
  the ids are tracers and cannot be checked.
  """
  ids = np.asarray(ids)
  if ids.size == 0:
    return
  bad = (ids < 0) | (ids >= vocab_size)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"token id {int(ids[where])} at index {where} is outside "
                     f"[0, {vocab_size}) for this model's vocab_size={vocab_size}.")


def check_length(length: int, max_len: int):
  """A one-line ValueError for a sequence longer than the model's positions."""
  if length > max_len:
    raise ValueError(f"sequence of {length} tokens is longer than the model's "
                     f"max_len={max_len} positions; truncate it to {max_len}.")


def rope(x, positions, base: float = 10000.0):
  """Rotary position embedding (RoFormer, Su et al. 2021, Eq. 34).

  `x [B, N, H, D]`, `positions [N]`. Rotates each pair (x_i, x_{i+D/2}) by
  angle `pos * base^(-2i/D)`: the half-split layout of GPT-NeoX and LLaMA.
  Computed in f32 and cast back to x's dtype.
  """
  d = x.shape[-1]
  inv_freq = base ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  angles = positions.astype(jnp.float32)[:, None] * inv_freq[None]   # [N, D/2]
  cos = jnp.cos(angles)[None, :, None, :]
  sin = jnp.sin(angles)[None, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin],
                         axis=-1).astype(x.dtype)


class SeqAttention(nn.Module):
  """Fused-qkv self-attention with a key mask, causal option and RoPE."""
  num_heads: int
  use_rope: bool = False
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, causal):
    b, n, width = x.shape
    head_dim = width // self.num_heads
    qkv = token_dense(nn.Dense(3 * width, dtype=self.dtype,
                               kernel_init=dense_init, name="qkv"), x)
    q, k, v = jnp.split(qkv.reshape(b, n, 3 * self.num_heads, head_dim), 3,
                        axis=2)
    if self.use_rope:
      positions = jnp.arange(n)
      q, k = rope(q, positions), rope(k, positions)
    out = attention(q, k, v, kv_mask=mask, causal=causal, impl=self.attn_impl)
    return token_dense(nn.Dense(width, dtype=self.dtype, kernel_init=dense_init,
                                name="proj"), out.reshape(b, n, width))


class SeqBlock(nn.Module):
  """One Transformer block, pre-LN or post-LN (BERT's `BertLayer`)."""
  num_heads: int
  mlp_dim: int
  norm: str = "pre"
  use_rope: bool = False
  layer_norm_eps: float = 1e-6
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, causal):
    ln = lambda name: norm_lib.LayerNorm(epsilon=self.layer_norm_eps, name=name)
    attn = SeqAttention(self.num_heads, self.use_rope, self.attn_impl, self.dtype,
                        name="attn")
    mlp = _Mlp(self.mlp_dim, self.dtype, name="mlp")
    if self.norm == "pre":
      x = x + attn(ln("norm1")(x), mask, causal)
      return x + mlp(ln("norm2")(x))
    x = ln("norm1")(x + attn(x, mask, causal))
    return ln("norm2")(x + mlp(x))


class _Mlp(nn.Module):
  """Dense -> exact GELU -> Dense (BERT's intermediate and output dense)."""
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = token_dense(nn.Dense(self.mlp_dim, dtype=self.dtype,
                             kernel_init=dense_init, name="Dense_0"), x)
    return token_dense(nn.Dense(x.shape[-1], dtype=self.dtype,
                                kernel_init=dense_init, name="Dense_1"),
                       gelu(h))


class SeqModel(nn.Module):
  """Transformer encoder (or decoder, with `causal`) over `[B, N]` token ids.

  `__call__(ids, mask=None, token_types=None, causal=None,
  mlm_positions=None)` returns a dict:
  - `tokens [B, N, D]`: the last hidden states (after the final LayerNorm
    for pre-LN);
  - `pooled [B, D]`: their mean over real tokens (`mask`-weighted), the
    sentence-transformers pooling;
  - `logits [B, num_classes]` when `num_classes` > 0, from `pooled`;
  - `mlm_logits` when `mlm_head`: `[B, N, V]`, or `[B, M, V]` at
    `mlm_positions [B, M]` only (BERT gathers the masked positions first).

  `mask [B, N]` bool, True = real token (default: all real); padded keys
  are never attended. `token_types [B, N]` are BERT's segment ids (default
  zeros), used only when `type_vocab_size` > 0.
  """
  vocab_size: int
  max_len: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  positions: str = "learned"     # learned | rope
  norm: str = "pre"              # pre | post
  type_vocab_size: int = 0
  embed_norm: bool = False
  layer_norm_eps: float = 1e-6
  causal: bool = False
  mlm_head: bool = False
  num_classes: int = 0
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.positions not in POSITIONS:
      raise ValueError(f"positions={self.positions!r} is unknown; use one of "
                       f"{POSITIONS}.")
    if self.norm not in NORMS:
      raise ValueError(f"norm={self.norm!r} is unknown; use one of {NORMS}.")
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} is not divisible by "
                       f"num_heads={self.num_heads}.")
    self.token_embed = nn.Embed(self.vocab_size, self.width,
                                embedding_init=embed_init, name="token_embed")
    if self.positions == "learned":
      self.pos_embed = self.param("pos_embed", embed_init,
                                  (self.max_len, self.width))
    if self.type_vocab_size:
      self.type_embed = nn.Embed(self.type_vocab_size, self.width,
                                 embedding_init=embed_init, name="type_embed")
    ln = lambda name: norm_lib.LayerNorm(epsilon=self.layer_norm_eps, name=name)
    if self.embed_norm:
      self.embed_ln = ln("embed_norm")
    self.blocks = [
        SeqBlock(self.num_heads, self.mlp_dim, self.norm,
                 self.positions == "rope", self.layer_norm_eps, self.attn_impl,
                 self.dtype, name=f"block_{i}") for i in range(self.depth)]
    if self.norm == "pre":
      self.final_norm = ln("norm")
    if self.mlm_head:
      self.mlm_dense = nn.Dense(self.width, dtype=self.dtype,
                                kernel_init=dense_init, name="mlm_dense")
      self.mlm_norm = ln("mlm_norm")
      self.mlm_bias = self.param("mlm_bias", nn.initializers.zeros,
                                 (self.vocab_size,))
    if self.num_classes:
      self.head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                           name="head")

  def mlm_logits(self, x):
    """BERT's `BertLMPredictionHead`: transform, then the tied decoder."""
    h = self.mlm_norm(gelu(token_dense(self.mlm_dense, x)))
    logits = self.token_embed.attend(h.astype(self.dtype))
    return logits.astype(jnp.float32) + self.mlm_bias

  def __call__(self, ids, mask=None, token_types=None, causal=None,
               mlm_positions=None):
    b, n = ids.shape
    check_length(n, self.max_len)
    if not isinstance(ids, jax.core.Tracer):
      check_token_ids(ids, self.vocab_size)
    if mask is None:
      mask = jnp.ones((b, n), bool)
    mask = mask.astype(bool)
    causal = self.causal if causal is None else causal
    x = self.token_embed(ids).astype(jnp.float32)
    if self.positions == "learned":
      x = x + self.pos_embed[None, :n]
    if self.type_vocab_size:
      types = jnp.zeros_like(ids) if token_types is None else token_types
      x = x + self.type_embed(types)
    if self.embed_norm:
      x = self.embed_ln(x)
    for block in self.blocks:
      x = block(x, mask, causal)
    if self.norm == "pre":
      x = self.final_norm(x)
    weight = mask[..., None].astype(x.dtype)
    pooled = (x * weight).sum(1) / jnp.maximum(weight.sum(1), 1.0)
    out = {"tokens": x, "pooled": pooled}
    if self.num_classes:
      out["logits"] = self.head(pooled)
    if self.mlm_head:
      h = x if mlm_positions is None else jnp.take_along_axis(
          x, mlm_positions[..., None], axis=1)
      out["mlm_logits"] = self.mlm_logits(h)
    return out


def seq(model_config, *, num_classes=0, num_tokens=None) -> SeqModel:
  """The `SeqModel` of `config.model` (`model.name = "seq"`).

  Needs vocab_size, max_len, width, depth, num_heads; mlp_dim defaults to
  4 x width, and every other field to `SeqModel`'s default (a pre-LN
  encoder with learned positions).
  """
  del num_tokens   # the model's shapes follow its input
  m = model_config
  missing = [k for k in ("vocab_size", "max_len", "width", "depth",
                         "num_heads") if k not in m]
  if missing:
    raise ConfigError(f"model.name='seq' needs model.{', model.'.join(missing)}"
                      "; start from maskmodel.models.seq.seq_config().")
  for key, choices in (("positions", POSITIONS), ("norm", NORMS)):
    if m.get(key, choices[0]) not in choices:
      raise ConfigError(f"model.{key}={m.get(key)!r} is unknown; use one of "
                        f"{choices}.")
  if m.width % m.num_heads:
    raise ConfigError(f"model.width={m.width} is not divisible by "
                      f"model.num_heads={m.num_heads}.")
  from maskmodel.models import build  # pylint: disable=g-import-not-at-top
  return SeqModel(
      vocab_size=m.vocab_size, max_len=m.max_len, width=m.width,
      depth=m.depth, num_heads=m.num_heads,
      mlp_dim=m.get("mlp_dim", 4 * m.width),
      positions=m.get("positions", "learned"), norm=m.get("norm", "pre"),
      type_vocab_size=m.get("type_vocab_size", 0),
      embed_norm=m.get("embed_norm", False),
      layer_norm_eps=m.get("layer_norm_eps", 1e-6),
      causal=m.get("causal", False), mlm_head=m.get("mlm_head", False),
      num_classes=num_classes, attn_impl=m.get("attn_impl", "auto"),
      dtype=build.dtype(m) if "dtype" in m else jnp.float32)


def seq_config(**overrides):
  """A `config.model` for `model.name = "seq"`: a small pre-LN encoder,
  with `overrides` applied (e.g. `**BERT_OPTIONS` for BERT's layout)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(dict(
      name="seq", vocab_size=256, max_len=128, width=128, depth=4,
      num_heads=4, mlp_dim=512, positions="learned", norm="pre",
      type_vocab_size=0, embed_norm=False, layer_norm_eps=1e-6, causal=False,
      mlm_head=False, attn_impl="auto", dtype="float32"))
  c.update(overrides)
  return c


# The options that make a `SeqModel` a BERT (Devlin et al. 2019).
BERT_OPTIONS = dict(positions="learned", norm="post", type_vocab_size=2,
                    embed_norm=True, layer_norm_eps=1e-12)


def num_tokens(config):
  """The sequence length: `data.seq_len` where the data sets one, else the
  model's `max_len`."""
  data = config.get("data") or {}
  return data.get("seq_len", config.model.max_len)


def describe(config) -> str:
  m = config.model
  return (f"sequence Transformer ({m.get('norm', 'pre')}-LN, "
          f"{m.get('positions', 'learned')} positions) width {m.width}, depth "
          f"{m.depth}, vocab {m.vocab_size}, max_len {m.max_len}")


def layer_ids(params, model_config):
  """Embeddings are layer 0, `block_i` is layer i+1, the rest depth+1."""
  depth = model_config.depth
  def layer(path, _):
    names = [getattr(k, "key", str(k)) for k in path]
    if names[0] in ("token_embed", "pos_embed", "type_embed", "embed_norm"):
      return 0
    for n in names:
      if n.startswith("block_"):
        return int(n.split("_")[1]) + 1
    return depth + 1
  return jax.tree_util.tree_map_with_path(layer, params), depth + 1


registry.register("seq", build=seq, num_tokens=num_tokens, describe=describe,
                  layer_ids=layer_ids)
