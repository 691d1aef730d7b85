"""Patch tokenizers: a frozen map from image patches to discrete ids and back.

Token-target methods (BEiT, CAE, CCViT) predict, at hidden positions, the id
a tokenizer gives each patch. The tokenizer is fitted or loaded once, before
training, and is never trained by the task: a task keeps its state under
`task_state["frozen"]` (see `maskmodel.tasks.base`), so the loop checkpoints
it once per run, a resume reads it back from there, and no optimizer sees it.

A `PatchTokenizer` works on patches in pixel units, values in [0, 1] (the
`ToTensor` images the official tokenizers read), each flattened as
`maskmodel.models.patches.patchify` does, (p, p, C). `unit_pixels` turns the
pipeline's normalized images back into those units.

How a task obtains its tokenizer: `init` puts `placeholder(patch_dim)` in its
state (shapes only, it runs under `jit`), and `load_pretrained`, which the
loop calls once for a fresh run, replaces it with `fit_on_training_images`:
the first `images` records of the training split, with the eval
preprocessing (resize and center crop, no augmentation: CCViT's
`train_faiss_kmeans.py` reads Resize(256) + CenterCrop(224)), fitted with
the run's seed. Every host reads the same records and fits with the same key,
so every host holds the same codebook.

Registered: "kmeans" (`maskmodel.tokenizers.kmeans`, CCViT's). A learned VQ
tokenizer plugs in by adding a class with the same four members to
`TOKENIZERS`.
"""
from __future__ import annotations

from typing import Any, Protocol

import jax
import numpy as np

from maskmodel import data
from maskmodel.config import ConfigError
from maskmodel.models.patches import patchify
from maskmodel.tokenizers.kmeans import KMeansTokenizer


class PatchTokenizer(Protocol):
  """What token-target tasks ask of a tokenizer; `frozen` is its state (a
  pytree of arrays) as the task keeps it under `task_state["frozen"]`."""
  vocab_size: int

  def placeholder(self, patch_dim: int) -> Any:
    """Zeros of the fitted state's shapes, for `Task.init` under `jit`."""

  def fit(self, rng, patches) -> Any:
    """The fitted state from patches [..., P] in [0, 1] pixel units."""

  def encode(self, frozen, patches):
    """patches [B, N, P] -> int32 ids [B, N]."""

  def decode(self, frozen, ids):
    """ids [B, N] -> the pixels each id stands for, [B, N, P]."""


TOKENIZERS = {"kmeans": KMeansTokenizer}
FIT_KEYS = ("name", "images")  # read here, not by the tokenizer class
FIT_STREAM = 0x746f6b  # folded into the run's seed for the fit's key


def get_patch_tokenizer(cfg, option: str = "task.tokenizer") -> PatchTokenizer:
  """The tokenizer that `cfg` (a ConfigDict or dict: `name` plus the class'
  keyword options, and `images` for `fit_on_training_images`) describes."""
  cfg = dict(cfg)
  name = cfg.get("name")
  if name not in TOKENIZERS:
    raise ConfigError(f"{option}.name={name!r} is unknown; use one of "
                      f"{sorted(TOKENIZERS)}.")
  kwargs = {k: v for k, v in cfg.items() if k not in FIT_KEYS}
  try:
    return TOKENIZERS[name](**kwargs, option=option)
  except TypeError:
    raise ConfigError(f"{option} has options {sorted(kwargs)} that the "
                      f"{name!r} tokenizer does not take; see "
                      f"{TOKENIZERS[name].__module__}.") from None


def unit_pixels(images, data_config):
  """The pipeline's normalized images, (x/255 - mean) / std, back in [0, 1]
  pixel units."""
  mean = np.asarray(data_config.mean, np.float32)
  std = np.asarray(data_config.std, np.float32)
  return images * std + mean


def training_pixels(config, num_images: int, option: str = "task.tokenizer.images"):
  """The first `num_images` records of the training split, eval-preprocessed
  (no augmentation), in [0, 1] pixel units: [num_images, H, W, C] float32."""
  d = config.data
  source = data.get_source(d.name, d.train_split, data_dir=d.data_dir,
                           image_size=d.image_size, channels=d.channels,
                           num_classes=d.num_classes, limit=d.train_examples)
  if not 0 < num_images <= len(source):
    raise ConfigError(f"{option}={num_images} must be in [1, {len(source)}], "
                      f"the {d.name} training records available.")
  spec = data.image_spec(d)
  images = np.stack([data.eval_preprocess(source[i], spec)["image"]
                     for i in range(num_images)])
  return unit_pixels(images, d)


def fit_on_training_images(tokenizer: PatchTokenizer, config, cfg,
                           option: str = "task.tokenizer"):
  """The tokenizer's frozen state, fitted on the patches of the first
  `cfg.images` training images with a key from `config.seed`."""
  pixels = training_pixels(config, int(cfg["images"]), f"{option}.images")
  patches = patchify(jax.numpy.asarray(pixels), config.model.patch_size)
  # A key of its own: the run's seed also draws the params and the masks.
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), FIT_STREAM)
  return tokenizer.fit(rng, patches)
