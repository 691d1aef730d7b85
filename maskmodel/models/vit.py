"""Vision Transformer (Dosovitskiy et al. 2021) with MAE's conventions.

Pre-LN blocks, fixed 2D sin-cos position embeddings, an optional class token,
patch embedding as a linear map of `patchify` output (the same as a stride-p
convolution). Attention goes through `maskmodel.kernels.attention`.

Token reduction (`maskmodel.tokens`, ToMe and family) runs inside the blocks
when the ViT is given a `TokenReduction` plan: each block calls the reducer
between attention and MLP, as ToMe does, with the head-averaged keys as the
similarity metric and the attention statistics the method needs. The plan
is static (a method name and the tokens kept after every block), so every
shape is known at trace time; the params are the same as without it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskmodel import tokens
from maskmodel.kernels import attention, attention_probs
from maskmodel.models import norm
from maskmodel.models.patches import patchify, sincos_2d_posemb

Dtype = Any
# Rematerialization per block (`model.remat`): what the backward pass keeps
# from each block's forward, the rest being recomputed. "none" keeps
# everything; "full" keeps only the block's input (activation memory
# O(depth * B * N * D), one more forward of compute); "dots" keeps the
# matmul outputs without a batch dimension (the weights' products), and
# recomputes the elementwise ops, softmax and LayerNorms.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
dense_init = nn.initializers.xavier_uniform()
token_init = nn.initializers.normal(stddev=0.02)


def gelu(x):
  """Exact GELU, x * Phi(x), written with erf as MAE's PyTorch code has it.

  Same function as `nn.gelu(x, approximate=False)`, which uses erfc (outputs
  agree to ~1e-7). XLA's f32 erf is a short polynomial while erfc needs an
  exp and selects; on CPU this forward is ~2.8x cheaper.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(2**-0.5, x.dtype)))


def token_dense(layer: nn.Module, x):
  """Applies `layer` (a Dense, or a DenseGeneral over the last axis) to
  `[..., D]` as one `[tokens, D]` matmul.

  Same math and params as `layer(x)`. Flattening first makes the backward
  weight gradient a plain `x^T dy` over one contracting dimension; over
  `[B, N]` XLA first transposes `dy` in memory, which on CPU added ~25% to
  the backward of a decoder MLP layer.
  """
  lead = x.shape[:-1]
  y = layer(x.reshape(-1, x.shape[-1]))
  return y.reshape(*lead, *y.shape[1:])


def fused_qkv(x, num_heads: int, dtype, kernel_init, name: str = "qkv"):
  """Queries, keys and values `[B, N, H, Dh]` of `x [B, N, D]` from one
  fused projection, whose kernel is `[D, 3, H, Dh]` (bias `[3, H, Dh]`).

  The head axis is explicit so that tensor parallelism splits whole heads:
  the partition rule splits dim 2 over "tensor", and each device holds the
  q, k and v of its own heads (a flat `[D, 3D]` kernel split contiguously
  would hand one device the queries of some heads and the keys of others,
  and XLA would move them back together in every block). Initialized as
  the flat `[D, 3D]` kernel would be (DenseGeneral inits the flattened
  shape), so the values are the same.
  """
  width = x.shape[-1]
  layer = nn.DenseGeneral((3, num_heads, width // num_heads), dtype=dtype,
                          kernel_init=kernel_init, name=name)
  qkv = token_dense(layer, x)
  return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]


@dataclasses.dataclass(frozen=True)
class TokenReduction:
  """A static token-reduction plan for a ViT encoder (hashable).

  method: a name in `maskmodel.tokens.REDUCERS`.
  keep: tokens left after each block (class token included), one per block;
    `maskmodel.tokens.tokens_per_layer` turns a schedule into this.
  num_tokens: tokens entering the first block (class token included); the
    plan is only valid for inputs of that length.
  options: `(name, value)` pairs passed to the reducer.
  prop_attn: ToMe's proportional attention: log(size) is added to every
    key's attention logit, so a merged token counts as the patches it holds
    (`build.token_reduction` resolves the method's official default).
  """
  method: str
  keep: Tuple[int, ...]
  num_tokens: int
  options: Tuple[Tuple[str, Any], ...] = ()
  prop_attn: bool = True

  @property
  def needs(self):
    return tokens.needs(self.method, dict(self.options))

  @property
  def edit_attn(self):
    """The method's edit of every block's attention probabilities (GTP-ViT's
    sparsity), or None."""
    return tokens.attention_edit(self.method, dict(self.options))


def layer_norm(name=None):
  return norm.LayerNorm(epsilon=1e-6, name=name)


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = token_dense(nn.Dense(self.mlp_dim, dtype=self.dtype,
                             kernel_init=dense_init, name="Dense_0"), x)
    x = gelu(x)
    return token_dense(nn.Dense(width, dtype=self.dtype, kernel_init=dense_init,
                                name="Dense_1"), x)


