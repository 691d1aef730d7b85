"""The token-reducer registry and `reduce`, the one entry point.

Every reducer has one signature,

    fn(x, size, stats, *, keep, class_token, source, **options) -> Reduced

and is registered in its own module with `@register(name, needs=...)`. Its
options are its keyword parameters after `source` (with their defaults), so
they are written once; `reduce` rejects any other option, naming the valid
ones, and checks once that the statistics the method needs were given.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax

from maskmodel.tokens.common import Reduced, check_keep, init_size

STATS = ("metric", "keys", "cls_attn", "key_mass", "attn")
_FIXED = ("x", "size", "stats", "keep", "class_token", "source")


class Stats(NamedTuple):
  """What a block gives a reducer (plain arrays; reducers never run
  attention themselves), and where the block is.

  metric    `[B, N, C]` similarity features; `reduce` fills in the keys
            averaged over heads (ToMe's metric), else `x`.
  keys      `[B, N, H, hd]` per-head attention keys.
  cls_attn  `[B, N]` head-averaged attention of the [CLS] query to each key.
  key_mass  `[B, N]` head-averaged attention each key receives (summed over
            queries).
  attn      `[B, H, N, N]` (or `[B, N, N]`) attention probabilities.
  graph     GTP-ViT's token graph, carried from block to block.
  layer, depth  the block's index and the number of blocks.
  """
  metric: Optional[jax.Array] = None
  keys: Optional[jax.Array] = None
  cls_attn: Optional[jax.Array] = None
  key_mass: Optional[jax.Array] = None
  attn: Optional[jax.Array] = None
  graph: Optional[jax.Array] = None
  layer: Optional[int] = None
  depth: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ReducerInfo:
  """A registered reducer.

  fn: the reducer (module docstring for its signature).
  needs: the statistics it reads (names from STATS), or a function of its
    options that gives them.
  conserves_size: True when the output sizes sum to the input sizes
    (merging); pruning drops the removed tokens' sizes.
  options: its option names and defaults, read from its signature.
  prop_attn: whether its official code adds log(size) to the attention
    logits when a model is trained (or pretrained) with the reduction.
  prop_attn_off_the_shelf: the same for a model evaluated with a reduction
    it was not trained with (ToMe: on off the shelf, off for training and
    for MAE models, as its `apply_patch` advises).
  layer_options: options that may be given per block, as a list indexed by
    the block or a function of its index.
  init_graph: for methods that carry a token graph across blocks (GTP-ViT),
    `(x, class_token, **options) -> graph`, called once on the encoder input.
  edit_attn: for methods whose official code also changes the attention
    itself in every block (GTP-ViT's sparsity), `(options) -> None or
    fn(probs [B, H, N, N]) -> probs`; with a function, a ViT computes the
    probabilities explicitly in every block (not with a fused kernel), uses
    the edited ones for the attention output, and passes them as `attn`.
  """
  fn: Callable[..., Reduced]
  needs: Any
  conserves_size: bool
  options: Tuple[Tuple[str, Any], ...]
  prop_attn: bool = False
  prop_attn_off_the_shelf: bool = False
  layer_options: Tuple[str, ...] = ()
  init_graph: Optional[Callable[..., Any]] = None
  edit_attn: Optional[Callable[..., Any]] = None

  def default_prop_attn(self, off_the_shelf=False):
    return self.prop_attn_off_the_shelf if off_the_shelf else self.prop_attn


REDUCERS: dict[str, ReducerInfo] = {}


def _options(name, fn):
  params = list(inspect.signature(fn).parameters.values())
  names = [p.name for p in params]
  if tuple(names[:len(_FIXED)]) != _FIXED:
    raise TypeError(f"reducer {name!r} must be fn{_FIXED + ('**options',)}, "
                    f"got {names}.")
  options = []
  for p in params[len(_FIXED):]:
    if p.kind is not p.KEYWORD_ONLY or p.default is p.empty:
      raise TypeError(f"reducer {name!r}: option {p.name!r} must be a "
                      "keyword-only parameter with a default.")
    options.append((p.name, p.default))
  return tuple(options)


def register(name, *, needs, conserves_size, prop_attn=False,
             prop_attn_off_the_shelf=None, layer_options=(), init_graph=None,
             edit_attn=None):
  """Decorator: registers `fn` as the reducer `name` (see `ReducerInfo`)."""
  if not callable(needs):
    unknown = set(needs) - set(STATS)
    if unknown:
      raise ValueError(f"reducer {name!r} needs unknown inputs "
                       f"{sorted(unknown)}; choose from {STATS}.")
    needs = tuple(needs)

  def add(fn):
    options = _options(name, fn)
    bad = set(layer_options) - {k for k, _ in options}
    if bad:
      raise ValueError(f"reducer {name!r}: layer options {sorted(bad)} are "
                       "not among its options.")
    REDUCERS[name] = ReducerInfo(
        fn, needs, conserves_size, options, prop_attn,
        prop_attn if prop_attn_off_the_shelf is None
        else prop_attn_off_the_shelf, tuple(layer_options), init_graph,
        edit_attn)
    return fn
  return add


def _info(name):
  if name not in REDUCERS:
    raise ValueError(f"token reducer {name!r} is unknown; valid choices are "
                     f"{sorted(REDUCERS)}.")
  return REDUCERS[name]


def option_names(method):
  return [k for k, _ in _info(method).options]


def check_options(method, options):
  """Raises a one-line TypeError for an option `method` does not take."""
  unknown = sorted(set(options) - set(option_names(method)))
  if unknown:
    raise TypeError(f"reducer {method!r} got unknown options {unknown}; it "
                    f"accepts {option_names(method)}.")


def needs(method, options=None):
  """The statistics `method` reads with these options (names from STATS)."""
  info = _info(method)
  if callable(info.needs):
    return tuple(info.needs(dict(options or {})))
  return info.needs


def attention_edit(method, options=None):
  """The function a ViT applies to every block's attention probabilities
  for `method` with these options (`ReducerInfo.edit_attn`), or None."""
  info = _info(method)
  if info.edit_attn is None:
    return None
  return info.edit_attn(dict(options or {}))


def get_reducer(name):
  """`reduce` with the method bound."""
  _info(name)
  return lambda *args, **kwargs: reduce(name, *args, **kwargs)


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
    metric, keys, cls_attn, key_mass, attn, graph, layer, depth: see `Stats`;
      `[B, H, N]` per-head cls_attn / key_mass are averaged over heads.
    class_token: whether token 0 is a [CLS] token (never removed, stays
      first).
    source: `[B, N0]` int32 index map to carry along (start from
      `init_source(x)`); None disables source tracing.
    **options: the method's options; unknown ones raise. An option in
      `REDUCERS[method].layer_options` may be a list (one entry per block) or
      a function of the block index.

  Returns:
    `Reduced(x, size, source, graph)`; source is None when none was given,
    graph is GTP-ViT's carried graph (else the `graph` given).
  """
  info = _info(method)
  check_options(method, options)
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
  stats = Stats(metric, keys, cls_attn, key_mass, attn, graph, layer, depth)
  for name in needs(method, options):
    if getattr(stats, name) is None:
      if name == "attn":
        raise ValueError(
            f"reducer {method!r} with options {options or '{}'} needs "
            "attn=[B, H, N, N] attention probabilities, which fused "
            "attention kernels never materialize; pass them, or choose "
            "options that do not read them.")
      raise ValueError(f"reducer {method!r} needs {name}=[B, N...] (see "
                       "maskmodel.tokens.Stats); got None.")
  out = info.fn(x, size, stats, keep=keep, class_token=class_token,
                source=source, **options)
  return out if out.graph is not None or graph is None else out._replace(
      graph=graph)
