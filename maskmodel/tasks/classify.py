"""Supervised image classification with the encoder `model.name` names:
fine-tuning or from scratch.

With `task.init_from` set to an MAE workdir, the encoder starts from its last
checkpoint (MAE Sec. 4, "fine-tuning"); the head starts at zero. That load
is `load_pretrained`, which the loop skips when the run resumes from its own
checkpoint. `optimizer.layer_decay < 1` scales each layer's learning rate
(`param_labels`). With
`model.token_reduction` the ViT merges or prunes tokens in training and in
every eval alike.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from maskmodel import checkpoint
from maskmodel import optim
from maskmodel.config import ConfigError
from maskmodel.models import get_model
from maskmodel.tasks.base import TaskBase


def softmax_cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  onehot = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, onehot).mean()


class ClassifyTask(TaskBase):
  """Task contract: `init`, `loss`, `load_pretrained`, `param_labels`, plus
  `logits` and `features` for evals."""

  def __init__(self, config):
    super().__init__(config)
    self.family = get_model(config.model.name)
    self.num_classes = config.data.num_classes
    self.model = self.family.build(config.model, num_classes=self.num_classes,
                                   num_tokens=self.family.num_tokens(config))

  def init(self, rng, batch):
    return self.model.init(rng, batch["image"])["params"], {}

  def load_pretrained(self, params, state):
    if self.config.task.init_from:
      pretrained = checkpoint.load_encoder_params(self.config.task.init_from)
      params = transfer_encoder(params, pretrained)
    return params, state

  def param_labels(self, params):
    """Layer-wise lr decay over the model's depth, when configured."""
    o = self.config.optimizer
    if o.layer_decay >= 1.0:
      return None
    if self.family.layer_ids is None:
      raise ConfigError(f"model.name={self.family.name!r} has no layer depths "
                        "for optimizer.layer_decay; set it to 1.0.")
    ids, num_layers = self.family.layer_ids(params, self.config.model)
    return optim.layer_decay_scales(ids, o.layer_decay, num_layers)

  def logits(self, params, state, images):
    del state
    return self.model.apply({"params": params}, images)["logits"]

  def features(self, params, state, images):
    del state
    return self.model.apply({"params": params}, images)["pooled"]

  def encoder_params(self, params):
    return {k: v for k, v in params.items() if k != "head"}

  def loss(self, params, state, batch, rng, step):
    del rng, step
    logits = self.logits(params, state, batch["image"])
    loss = softmax_cross_entropy(logits, batch["label"], self.num_classes,
                                 self.config.task.label_smoothing)
    acc = (logits.argmax(-1) == batch["label"]).mean()
    return loss, ({"loss": loss, "accuracy": acc}, state)


# Encoder params that only pretraining uses (SimMIM's mask token).
PRETRAINING_ONLY = ("head", "mask_token")


def transfer_encoder(params, pretrained):
  """Copies every pretrained encoder leaf into `params`; the head stays new."""
  encoder = {k: v for k, v in params.items() if k != "head"}
  pretrained = {k: v for k, v in pretrained.items() if k not in PRETRAINING_ONLY}
  diff = checkpoint.shape_mismatch(pretrained, encoder)
  if diff:
    raise checkpoint.CheckpointError(
        f"the encoder in task.init_from does not fit this model: {diff}. Use "
        "the model config of the pretraining run.")
  cast = lambda a, b: jnp.asarray(b, a.dtype)
  return dict(params, **jax.tree.map(cast, encoder, pretrained))
