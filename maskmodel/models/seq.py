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
- `embedding_size`: the width E of the token, position and type embeddings
  (0: the model's width). When E differs from the width, a Dense
  `embed_project` maps the summed (and normalized) embeddings to the width,
  and the MLM head's dense maps back to E before the tied decoder
  (ELECTRA's `embedding_size`, google-research/electra `model/modeling.py`
  and `run_pretraining.py`'s `get_token_logits`; ALBERT's factorization).

Padding is a key mask: `mask [B, N]` (True = real token) goes to the
attention kernel as `kv_mask`, so no query ever reads a padded key. Shapes
are static; nothing depends on the data. Attention goes through
`maskmodel.kernels.attention`, like every model.

Token reduction (`maskmodel.tokens`: ToMe and the reducers that need no
[CLS] attention) runs inside the blocks when the model is given a
`SeqTokenReduction` plan, as the ViT's blocks do (`vit.py`): the reducer
is called once per block with the head-averaged keys as ToMe's metric,
proportional attention adds log(size) to every key's logit, and the mean
pooling is weighted by token sizes. Without a plan (the default) nothing
changes. `reduce_block_tokens` says where the merge sits in a post-LN
block and how padding is kept out of real tokens.

Token ids are checked on the host (`check_token_ids`): the model checks
them when it gets concrete ids, and skips the check under `jit`, where the
ids are tracers and an out-of-range id would silently read a clipped row.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskmodel import tokens
from maskmodel.kernels import attention
from maskmodel.config import ConfigError
from maskmodel.models import norm as norm_lib
from maskmodel.models import registry
from maskmodel.models.build import reducer_options
from maskmodel.models.vit import TokenReduction, fused_qkv, gelu, token_dense
from maskmodel.tokens.common import l2_normalize

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


# The size a padded token carries through a reduction. Merging averages
# tokens weighted by size, so a pad that meets a real token adds
# `PAD_SIZE * x_pad` to `x_real`, below float32's resolution of any real
# activation, and `1 + PAD_SIZE` rounds to 1: the real token comes out
# unchanged. A merged token is real when its size is >= 1/2.
PAD_SIZE = 2.0 ** -100
REAL_SIZE_MIN = 0.5
# Reducers that read [CLS] attention (topk, evit) or a 2-D patch graph
# (gtp) have nothing to read in a mean-pooled sentence model; zero_tprune
# needs the explicit attention matrix, which the fused kernel never forms.
SEQ_REDUCERS = ("tome", "pitome", "atc", "divprune", "dart")


@dataclasses.dataclass(frozen=True)
class SeqTokenReduction(TokenReduction):
  """The ViT's static `TokenReduction` plan, plus `class_token`: whether
  token 0 ([CLS]) is protected from reduction (default False: mean pooling
  reads it like any other token). `num_tokens` is the padded length the
  plan was built for; `keep` counts tokens, pads included."""
  class_token: bool = False


def pad_separated_metric(metric, mask):
  """ToMe's matching metric `[B, N, C]`, made to keep pads among pads.

  Rows without padding get the metric unchanged (with a zero feature
  appended, which changes no cosine similarity). In a row with padding,
  real token i becomes `[m_i / |m_i|, 1] / sqrt(2)` and every pad
  `[0, ..., 0, -1]`. Cosine similarities are then
    real-real  (1 + cos(m_i, m_j)) / 2   in [0, 1], same order as cos,
    pad-pad    1, the highest score,
    real-pad   -1 / sqrt(2), below every real-real score,
  so bipartite matching (ToMe, PiToMe's bsm step) pairs a pad with a pad
  and a real token with a real token whenever the other side holds one,
  and spends its first merges on pad pairs, which cost no accuracy. The
  order of real-real pairs is that of the plain metric up to float32
  rounding; ATC's linkages and DivPrune's max-min distances keep it too,
  while PiToMe's energies (margins on the cosine) change on padded rows.
  """
  c = metric.shape[-1]
  metric = metric.astype(jnp.float32)
  unit = l2_normalize(metric)
  half = jnp.float32(math.sqrt(0.5))
  real = jnp.concatenate([unit * half, jnp.full(unit.shape[:2] + (1,), half)],
                         axis=-1)
  pad = jnp.zeros_like(real).at[..., c].set(-1.0)
  separated = jnp.where(mask[..., None], real, pad)
  plain = jnp.concatenate([metric, jnp.zeros(metric.shape[:2] + (1,))], axis=-1)
  has_pad = ~mask.all(axis=1)
  return jnp.where(has_pad[:, None, None], separated, plain)


def reduce_block_tokens(plan: SeqTokenReduction, x, size, mask, keys, source,
                        *, keep, layer, depth, padded):
  """One block's token reduction (ToMe Sec. 3, Eq. 1 and its `merge_wavg`).

  Called where ToMe merges, between attention and MLP. In a post-LN
  (BERT) block that is after the first LayerNorm, `h = LN1(x + Attn(x))`:
  `h` is what a post-LN block carries on, both the MLP's input and its
  residual (`LN2(h + MLP(h))`), as `x` is in ToMe's pre-LN block. Merging
  `x + Attn(x)` before LN1 would average un-normalized sums that LN1 then
  rescales, so a merged token would not be the size-weighted mean of the
  tokens it holds.

  Padding: pads enter with size `PAD_SIZE` (real tokens 1), so any
  size-weighted merge leaves real tokens as they are; with `padded`, the
  metric is `pad_separated_metric`, so matching pairs pads with pads first.
  Pruning methods keep or drop a pad with its size; DART ranks by the keys
  and tokens, which carry no mask, so on padded rows it may keep pads and
  drop real tokens (wasteful, never wrong). The mask that follows
  is `size >= REAL_SIZE_MIN`: a token is real when it holds a real token.

  Returns `(x, size, source, mask)`.
  """
  metric = keys.mean(axis=2)   # ToMe's metric: the keys, averaged over heads
  if padded:
    metric = pad_separated_metric(metric, mask)
  x, size, source, _ = tokens.reduce(
      plan.method, x, size, keep=keep, metric=metric, keys=keys,
      class_token=plan.class_token, source=source, layer=layer, depth=depth,
      **dict(plan.options))
  return x, size, source, size[..., 0] >= REAL_SIZE_MIN


class SeqAttention(nn.Module):
  """Fused-qkv self-attention with a key mask, causal option and RoPE.

  `bias [B, N]` is added to every key's logit (ToMe's proportional
  attention passes log(size)). Returns `(out, k)`: the keys are ToMe's
  matching metric."""
  num_heads: int
  use_rope: bool = False
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, causal, bias=None):
    b, n, width = x.shape
    q, k, v = fused_qkv(x, self.num_heads, self.dtype, dense_init)
    if self.use_rope:
      positions = jnp.arange(n)
      q, k = rope(q, positions), rope(k, positions)
    out = attention(q, k, v, bias=bias, kv_mask=mask, causal=causal,
                    impl=self.attn_impl)
    return token_dense(nn.Dense(width, dtype=self.dtype, kernel_init=dense_init,
                                name="proj"), out.reshape(b, n, width)), k