class MultiHeadAttention(nn.Module):
  """Fused-qkv self-attention; `bias` is a per-key additive term [B, N].

  Returns `(out, k)`, or `(out, k, aux)` when `with_stats` (aux is the
  kernel's `AttentionStats`) or `with_probs` (aux is the per-head
  `[B, H, N, N]` probabilities, computed explicitly, without gradient).
  `edit_probs` (with `with_probs`) maps the probabilities before the values
  product (GTP-ViT's sparsification); aux then holds the edited ones.
  """
  num_heads: int
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, bias=None, with_stats=False, with_probs=False,
               edit_probs=None):
    b, n, width = x.shape
    q, k, v = fused_qkv(x, self.num_heads, self.dtype, dense_init)
    aux = None
    if with_probs:
      # Zero-TPrune (and GTP-ViT's MixedAttnMax and sparsity) read the whole
      # attention graph, which the fused kernels never materialize; only
      # they pay for this explicit softmax.
      probs = attention_probs(q, k, bias=bias)
      if edit_probs is not None:
        probs = edit_probs(probs)
      out = jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype),
                                    jnp.swapaxes(v, 1, 2)), 1, 2)
      aux = jax.lax.stop_gradient(probs)
    elif with_stats:
      out, aux = attention(q, k, v, bias=bias, impl=self.attn_impl,
                           return_stats=True)
    else:
      out = attention(q, k, v, bias=bias, impl=self.attn_impl)
    out = token_dense(nn.Dense(width, dtype=self.dtype, kernel_init=dense_init,
                               name="proj"), out.reshape(b, n, width))
    if with_stats or with_probs:
      return out, k, aux
    return out, k


