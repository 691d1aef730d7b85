"""Token reduction: pure functions over `[B, N, D]` tokens, registered by name.

Every method reduces tokens `x [B, N, D]` with sizes `size [B, N, 1]` to a
static number `keep` of tokens (class token included) and returns
`Reduced(x, size, source, graph)`. Each matches its official code by default
(see its module docstring); deviations are named options, default off. The
uniform entry point is

    reduce(method, x, size=None, *, keep, metric=None, keys=None,
           cls_attn=None, key_mass=None, attn=None, graph=None,
           class_token=True, source=None, layer=None, depth=None, **options)

Inputs (plain arrays; reducers never run attention themselves):
  metric    `[B, N, C]` similarity features; defaults to the keys averaged
            over heads (ToMe's metric), else `x`.
  keys      `[B, N, H, hd]` per-head attention keys (DART concatenates the
            heads).
  cls_attn  `[B, N]` head-averaged attention of the [CLS] query to each key
            (`[B, H, N]` per-head statistics are averaged over heads).
  key_mass  `[B, N]` head-averaged attention each key receives (summed over
            queries); `[B, H, N]` is averaged over heads too.
  attn      `[B, H, N, N]` (or `[B, N, N]`) attention probabilities.
  graph     GTP-ViT's token graph, carried from block to block.
  source    `[B, N0]` int32 index map to carry along (start from
            `init_source(x)`); None disables source tracing.
  layer, depth  the block's index and the number of blocks (PiToMe's margin
            and merge kind, Zero-TPrune's iterations follow them).

Methods (`needs(name, options)` lists what each one reads):
  tome         ToMe bipartite soft matching (metric). r = N - keep is capped
               at half of the non-class tokens with a warning, so the output
               may keep more than `keep` tokens.
  pitome       PiToMe energy-ordered merging (metric; layer, depth); same cap.
  topk         Top-K attentive-token pruning (cls_attn).
  evit         EViT: Top-K plus the fused inattentive token (cls_attn).
  divprune     DivPrune max-min diversity (metric).
  dart         DART duplication-aware pruning (keys).
  atc          Agglomerative Token Clustering (metric); option linkage.
  zero_tprune  Zero-TPrune I' -> S -> I (attn, metric; layer, depth).
  gtp          GTP-ViT graph propagation (key_mass, or attn for
               selection="mixed_attn_max"; graph).
Extra keyword options go to the method (e.g. `linkage="single"` for atc);
an unknown one raises, naming the valid ones. `REDUCERS[name].prop_attn`
says whether the official code uses proportional attention.

In a ViT block the reducer runs between attention and MLP, as in ToMe:

    kept = tokens_per_layer(spec, depth, num_tokens)       # static ints
    ...
    y, stats = attention(q, k, v, bias=jnp.log(size[..., 0]) if prop_attn
                         else None, return_stats=True)
    x = x + proj(y)
    x, size, source, graph = reduce(method, x, size, keep=kept[layer],
                                    keys=k, cls_attn=stats.cls_probs,
                                    key_mass=stats.key_mass, graph=graph,
                                    source=source, layer=layer, depth=depth)
    x = x + mlp(x)

Only zero_tprune (and gtp's mixed_attn_max) read the full attention matrix,
which a fused attention kernel does not materialize.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Tuple

from maskmodel.tokens.atc import LINKAGES, agglomerative_labels, atc
from maskmodel.tokens.common import (PRUNED, Reduced, check_keep,
                                     dense_source, init_size, init_source,
                                     relabel)
from maskmodel.tokens.dart import dart, dart_select
from maskmodel.tokens.divprune import divprune, max_min_select
from maskmodel.tokens.flops import block_flops, vit_flops, vit_flops_breakdown
from maskmodel.tokens.gtp import attention_rank, gtp, gtp_graph
from maskmodel.tokens.merge import (bipartite_soft_matching, merge_source,
                                    merge_wavg, tome)
from maskmodel.tokens.pitome import energy_score, pitome
from maskmodel.tokens.schedules import (constant_r, decreasing_r, inflected_r,
                                        tokens_per_layer)
from maskmodel.tokens.topk import topk_prune
from maskmodel.tokens.zero_tprune import weighted_pagerank, zero_tprune

STATS = ("metric", "keys", "cls_attn", "key_mass", "attn")


@dataclasses.dataclass(frozen=True)
class ReducerInfo:
  """A registered reducer.

  fn: `(x, size, *, keep, metric, keys, cls_attn, key_mass, attn, graph,
    class_token, source, layer, depth, **options) -> Reduced`, with size
    and metric already filled in.
  needs: the statistics it reads (a tuple of names from STATS), or a
    function of the options that gives them.
  conserves_size: True when the output sizes sum to the input sizes (merging
    methods); pruning methods drop the removed tokens' sizes.
  options: the method-specific keyword options `reduce` passes through.
  prop_attn: whether the method's official code adds log(size) to the
    attention logits (the default of `model.token_reduction.prop_attn`).
  layer_options: options that may be given per block, as a list indexed by
    the block or a function of its index.
  init_graph: for methods that carry a token graph across blocks (GTP-ViT),
    `(x, class_token, **options) -> graph`, called once on the encoder input.
  """
  fn: Callable[..., Reduced]
  needs: Any
  conserves_size: bool
  options: Tuple[str, ...] = ()
  prop_attn: bool = False
  layer_options: Tuple[str, ...] = ()
  init_graph: Optional[Callable[..., Any]] = None


REDUCERS: dict[str, ReducerInfo] = {}


def register_reducer(name, fn, *, needs, conserves_size, options=(),
                     prop_attn=False, layer_options=(), init_graph=None):
  """Adds a reducer under `name` (see `ReducerInfo` for the call contract)."""
  if not callable(needs):
    unknown = set(needs) - set(STATS)
    if unknown:
      raise ValueError(f"reducer {name!r} needs unknown inputs "
                       f"{sorted(unknown)}; choose from {STATS}.")
    needs = tuple(needs)
  REDUCERS[name] = ReducerInfo(fn, needs, conserves_size, tuple(options),
                               prop_attn, tuple(layer_options), init_graph)


def _require(method, **arrays):
  for name, value in arrays.items():
    if value is None:
      raise ValueError(f"reducer {method!r} needs {name}=[B, N...] "
                       f"(see maskmodel.tokens docstring); got None.")


def _tome(x, size, *, keep, metric, class_token, source, impl="auto", **_):
  return tome(x, size, metric, r=x.shape[1] - keep, class_token=class_token,
              source=source, impl=impl)


def _pitome(x, size, *, keep, metric, class_token, source, layer, depth,
            margin=None, alpha=1.0, variant="deit", energy="elu", **_):
  return pitome(x, size, metric, r=x.shape[1] - keep, margin=margin,
                alpha=alpha, variant=variant, energy=energy, layer=layer,
                depth=depth, class_token=class_token, source=source)


def _topk(x, size, *, keep, cls_attn, class_token, source, fuse=False,
          normalize_fused=False, order="attention", **_):
  _require("topk", cls_attn=cls_attn)
  return topk_prune(x, size, cls_attn, keep=keep, class_token=class_token,
                    fuse=fuse, normalize_fused=normalize_fused, order=order,
                    source=source)


def _evit(x, size, *, keep, cls_attn, class_token, source,
          normalize_fused=False, order="attention", **_):
  _require("evit", cls_attn=cls_attn)
  return topk_prune(x, size, cls_attn, keep=keep, class_token=class_token,
                    fuse=True, normalize_fused=normalize_fused, order=order,
                    source=source)


def _divprune(x, size, *, keep, metric, class_token, source, **_):
  return divprune(x, size, metric, keep=keep, class_token=class_token,
                  source=source)


def _dart(x, size, *, keep, metric, keys, class_token, source, num_pivots=4,
          selection="per_pivot", similarity_on="normalized", **_):
  return dart(x, size, metric if keys is None else keys, keep=keep,
              num_pivots=num_pivots, selection=selection,
              similarity_on=similarity_on, class_token=class_token,
              source=source)


def _atc(x, size, *, keep, metric, class_token, source, linkage="average",
         **_):
  return atc(x, size, metric, keep=keep, linkage=linkage,
             class_token=class_token, source=source)


def _zero_tprune(x, size, *, keep, metric, attn, class_token, source, layer,
                 depth, num_iters=None, similarity_fraction=0.5,
                 variance_range=(0.01, 0.7), order="isi", **_):
  _require("zero_tprune", attn=attn)
  return zero_tprune(x, size, metric, attn, keep=keep, num_iters=num_iters,
                     similarity_fraction=similarity_fraction,
                     variance_range=tuple(variance_range), order=order,
                     layer=layer, depth=depth, class_token=class_token,
                     source=source)


def _gtp_graph(x, *, class_token=True, graph_type="mixed", num_neighbors=8,
               **_):
  return gtp_graph(x, graph=graph_type, num_neighbors=num_neighbors,
                   class_token=class_token)


def _gtp(x, size, *, keep, key_mass, attn, graph, class_token, source,
         selection="img_attn_mean", alpha=0.1, num_neighbors=8,
         graph_type="mixed", **_):
  if selection == "img_attn_mean" and key_mass is not None:
    rank = key_mass
  else:
    _require("gtp", attn=attn)
    rank = attention_rank(attn, selection)
  if graph is None:   # no carried graph: build it from these tokens
    graph = _gtp_graph(x, class_token=class_token, graph_type=graph_type,
                       num_neighbors=num_neighbors)
  out, graph = gtp(x, size, rank, graph, keep=keep, alpha=alpha,
                   class_token=class_token, source=source)
  return out._replace(graph=graph)


def _gtp_needs(options):
  if options.get("selection", "img_attn_mean") == "img_attn_mean":
    return ("key_mass",)
  return ("attn",)


register_reducer("tome", _tome, needs=("metric",), conserves_size=True,
                 options=("impl",), prop_attn=True)
register_reducer("pitome", _pitome, needs=("metric",), conserves_size=True,
                 options=("margin", "alpha", "variant", "energy"),
                 layer_options=("margin", "variant"))
register_reducer("topk", _topk, needs=("cls_attn",), conserves_size=False,
                 options=("fuse", "normalize_fused", "order"))
register_reducer("evit", _evit, needs=("cls_attn",), conserves_size=True,
                 options=("normalize_fused", "order"))
register_reducer("divprune", _divprune, needs=("metric",),
                 conserves_size=False)
register_reducer("dart", _dart, needs=("keys",), conserves_size=False,
                 options=("num_pivots", "selection", "similarity_on"))
register_reducer("atc", _atc, needs=("metric",), conserves_size=True,
                 options=("linkage",), prop_attn=True)
register_reducer("zero_tprune", _zero_tprune, needs=("attn", "metric"),
                 conserves_size=False,
                 options=("num_iters", "similarity_fraction",
                          "variance_range", "order"),
                 layer_options=("num_iters", "similarity_fraction"))
register_reducer("gtp", _gtp, needs=_gtp_needs, conserves_size=False,
                 options=("selection", "alpha", "num_neighbors",
                          "graph_type"),
                 init_graph=_gtp_graph)


def needs(method, options=None):
  """The statistics `method` reads with these options (names from STATS)."""
  info = _info(method)
  if callable(info.needs):
    return tuple(info.needs(dict(options or {})))
  return info.needs


def get_reducer(name):
  """The uniform reducer callable for `name`: `reduce` with method bound."""
  _info(name)
  return functools.partial(reduce, name)


def _info(name):
  if name not in REDUCERS:
    raise ValueError(f"token reducer {name!r} is unknown; valid choices are "
                     f"{sorted(REDUCERS)}.")
  return REDUCERS[name]


def reduce(method, x, size=None, *, keep, metric=None, keys=None,
           cls_attn=None, key_mass=None, attn=None, graph=None,
           class_token=True, source=None, layer=None, depth=None, **options):
  """Reduces `x [B, N, D]` to `keep` tokens with the named method.

  Args:
    method: a name in `REDUCERS`.
    x: `[B, N, D]` tokens.
    size: `[B, N, 1]` token sizes (default ones).
    keep: static Python int, tokens left (class token included), 1 <= keep
      <= N (keep >= 2 with a class token). keep == N returns the inputs.
    metric, keys, cls_attn, key_mass, attn, graph, source: see the module
      docstring.
    class_token: whether token 0 is a [CLS] token (never removed, stays
      first).
    layer, depth: the block's index and the number of blocks, for methods
      whose official defaults follow the depth (pitome, zero_tprune) and for
      per-block options.
    **options: method options (module docstring); unknown ones raise. An
      option in `REDUCERS[method].layer_options` may be a list (one entry per
      block) or a function of the block index.

  Returns:
    `Reduced(x, size, source, graph)`; source is None when none was given,
    graph is GTP-ViT's carried graph (else the `graph` given).
  """
  info = _info(method)
  unknown = sorted(set(options) - set(info.options))
  if unknown:
    raise TypeError(f"reducer {method!r} got unknown options {unknown}; it "
                    f"accepts {list(info.options)}.")
  for name in info.layer_options:
    value = options.get(name)
    if isinstance(value, (list, tuple)) or callable(value):
      if layer is None:
        raise TypeError(f"reducer {method!r}: per-block option {name} needs "
                        "layer=; pass the block index or a single value.")
      options[name] = value(layer) if callable(value) else value[layer]
  keep = check_keep(keep, x.shape[1], class_token, method)
  if size is None:
    size = init_size(x)
  if keep == x.shape[1]:
    return Reduced(x, size, source, graph)
  if metric is None:
    metric = x if keys is None else keys.mean(axis=2)
  if cls_attn is not None and cls_attn.ndim == 3:
    cls_attn = cls_attn.mean(axis=1)
  if key_mass is not None and key_mass.ndim == 3:
    key_mass = key_mass.mean(axis=1)
  out = info.fn(x, size, keep=keep, metric=metric, keys=keys,
                cls_attn=cls_attn, key_mass=key_mass, attn=attn, graph=graph,
                class_token=class_token, source=source, layer=layer,
                depth=depth, **options)
  return out if out.graph is not None or graph is None else out._replace(
      graph=graph)


__all__ = [
    "LINKAGES", "REDUCERS", "ReducerInfo", "Reduced", "STATS",
    "agglomerative_labels", "atc", "bipartite_soft_matching", "block_flops",
    "constant_r",
    "PRUNED", "dart", "dense_source", "relabel", "dart_select", "decreasing_r", "divprune", "energy_score",
    "attention_rank", "get_reducer", "gtp", "gtp_graph", "inflected_r",
    "init_size", "init_source", "max_min_select", "merge_source",
    "merge_wavg", "needs", "pitome", "reduce", "register_reducer",
    "tokens_per_layer",
    "tome", "topk_prune", "vit_flops", "vit_flops_breakdown",
    "weighted_pagerank", "zero_tprune",
]