class SeqBlock(nn.Module):
  """One Transformer block, pre-LN or post-LN (BERT's `BertLayer`).

  `block(x, mask, causal, bias=None, size=None, source=None, padded=False)
  -> (x, size, source, mask)`. With `reduction` and `keep` below the token
  count, the tokens are reduced between attention and MLP
  (`reduce_block_tokens`); otherwise size, source and mask pass through.
  """
  num_heads: int
  mlp_dim: int
  norm: str = "pre"
  use_rope: bool = False
  layer_norm_eps: float = 1e-6
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32
  reduction: Optional[SeqTokenReduction] = None
  keep: Optional[int] = None
  layer: Optional[int] = None
  depth: Optional[int] = None

  @nn.compact
  def __call__(self, x, mask, causal, bias=None, size=None, source=None,
               padded=False):
    ln = lambda name: norm_lib.LayerNorm(epsilon=self.layer_norm_eps, name=name)
    attn = SeqAttention(self.num_heads, self.use_rope, self.attn_impl, self.dtype,
                        name="attn")
    mlp = _Mlp(self.mlp_dim, self.dtype, name="mlp")
    reduces = self.reduction is not None and self.keep < x.shape[1]
    reduce = lambda x, k: reduce_block_tokens(
        self.reduction, x, size, mask, k, source, keep=self.keep,
        layer=self.layer, depth=self.depth, padded=padded)
    if self.norm == "pre":
      y, k = attn(ln("norm1")(x), mask, causal, bias)
      x = x + y
      if reduces:
        x, size, source, mask = reduce(x, k)
      return x + mlp(ln("norm2")(x)), size, source, mask
    y, k = attn(x, mask, causal, bias)
    x = ln("norm1")(x + y)
    if reduces:
      x, size, source, mask = reduce(x, k)
    return ln("norm2")(x + mlp(x)), size, source, mask


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

  With `token_reduction` (a `SeqTokenReduction` plan, built for inputs of
  `plan.num_tokens` tokens) the blocks merge or prune tokens along the
  plan's schedule: `tokens` then has the last block's count of tokens,
  `pooled` is their mean weighted by token size over real tokens (with no
  merge, exactly the plain mean), and the output adds `size [B, K]` (the
  real input tokens each token holds, 0 for pads) and `mask [B, K]` (real
  tokens); `return_source=True` adds `source [B, N]`, the output token
  holding each input token (-1 if pruned). Proportional attention (the
  plan's `prop_attn`) adds log(size) to the logits once a block has
  reduced. A reduction needs bidirectional attention, learned positions
  (RoPE would rotate merged tokens by their new index) and no
  `mlm_positions`.
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
  embedding_size: int = 0
  num_classes: int = 0
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32
  token_reduction: Optional[SeqTokenReduction] = None

  def setup(self):
    if self.positions not in POSITIONS:
      raise ValueError(f"positions={self.positions!r} is unknown; use one of "
                       f"{POSITIONS}.")
    if self.norm not in NORMS:
      raise ValueError(f"norm={self.norm!r} is unknown; use one of {NORMS}.")
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} is not divisible by "
                       f"num_heads={self.num_heads}.")
    plan = self.token_reduction
    if plan is not None:
      check_plan(plan, self.depth, self.positions)
    e = self.embedding_size or self.width
    self.token_embed = nn.Embed(self.vocab_size, e,
                                embedding_init=embed_init, name="token_embed")
    if self.positions == "learned":
      self.pos_embed = self.param("pos_embed", embed_init, (self.max_len, e))
    if self.type_vocab_size:
      self.type_embed = nn.Embed(self.type_vocab_size, e,
                                 embedding_init=embed_init, name="type_embed")
    ln = lambda name: norm_lib.LayerNorm(epsilon=self.layer_norm_eps, name=name)
    if self.embed_norm:
      self.embed_ln = ln("embed_norm")
    if e != self.width:
      self.embed_project = nn.Dense(self.width, dtype=self.dtype,
                                    kernel_init=dense_init,
                                    name="embed_project")
    self.blocks = [
        SeqBlock(self.num_heads, self.mlp_dim, self.norm,
                 self.positions == "rope", self.layer_norm_eps, self.attn_impl,
                 self.dtype, reduction=plan,
                 keep=None if plan is None else plan.keep[i], layer=i,
                 depth=self.depth, name=f"block_{i}")
        for i in range(self.depth)]
    if self.norm == "pre":
      self.final_norm = ln("norm")
    if self.mlm_head:
      self.mlm_dense = nn.Dense(e, dtype=self.dtype,
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
               mlm_positions=None, return_source=False):
    b, n = ids.shape
    check_length(n, self.max_len)
    if not isinstance(ids, jax.core.Tracer):
      check_token_ids(ids, self.vocab_size)
    plan = self.token_reduction
    causal = self.causal if causal is None else causal
    if plan is not None:
      check_call(plan, n, causal, mlm_positions)
    padded = mask is not None
    if mask is None:
      mask = jnp.ones((b, n), bool)
    mask = mask.astype(bool)
    x = self.token_embed(ids).astype(jnp.float32)
    if self.positions == "learned":
      x = x + self.pos_embed[None, :n]
    if self.type_vocab_size:
      types = jnp.zeros_like(ids) if token_types is None else token_types
      x = x + self.type_embed(types)
    if self.embed_norm:
      x = self.embed_ln(x)
    if (self.embedding_size or self.width) != self.width:
      x = token_dense(self.embed_project, x).astype(jnp.float32)
    size = source = None
    if plan is not None:
      size = jnp.where(mask, 1.0, PAD_SIZE)[..., None].astype(jnp.float32)
      source = tokens.init_source(x) if return_source else None
    for block in self.blocks:
      # Proportional attention once some block has reduced (log 1 = 0).
      prop = plan is not None and plan.prop_attn and x.shape[1] < n
      x, size, source, mask = block(
          x, mask, causal, jnp.log(size[..., 0]) if prop else None, size,
          source, padded)
    if self.norm == "pre":
      x = self.final_norm(x)
    if plan is None:
      weight = mask[..., None].astype(x.dtype)
    else:   # size-weighted over real tokens: the plain mean when unmerged
      weight = jnp.where(mask[..., None], size, 0.0).astype(x.dtype)
    pooled = (x * weight).sum(1) / jnp.maximum(weight.sum(1), 1.0)
    out = {"tokens": x, "pooled": pooled}
    if plan is not None:
      out["size"] = weight[..., 0]
      out["mask"] = mask
      if return_source:
        out["source"] = source
    if self.num_classes:
      out["logits"] = self.head(pooled)
    if self.mlm_head:
      h = x if mlm_positions is None else jnp.take_along_axis(
          x, mlm_positions[..., None], axis=1)
      out["mlm_logits"] = self.mlm_logits(h)
    return out


