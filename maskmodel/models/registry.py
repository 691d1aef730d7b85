"""Model families by name: `config.model.name` picks one.

A family tells the rest of maskmodel what it may ask of a model, so that no
task, evaluator or report assumes a ViT:

- `build(model_config, *, num_classes=0, num_tokens=None) -> nn.Module`:
  the encoder (with a classification head when `num_classes > 0`).
  `num_tokens` is the length of the token sequence it will see, for
  models whose static shapes depend on it (token reduction); others ignore it.
- `num_tokens(config) -> int | None`: that length on full images, or None
  for a model without tokens.
- `describe(config) -> str`: one line for `report.md`.
- `layer_ids(params, model_config) -> (tree of ints, num_layers)`: the depth
  of each parameter, for layer-wise lr decay; None where depth means nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from maskmodel.config import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  name: str
  build: Callable[..., Any]
  num_tokens: Callable[[Any], Optional[int]]
  describe: Callable[[Any], str]
  layer_ids: Optional[Callable[[Any, Any], tuple[Any, int]]] = None


MODELS: dict[str, ModelFamily] = {}


def register(name, *, build, num_tokens, describe, layer_ids=None):
  """Adds a model family under `name`; returns it."""
  if name in MODELS:
    raise ValueError(f"model {name!r} is registered twice.")
  MODELS[name] = ModelFamily(name, build, num_tokens, describe, layer_ids)
  return MODELS[name]


def get_model(name) -> ModelFamily:
  """The family `config.model.name` names; ConfigError for an unknown name."""
  if name not in MODELS:
    raise ConfigError(f"model.name={name!r} is unknown; use one of {sorted(MODELS)}.")
  return MODELS[name]