class Block(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

  Called as `block(x, bias, size, source, graph)` and returns
  `tokens.Reduced(x, size, source, graph)`, with or without reduction. With
  `reduction` (a `TokenReduction`) and `keep` (this block's entry of its
  schedule) below the token count, it also reduces the tokens between
  attention and MLP, as ToMe does; otherwise size, source and graph pass
  through.
  """
  num_heads: int
  mlp_dim: int
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32
  reduction: Optional[TokenReduction] = None
  keep: Optional[int] = None
  layer: Optional[int] = None
  depth: Optional[int] = None

  @nn.compact
  def __call__(self, x, bias=None, size=None, source=None, graph=None):
    plan = self.reduction
    reduces = plan is not None and self.keep < x.shape[1]
    needs = plan.needs if reduces else ()
    # GTP-ViT's sparsity edits the attention of every block, reducing or not.
    edit = None if plan is None else plan.edit_attn
    with_probs = "attn" in needs or edit is not None
    with_stats = not with_probs and bool({"cls_attn", "key_mass"} & set(needs))
    attn = MultiHeadAttention(self.num_heads, self.attn_impl, self.dtype,
                              name="attn")
    y, k, *aux = attn(layer_norm("norm1")(x), bias, with_stats=with_stats,
                      with_probs=with_probs, edit_probs=edit)
    x = x + y
    if reduces:
      stats = aux[0] if with_stats else None
      x, size, source, graph = tokens.reduce(
          plan.method, x, size, keep=self.keep,
          keys=k,   # ToMe's metric is their mean over heads
          cls_attn=None if stats is None else stats.cls_probs,
          key_mass=None if stats is None else stats.key_mass,
          attn=aux[0] if with_probs else None, graph=graph,
          class_token=True, source=source, layer=self.layer,
          depth=self.depth, **dict(plan.options))
    x = x + MlpBlock(self.mlp_dim, self.dtype, name="mlp")(
        layer_norm("norm2")(x))
    return tokens.Reduced(x, size, source, graph)


class Transformer(nn.Module):
  """`depth` blocks and a final LayerNorm:
  `transformer(x, source=None) -> tokens.Reduced(x, size, source, None)`.

  `remat` names a policy of `REMAT_POLICIES` under which every block is
  rematerialized (`nn.remat`); the params and the outputs are the same.

  With a `TokenReduction` the blocks reduce the tokens along the plan's
  schedule; `size` tracks the patches each token holds and `source`, when
  given (start from `tokens.init_source(x)`), which input token each output
  token holds. Without one, size is all ones and source comes back as given.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32
  reduction: Optional[TokenReduction] = None
  remat: str = "none"

  @nn.compact
  def __call__(self, x, source=None):
    plan = self.reduction
    block = Block if self.remat == "none" else nn.remat(
        Block, policy=REMAT_POLICIES[self.remat])
    if plan is not None and (len(plan.keep) != self.depth
                             or x.shape[1] != plan.num_tokens):
      raise ValueError(
          f"token reduction plan is for {len(plan.keep)} blocks and "
          f"{plan.num_tokens} input tokens; this transformer has {self.depth} "
          f"blocks and got {x.shape[1]} tokens. Build the plan for this input "
          "(maskmodel.models.build.token_reduction).")
    n0 = x.shape[1]
    size = tokens.init_size(x)
    graph = None
    init_graph = None if plan is None else \
        tokens.REDUCERS[plan.method].init_graph
    if init_graph is not None:   # GTP-ViT: once, from the embedded input
      graph = init_graph(x, class_token=True, **dict(plan.options))
    for i in range(self.depth):
      # Proportional attention only once some block has merged tokens (all
      # sizes are 1 before that, and log(1) = 0).
      prop = plan is not None and plan.prop_attn and x.shape[1] < n0
      x, size, source, graph = block(
          self.num_heads, self.mlp_dim, self.attn_impl, self.dtype,
          reduction=plan, keep=None if plan is None else plan.keep[i],
          layer=i, depth=self.depth, name=f"block_{i}")(
              x, jnp.log(size[..., 0]) if prop else None, size, source, graph)
    return tokens.Reduced(layer_norm("norm")(x), size, source)


def restore(source, *arrays):
  """ToMe's `unmerge` from a source map: each input position gets the output
  token that holds it.

  `source [B, N0]` is the index map (`maskmodel.tokens.common`): the output
  token holding each of the N0 inputs, or -1 for inputs no token holds
  (pruned), which get zeros. Each array `[B, K, ...]` becomes
  `[B, N0, ...]`. A gather, so it is exact in any dtype and precision.
  """
  held = source >= 0
  holder = jnp.maximum(source, 0)
  out = []
  for a in arrays:
    idx = holder.reshape(holder.shape + (1,) * (a.ndim - 2))
    picked = jnp.take_along_axis(a, idx, axis=1)
    out.append(jnp.where(held.reshape(idx.shape), picked,
                         jnp.zeros((), a.dtype)))
  return tuple(out)


class ViT(nn.Module):
  """ViT encoder over `[B, H, W, C]` images.

  `ids_keep` ([B, K], MAE semantics) restricts the encoder to those patches,
  which is how MAE runs the encoder on visible patches only. `mask` ([B, N],
  1 = hidden) instead replaces the hidden patches' embeddings by a learned
  `mask_token` before the position embedding, as SimMIM's encoder does. Returns a dict
  with `tokens` ([B, 1+K, D] with class token), `pooled` ([B, D]), `size`
  ([B, 1+K, 1], the patches each token holds) and, when `num_classes` > 0,
  `logits`.

  With `token_reduction` (a `TokenReduction` plan) the blocks merge or prune
  tokens: `tokens` and `size` then have the plan's last count of tokens,
  `gap` pooling is the size-weighted mean over the non-class tokens (the
  mean over patches when merged tokens are equal), and
  `return_source=True` adds `source` ([B, 1+K] int32: for each input token,
  the index of the output token that holds it, -1 if pruned; ToMe's source
  tracing as an O(N) index map, `tokens.dense_source` gives the one-hot
  [B, K', 1+K] map). `restore_tokens=True` copies
  every output token back to each input position it holds (ToMe's
  `unmerge`), so `tokens` is [B, 1+K, D] again and `size` gives, per input
  position, the size of the token that holds it; positions held by no token
  (pruned) are zero. Dense heads such as MAE's decoder need that.
  """
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  num_classes: int = 0
  pool: str = "cls"          # cls | gap
  attn_impl: str = "auto"
  dtype: Dtype = jnp.float32
  token_reduction: Optional[TokenReduction] = None
  remat: str = "none"        # a policy of REMAT_POLICIES, for the encoder

  @nn.compact
  def __call__(self, images, ids_keep: Optional[jax.Array] = None,
               return_source: bool = False, restore_tokens: bool = False,
               mask: Optional[jax.Array] = None):
    b, h, w, _ = images.shape
    grid = (h // self.patch_size, w // self.patch_size)
    x = token_dense(nn.Dense(self.width, kernel_init=dense_init, dtype=self.dtype,
                             name="patch_embed"), patchify(images, self.patch_size))
    if mask is not None:  # SimMIM's x * (1 - w) + mask_token * w.
      mask_token = self.param("mask_token", token_init, (1, 1, self.width))
      w = mask[..., None].astype(x.dtype)
      x = x * (1 - w) + mask_token.astype(x.dtype) * w
    posemb = sincos_2d_posemb(self.width, grid, class_token=True)
    x = x + posemb[None, 1:]
    if ids_keep is not None:
      x = jnp.take_along_axis(x, ids_keep[..., None], axis=1)
    cls = self.param("cls_token", token_init, (1, 1, self.width))
    cls = jnp.broadcast_to(cls + posemb[None, :1], (b, 1, self.width))
    x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
    encoder = Transformer(self.depth, self.num_heads,
                          int(self.width * self.mlp_ratio), self.attn_impl,
                          self.dtype, reduction=self.token_reduction,
                          remat=self.remat, name="encoder")
    track = return_source or restore_tokens
    x, size, source, _ = encoder(x, tokens.init_source(x) if track else None)
    if self.pool == "cls":
      pooled = x[:, 0]
    elif self.token_reduction is None:
      pooled = x[:, 1:].mean(axis=1)
    else:   # size-weighted: the mean over patches when merged tokens are equal
      weight = size[:, 1:]
      pooled = ((x[:, 1:] * weight).sum(axis=1)
                / weight.sum(axis=1)).astype(x.dtype)
    if restore_tokens and self.token_reduction is not None:
      x, size = restore(source, x, size)
    out = {"tokens": x, "pooled": pooled, "size": size}
    if return_source:
      out["source"] = source
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, name="head",
                               kernel_init=nn.initializers.zeros)(pooled)
    return out