def check_plan(plan: SeqTokenReduction, depth: int, positions: str):
  """One-line errors for a plan this model cannot follow."""
  if not isinstance(plan, SeqTokenReduction):
    raise ValueError("SeqModel.token_reduction must be a SeqTokenReduction "
                     "(build it with maskmodel.models.seq.seq_token_reduction"
                     f"), got {type(plan).__name__}.")
  if len(plan.keep) != depth:
    raise ValueError(f"token reduction plan is for {len(plan.keep)} blocks; "
                     f"this model has {depth}. Build the plan for it "
                     "(maskmodel.models.seq.seq_token_reduction).")
  if positions == "rope":
    raise ValueError("token reduction needs positions='learned': RoPE would "
                     "rotate merged tokens by their new index; drop the "
                     "reduction or use learned positions.")


def check_call(plan: SeqTokenReduction, n: int, causal: bool, mlm_positions):
  """One-line errors for a call that a token reduction cannot serve."""
  if n != plan.num_tokens:
    raise ValueError(f"token reduction plan is for {plan.num_tokens} input "
                     f"tokens; this call has {n}. Pad the batch to "
                     f"{plan.num_tokens} or build a plan for {n} "
                     "(maskmodel.models.seq.seq_token_reduction).")
  if causal:
    raise ValueError("token reduction merges tokens across positions, which "
                     "breaks causal attention; call with causal=False or "
                     "without a reduction.")
  if mlm_positions is not None:
    raise ValueError("mlm_positions index input positions, which a token "
                     "reduction moves; predict without a reduction.")


