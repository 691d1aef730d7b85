"""The ViT family (`model.name = "vit"`): builds it from `config.model`,
checks the geometry it needs, and registers it."""
from __future__ import annotations

import copy

import jax
import jax.numpy as jnp

from maskmodel import config as config_lib
from maskmodel import tokens
from maskmodel.config import ConfigError
from maskmodel.models import registry
from maskmodel.models.vit import REMAT_POLICIES, TokenReduction, ViT

# Bipartite matching can remove at most half of the non-class tokens a layer
# gets (ToMe Sec. 3; PiToMe merges within the same bipartite split).
BIPARTITE = ("tome", "pitome")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype(model_config):
  if model_config.dtype not in DTYPES:
    raise ConfigError(f"model.dtype={model_config.dtype!r} is unknown; use one "
                      f"of {sorted(DTYPES)}.")
  return DTYPES[model_config.dtype]


def grid(config) -> tuple[int, int]:
  """The patch grid; image size must be a multiple of the patch size."""
  size, p = config.data.image_size, config.model.patch_size
  if p <= 0 or size % p:
    raise ConfigError(
        f"data.image_size={size} is not divisible by model.patch_size={p}; "
        f"use an image size that is a multiple of {p} (e.g. {max(p, size // p * p)}).")
  return size // p, size // p


def num_tokens(config) -> int:
  """Tokens a ViT encoder sees on full images: the patches plus [CLS]."""
  gh, gw = grid(config)
  return gh * gw + 1


def _schedule_spec(schedule):
  """A config value as a `tokens_per_layer` spec ("8" from the command line
  is r = 8)."""
  if isinstance(schedule, str) and schedule.strip().lstrip("-").isdigit():
    return int(schedule)
  return schedule


def token_reduction(model_config, num_input_tokens):
  """The static `TokenReduction` plan of `model_config.token_reduction`, for
  an encoder that gets `num_input_tokens` tokens (class token included).

  Returns None when the method is "none" (the plain ViT). Raises
  `ConfigError` naming the valid choices for an unknown method or option,
  for a schedule that cannot be followed, and when `num_input_tokens` is
  None but a method is set.
  """
  t = model_config.get("token_reduction")
  if t is None or t.method in ("none", None, ""):
    return None
  if num_input_tokens is None:
    raise ConfigError("model.token_reduction needs the encoder's token "
                      "count; build the model with build.vit(..., "
                      "num_tokens=build.num_tokens(config)).")
  key = "model.token_reduction"
  if t.method not in tokens.REDUCERS:
    raise ConfigError(f"{key}.method={t.method!r} is unknown; use 'none' or "
                      f"one of {sorted(tokens.REDUCERS)}.")
  info = tokens.REDUCERS[t.method]
  options = reducer_options(key, t)
  bipartite = t.method in BIPARTITE
  # EViT's fused token comes on top of the kept tokens.
  fused = t.method == "evit" or (t.method == "topk" and options.get("fuse"))
  try:
    keep = tokens.tokens_per_layer(_schedule_spec(t.schedule),
                                   model_config.depth, num_input_tokens,
                                   class_token=True, bipartite=bipartite,
                                   extra_token=int(bool(fused)))
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{key}.schedule={t.schedule!r} cannot be used with "
                      f"{model_config.depth} blocks and {num_input_tokens} "
                      f"tokens: {e}") from None
  prev = num_input_tokens
  for layer, k in enumerate(keep):
    if bipartite and prev - k > (prev - 1) // 2:
      raise ConfigError(
          f"{key}.schedule keeps {k} of {prev} tokens at layer {layer}, but "
          f"{t.method} merges at most half of the {prev - 1} non-class tokens "
          f"per layer (keep >= {prev - (prev - 1) // 2}); use a gentler "
          "schedule or a pruning method.")
    prev = k
  options = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                         for k, v in options.items()))
  prop_attn = t.get("prop_attn")   # None: the method's official default
  if prop_attn is None:
    prop_attn = info.default_prop_attn(bool(t.get("off_the_shelf", False)))
  return TokenReduction(method=t.method, keep=tuple(keep),
                        num_tokens=num_input_tokens, options=options,
                        prop_attn=bool(prop_attn))


def with_token_reduction(model_config, method, schedule=0, options=None,
                         prop_attn=None, off_the_shelf=False):
  """A copy of `model_config` with another `token_reduction`.

  The model it builds takes the same params as the original; pass
  `off_the_shelf=True` for eval-time reduction of a model trained without it
  (`config_lib.token_reduction` describes the arguments).
  """
  m = copy.deepcopy(model_config)
  with m.unlocked():
    m.token_reduction = config_lib.token_reduction(method, schedule, options,
                                                   prop_attn, off_the_shelf)
  return m


def reducer_options(key: str, t) -> dict:
  """The options of the token-reduction config `t` (at config path `key`),
  checked against what its method takes: a one-line ConfigError otherwise."""
  options = dict(t.get("options") or {})
  valid = tokens.option_names(t.method)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ConfigError(f"{key}.options has {unknown}, which {t.method!r} does "
                      f"not take; it accepts {valid or 'none'}.")
  return options


def vit(model_config, num_classes: int = 0, *, num_tokens=None) -> ViT:
  """The ViT of `model_config`.

  `num_tokens` (patches + class token the encoder will see, see
  `num_tokens(config)`) is needed only with `model.token_reduction`, whose
  schedule is turned into static per-block keep counts for that length.
  """
  m = model_config
  if m.width % m.num_heads:
    raise ConfigError(f"model.width={m.width} is not divisible by "
                      f"model.num_heads={m.num_heads}.")
  if m.pool not in ("cls", "gap"):
    raise ConfigError(f"model.pool={m.pool!r} is unknown; use 'cls' or 'gap'.")
  remat = m.get("remat", "none")
  if remat not in REMAT_POLICIES:
    raise ConfigError(f"model.remat={remat!r} is unknown; use one of "
                      f"{sorted(REMAT_POLICIES)}.")
  plan = token_reduction(m, num_tokens)
  return ViT(patch_size=m.patch_size, width=m.width, depth=m.depth,
             num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
             num_classes=num_classes, pool=m.pool, attn_impl=m.attn_impl,
             dtype=dtype(m), token_reduction=plan, remat=remat)


def vit_layer_ids(params, depth: int):
  """Layer index per ViT parameter, for layer-wise lr decay (BEiT, Sec. 2.4).

  Embeddings are layer 0, `block_i` is layer i+1, the rest (final norm,
  head) is layer depth+1.
  """
  def layer(path, _):
    names = [getattr(k, "key", str(k)) for k in path]
    if names[0] in ("patch_embed", "cls_token"):
      return 0
    for n in names:
      if n.startswith("block_"):
        return int(n.split("_")[1]) + 1
    return depth + 1
  return jax.tree_util.tree_map_with_path(layer, params)


def describe(config) -> str:
  """The ViT of `config`, in one line of `report.md`."""
  m = config.model
  return (f"ViT width {m.width}, depth {m.depth}, patch {m.patch_size}, "
          f"image {config.data.image_size}")


def layer_ids(params, model_config):
  return vit_layer_ids(params, model_config.depth), model_config.depth + 1


registry.register("vit", build=vit, num_tokens=num_tokens, describe=describe,
                  layer_ids=layer_ids)
