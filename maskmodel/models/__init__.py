"""Flax linen models, built by `config.model.name` through a registry
(`registry.py`): `get_model(config.model.name).build(config.model, ...)`."""
from maskmodel.models.registry import MODELS, ModelFamily, get_model, register
from maskmodel.models import build as _vit  # registers "vit"
from maskmodel.models import convnet as _convnet  # registers "convnet"
from maskmodel.models import seq as _seq  # registers "seq"
from maskmodel.models import mergedna as _mergedna  # registers "mergedna"
