"""Per-layer token schedules, turned into static lists of tokens kept.

A model with token reduction needs, for every layer, the number of tokens left
after that layer's reducer (a Python int, so shapes stay static). This module
turns a schedule spec into that list. The grammar is explicit: a tagged tuple
says what its numbers are.

  ("r", r)              remove r tokens in every layer (ToMe's constant
                        schedule); a bare int r means the same.
  ("r", [r0, r1, ...])  r per layer (ToMe's `parse_r` list; missing layers
                        remove 0).
  ("inflect", r, a)     ToMe's `parse_r((r, a))`: r per layer linear from
                        int(r (1 - a)) to 2r - int(r (1 - a)), a in [-1, 1].
  ("decreasing", r)     ToMe's decreasing schedule, ("inflect", r, -1): 2r in
                        the first layer down to 0 in the last (ToMe's
                        `parse_r` docstring; its benchmark uses (16, -1.0)).
  ("rate", rho, layers) keep `ceil(rho * (N - 1))` of the N - 1 non-class
                        tokens in each of the given layers, as EViT does;
                        ("rate", rho) uses EViT's layers (3, 6, 9). With
                        `extra_token=1` (EViT's fused token) one token is added
                        on top at each of those layers, and the previous fused
                        token counts among the N - 1, as in the official code.
  ("keep", [k0, k1, ...])  the tokens kept after each layer, given explicitly.
  ("constant", r)       the same as ("r", r).

Strings for the command line: "r:8" (or "constant:8"), "decreasing:8",
"inflect:8,-0.5", "keep:40,30,20,10". A bare sequence of numbers is refused:
(11, 7) could be a keep-list, ToMe's (r, inflect) or its r-list.
"""
from __future__ import annotations

import math
from typing import Sequence

from maskmodel.tokens.common import static_int

KINDS = ("r", "inflect", "decreasing", "rate", "keep", "constant")
EVIT_LAYERS = (3, 6, 9)   # youweiliang/evit: drop_loc of the DeiT models
_USAGE = ("write ('r', 8), ('r', [r per layer]), ('inflect', r, a), "
          "('decreasing', r), ('rate', rho, layers) or ('keep', [tokens kept "
          "per layer])")


def constant_r(r, depth):
  """ToMe's constant schedule: r tokens removed in every layer."""
  return [static_int(r, "r")] * depth


def inflected_r(r, inflect, depth):
  """ToMe's `parse_r((r, inflect))`: r per layer, linear from
  int(r (1 - inflect)) to 2r - int(r (1 - inflect))."""
  r = static_int(r, "r")
  inflect = float(inflect)
  if not -1.0 <= inflect <= 1.0:
    raise ValueError(f"inflect={inflect} must be in [-1, 1] (ToMe's parse_r).")
  lo = int(r * (1.0 - inflect))
  hi = 2 * r - lo
  if depth == 1:
    return [lo]
  step = (hi - lo) / (depth - 1)
  return [int(lo + step * i) for i in range(depth)]


def decreasing_r(r, depth):
  """ToMe's decreasing schedule, (r, -1): 2r in the first layer down to 0."""
  return inflected_r(r, -1.0, depth)


def per_layer_r(rs, depth):
  """ToMe's list form of `parse_r`: r per layer, missing layers 0."""
  rs = [static_int(v, "r") for v in rs]
  if len(rs) > depth:
    raise ValueError(f"('r', list) has {len(rs)} entries for depth={depth}; "
                     "give at most one per layer.")
  return rs + [0] * (depth - len(rs))


def _numbers(text):
  return [float(v) if "." in v or "e" in v else int(v)
          for v in text.split(",") if v.strip()]


def _parse_string(spec):
  kind, _, arg = spec.partition(":")
  kind = kind.strip()
  try:
    args = _numbers(arg)
  except ValueError:
    args = None
  if not args or kind not in KINDS or kind == "rate":
    raise ValueError(f"schedule {spec!r} is unknown; use 'r:R', "
                     "'decreasing:R', 'inflect:R,A' or 'keep:K0,K1,...', or "
                     f"in Python {_USAGE}.")
  if kind == "keep":
    return ("keep", args)
  if kind in ("r", "constant") and len(args) > 1:
    return ("r", args)
  return (kind, *args)


def parse(spec):
  """A spec -> ("r", [r per layer] maker) | ("rate", rho, layers) |
  ("keep", list)."""
  if isinstance(spec, str):
    spec = _parse_string(spec)
  if isinstance(spec, bool):
    raise TypeError(f"schedule spec {spec!r} is not a schedule; {_USAGE}.")
  if isinstance(spec, int):
    return ("r", lambda depth: constant_r(spec, depth))
  if not isinstance(spec, (tuple, list)) or not spec:
    raise TypeError(f"schedule spec {spec!r} is not a schedule; {_USAGE}.")
  if not isinstance(spec[0], str):
    raise ValueError(f"schedule {tuple(spec)!r} is ambiguous: a bare sequence "
                     "could be the tokens kept per layer, ToMe's (r, inflect) "
                     f"or its r per layer; {_USAGE}.")
  kind, args = spec[0], tuple(spec[1:])
  if kind in ("r", "constant") and len(args) == 1:
    if isinstance(args[0], (list, tuple)):
      return ("r", lambda depth: per_layer_r(args[0], depth))
    return ("r", lambda depth: constant_r(args[0], depth))
  if kind == "inflect" and len(args) == 2:
    return ("r", lambda depth: inflected_r(args[0], args[1], depth))
  if kind == "decreasing" and len(args) == 1:
    return ("r", lambda depth: decreasing_r(args[0], depth))
  if kind == "rate" and len(args) in (1, 2):
    layers = tuple(args[1]) if len(args) == 2 else EVIT_LAYERS
    return ("rate", float(args[0]), layers)
  if kind == "keep" and len(args) == 1 and isinstance(args[0], (list, tuple)):
    return ("keep", [static_int(k, "tokens kept") for k in args[0]])
  raise ValueError(f"schedule {tuple(spec)!r} is unknown; {_USAGE}.")


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
  parsed = parse(spec)
  if parsed[0] == "keep":
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