def seq_token_reduction(model_config, num_tokens: int):
  """The static `SeqTokenReduction` plan of `model_config.token_reduction`
  (a `maskmodel.config.token_reduction`, plus an optional `class_token`,
  default False) for inputs of `num_tokens` tokens, or None for "none".

  The schedule counts every token, pads included; bipartite methods (ToMe,
  PiToMe) remove at most half of the unprotected tokens per block. A
  method outside `SEQ_REDUCERS`, an unknown option or a schedule that
  cannot be followed is a one-line `ConfigError`.
  """
  t = model_config.get("token_reduction")
  if t is None or t.method in ("none", None, ""):
    return None
  key = "model.token_reduction"
  if t.method not in SEQ_REDUCERS:
    why = ("unknown" if t.method not in tokens.REDUCERS else
           "not applicable to a mean-pooled sequence model (it reads [CLS] "
           "attention, a 2-D patch graph or the full attention matrix)")
    raise ConfigError(f"{key}.method={t.method!r} is {why}; use 'none' or one "
                      f"of {list(SEQ_REDUCERS)}.")
  options = reducer_options(key, t)
  class_token = bool(t.get("class_token", False))
  schedule = t.schedule
  if isinstance(schedule, str) and schedule.strip().lstrip("-").isdigit():
    schedule = int(schedule)
  bipartite = t.method in ("tome", "pitome")
  try:
    keep = tokens.tokens_per_layer(schedule, model_config.depth, num_tokens,
                                   class_token=class_token, bipartite=bipartite)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{key}.schedule={t.schedule!r} cannot be used with "
                      f"{model_config.depth} blocks and {num_tokens} tokens: "
                      f"{e}") from None
  prev, protected = num_tokens, int(class_token)
  for layer, k in enumerate(keep):
    if bipartite and prev - k > (prev - protected) // 2:
      raise ConfigError(
          f"{key}.schedule keeps {k} of {prev} tokens at block {layer}, but "
          f"{t.method} merges at most half of the {prev - protected} "
          "mergeable tokens per block; use a gentler schedule.")
    prev = k
  prop_attn = t.get("prop_attn")
  if prop_attn is None:
    prop_attn = tokens.REDUCERS[t.method].default_prop_attn(
        bool(t.get("off_the_shelf", False)))
  options = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                         for k, v in options.items()))
  return SeqTokenReduction(method=t.method, keep=tuple(keep),
                           num_tokens=num_tokens, options=options,
                           prop_attn=bool(prop_attn), class_token=class_token)


