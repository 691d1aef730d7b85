"""Frozen-feature extraction over a whole split."""
from __future__ import annotations

import jax
import numpy as np

from maskmodel import sharding
from maskmodel.data import eval_batches


def extract(feature_fn, source, *, batch_size, mesh, spec=None, preprocess=None):
  """Applies a jitted `feature_fn(images) -> [B, D]` to every example, made
  by `preprocess(record)` (default: the eval preprocessing of `spec`).

  Returns (features [N, D] float32, labels [N] int32) as numpy arrays.
  """
  data_sharding = sharding.batch_sharded(mesh)
  feats, labels = [], []
  for batch, n_valid in eval_batches(source, batch_size=batch_size, spec=spec,
                                     preprocess=preprocess):
    images = sharding.shard_replicated_batch(batch["image"], data_sharding)
    feats.append(sharding.to_host(feature_fn(images))[:n_valid])
    labels.append(batch["label"][:n_valid])
  return np.concatenate(feats).astype(np.float32), np.concatenate(labels)


@jax.jit
def pixels(images):
  """The input itself, flattened: [B, H, W, C] -> [B, H*W*C].

  The no-encoder baseline. Images arrive as the evals see them (resized,
  cropped, normalized), so an encoder and its pixels are scored on the same
  input.
  """
  return images.reshape(images.shape[0], -1)


def pixel_features(params, task_state, images):
  """`pixels` in the shape of `Task.features`: the no-encoder baseline for
  evaluators that take a network (it has no params and no state)."""
  del params, task_state
  return images.reshape(images.shape[0], -1)
