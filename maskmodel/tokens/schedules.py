"""Per-layer token schedules, turned into static lists of tokens kept.

A model with token reduction needs, for every layer, the number of tokens left
after that layer's reducer (a Python int, so shapes stay static). This module
turns a compact schedule spec into that list.

Specs accepted by `tokens_per_layer`:
  * `r` (int) or `"constant:r"`: remove r tokens in every layer (ToMe's
    constant schedule).
  * `(r, inflect)`: ToMe's `parse_r` schedule, r per layer varying linearly
    from `r * (1 - inflect)` to `r * (1 + inflect)`; `("decreasing", r)` or
    `"decreasing:r"` is ToMe's decreasing schedule, inflect = -0.5
    (Bolya et al. 2023, merging-schedule experiments).
  * `("rate", rho, layers)`: keep `ceil(rho * (N - 1))` of the N - 1
    non-class tokens in each of the given layers, as EViT does; `("rate",
    rho)` uses EViT's layers (3, 6, 9). With `extra_token=1` (EViT's fused
    token) one token is added on top at each of those layers, and the
    previous fused token counts among the N - 1, as in the official code.
  * a list of ints, or `("keep", ints)`: the tokens kept after each layer,
    given explicitly.
"""
from __future__ import annotations

import math
from typing import Sequence

from maskmodel.tokens.common import static_int

KINDS = ("constant", "decreasing", "rate", "keep")
EVIT_LAYERS = (3, 6, 9)   # youweiliang/evit: drop_loc of the DeiT models


def constant_r(r, depth):
  """ToMe's constant schedule: r tokens removed in every layer."""
  return [static_int(r, "r")] * depth


def inflected_r(r, inflect, depth):
  """ToMe's `parse_r`: r per layer, linear from r(1 - inflect) to
  r(1 + inflect)."""
  r = static_int(r, "r")
  lo = int(r * (1.0 - inflect))
  hi = 2 * r - lo
  if depth == 1:
    return [lo]
  step = (hi - lo) / (depth - 1)
  return [int(lo + step * i) for i in range(depth)]


def decreasing_r(r, depth):
  """ToMe's decreasing schedule (inflect = -0.5): 1.5r first, 0.5r last."""
  return inflected_r(r, -0.5, depth)


def _parse(spec):
  """Spec -> ("r", list-maker) | ("rate", rho, layers) | ("list", list)."""
  if isinstance(spec, str):
    kind, _, arg = spec.partition(":")
    if kind not in ("constant", "decreasing") or not arg:
      raise ValueError(f"schedule {spec!r} is unknown; use 'constant:R', "
                       "'decreasing:R', an int r, (r, inflect), "
                       "('rate', rho, layers) or a list of tokens kept.")
    return _parse((kind, int(arg)))
  if isinstance(spec, bool):
    raise TypeError(f"schedule spec {spec!r} is not a schedule.")
  if isinstance(spec, int):
    return ("r", lambda depth: constant_r(spec, depth))
  if isinstance(spec, tuple) and spec and isinstance(spec[0], str):
    kind = spec[0]
    if kind == "constant" and len(spec) == 2:
      return ("r", lambda depth: constant_r(spec[1], depth))
    if kind == "decreasing" and len(spec) == 2:
      return ("r", lambda depth: decreasing_r(spec[1], depth))
    if kind == "rate" and len(spec) in (2, 3):
      layers = tuple(spec[2]) if len(spec) == 3 else EVIT_LAYERS
      return ("rate", float(spec[1]), layers)
    if kind == "keep" and len(spec) == 2:
      return ("list", [static_int(k, "tokens kept") for k in spec[1]])
    raise ValueError(f"schedule {spec!r} is unknown; kinds are {KINDS}.")
  if isinstance(spec, tuple) and len(spec) == 2:
    r, inflect = spec
    return ("r", lambda depth: inflected_r(r, float(inflect), depth))
  if isinstance(spec, list):
    return ("list", [static_int(k, "tokens kept") for k in spec])
  raise TypeError(f"schedule spec {spec!r} is not a schedule; kinds are "
                  f"{KINDS}.")


def tokens_per_layer(spec, depth, num_tokens, *, class_token=True,
                     bipartite=True, extra_token=0):
  """Static list of tokens left after each of `depth` layers.

  Args:
    spec: a schedule spec (see the module docstring).
    depth: number of transformer layers.
    num_tokens: tokens entering the first layer (class token included).
    class_token: whether one token is protected and never removed.
    bipartite: cap each layer's reduction at half of the non-class tokens, as
      ToMe's bipartite matching must (r-based specs only).
    extra_token: tokens a reducing layer adds on top of the rate's count
      (1 for EViT's fused token; rate specs only).

  Returns:
    `depth` ints, non-increasing, each >= 1 + class_token. Layer l runs its
    attention on entry l - 1 (num_tokens for l = 0) and its MLP on entry l.
  """
  depth = static_int(depth, "depth")
  num_tokens = static_int(num_tokens, "num_tokens")
  protected = int(bool(class_token))
  floor = protected + 1
  parsed = _parse(spec)
  if parsed[0] == "list":
    kept = parsed[1]
    if len(kept) != depth:
      raise ValueError(f"explicit schedule has {len(kept)} entries for "
                       f"depth={depth}; give one per layer.")
    prev = num_tokens
    for layer, k in enumerate(kept):
      if not floor <= k <= prev:
        raise ValueError(f"explicit schedule keeps {k} tokens at layer {layer} "
                         f"after {prev}; entries must be non-increasing and "
                         f">= {floor}.")
      prev = k
    return list(kept)
  if parsed[0] == "rate":
    _, rho, layers = parsed
    if not 0.0 < rho <= 1.0:
      raise ValueError(f"keep rate {rho} must be in (0, 1].")
    kept, n = [], num_tokens
    for layer in range(depth):
      if layer in layers:
        n = min(n, max(floor, protected + math.ceil(rho * (n - protected))
                       + static_int(extra_token, "extra_token")))
      kept.append(n)
    return kept
  rs = parsed[1](depth)
  kept, n = [], num_tokens
  for r in rs:
    r = max(r, 0)
    limit = (n - protected) // 2 if bipartite else n - floor
    n -= min(r, limit)
    kept.append(n)
  return kept


def removed_per_layer(kept: Sequence[int], num_tokens: int):
  """r per layer (tokens removed) for a list of tokens kept."""
  prev, rs = num_tokens, []
  for k in kept:
    rs.append(prev - k)
    prev = k
  return rs