def seq(model_config, *, num_classes=0, num_tokens=None) -> SeqModel:
  """The `SeqModel` of `config.model` (`model.name = "seq"`).

  Needs vocab_size, max_len, width, depth, num_heads; mlp_dim defaults to
  4 x width, and every other field to `SeqModel`'s default (a pre-LN
  encoder with learned positions). An optional `model.token_reduction`
  (`seq_token_reduction`) is planned for `num_tokens` input tokens
  (default `max_len`): the batches must be padded to that length.
  """
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
  if (m.get("embedding_size", 0) or 0) < 0:
    raise ConfigError(f"model.embedding_size={m.embedding_size} must be >= 0 "
                      "(0: model.width).")
  from maskmodel.models import build  # pylint: disable=g-import-not-at-top
  plan = None
  if m.get("token_reduction") is not None:
    if m.get("positions", "learned") == "rope" or m.get("causal", False):
      raise ConfigError("model.token_reduction needs learned positions and "
                        "bidirectional attention (model.positions='learned', "
                        "model.causal=False).")
    plan = seq_token_reduction(m, num_tokens if num_tokens is not None
                               else m.max_len)
  return SeqModel(
      vocab_size=m.vocab_size, max_len=m.max_len, width=m.width,
      depth=m.depth, num_heads=m.num_heads,
      mlp_dim=m.get("mlp_dim", 4 * m.width),
      positions=m.get("positions", "learned"), norm=m.get("norm", "pre"),
      type_vocab_size=m.get("type_vocab_size", 0),
      embed_norm=m.get("embed_norm", False),
      layer_norm_eps=m.get("layer_norm_eps", 1e-6),
      causal=m.get("causal", False), mlm_head=m.get("mlm_head", False),
      embedding_size=m.get("embedding_size", 0) or 0,
      num_classes=num_classes, attn_impl=m.get("attn_impl", "auto"),
      dtype=build.dtype(m) if "dtype" in m else jnp.float32,
      token_reduction=plan)


def seq_config(**overrides):
  """A `config.model` for `model.name = "seq"`: a small pre-LN encoder,
  with `overrides` applied (e.g. `**BERT_OPTIONS` for BERT's layout)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(dict(
      name="seq", vocab_size=256, max_len=128, width=128, depth=4,
      num_heads=4, mlp_dim=512, positions="learned", norm="pre",
      type_vocab_size=0, embed_norm=False, layer_norm_eps=1e-6, causal=False,
      mlm_head=False, embedding_size=0, attn_impl="auto", dtype="float32"))
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
    if names[0] in ("token_embed", "pos_embed", "type_embed", "embed_norm",
                    "embed_project"):
      return 0
    for n in names:
      if n.startswith("block_"):
        return int(n.split("_")[1]) + 1
    return depth + 1
  return jax.tree_util.tree_map_with_path(layer, params), depth + 1


registry.register("seq", build=seq, num_tokens=num_tokens, describe=describe,
                  layer_ids=layer_ids)
