"""Weighted k-NN classification on frozen features (Wu et al. 2018; the
temperature-weighted vote of DINO, Caron et al. 2021, Sec. 4.1), on device.

The train features live on the devices once, split by rows over the given
sharding (all devices of a mesh's batch axes), and the test features go
through in chunks of static size: per chunk, one jitted program computes the
cosine similarities `[chunk, N_train]`, takes the top k (XLA partitions the
top-k over the row shards: each device keeps its own k, then the k of
those), and votes. Memory per device is `N_train / devices` features plus
`chunk x N_train / devices` similarities, so ImageNet's 1.28 M train
features fit on a slice; nothing of size N_test x N_train ever exists.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from maskmodel import sharding as sharding_lib


def _normalize(x):
  return x / (jnp.linalg.norm(x, axis=1, keepdims=True) + 1e-8)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _chunk_predictions(test_x, train_n, train_y, *, k, num_classes,
                       temperature):
  """Predicted class of each test row: the k most cosine-similar train rows
  vote with weight exp(s / T). Rows of `train_y` < 0 are padding and never
  vote."""
  sims = jnp.matmul(_normalize(test_x), train_n.T,
                    precision=jax.lax.Precision.HIGHEST)
  sims = jnp.where(train_y[None, :] >= 0, sims, -jnp.inf)
  top, idx = jax.lax.top_k(sims, k)
  weights = jnp.where(jnp.isfinite(top), jnp.exp(top / temperature), 0.0)
  votes = jnp.einsum("qk,qkc->qc", weights,
                     jax.nn.one_hot(train_y[idx], num_classes))
  return jnp.argmax(votes, axis=1)


def knn_accuracy(train_x, train_y, test_x, test_y, *, num_classes, k=20,
                 temperature=0.07, chunk=1024, mesh=None):
  """Top-1 accuracy of `knn_predict` (same arguments)."""
  pred = knn_predict(train_x, train_y, test_x, num_classes=num_classes, k=k,
                     temperature=temperature, chunk=chunk, mesh=mesh)
  return float(np.mean(pred == np.asarray(test_y)))


def knn_predict(train_x, train_y, test_x, *, num_classes, k=20,
                temperature=0.07, chunk=1024, mesh=None):
  """The class of each test row by a cosine-similarity k-NN vote weighted
  by exp(s/T), as a numpy array.

  With a `mesh`, the train rows are split over its batch axes
  (`sharding.batch_sharded`); without one they sit on the default device. Test
  rows go `chunk` at a time (the last chunk is padded, so every chunk has
  the same shape and compiles once).
  """
  train_x = np.asarray(train_x, np.float32)
  train_y = np.asarray(train_y, np.int32)
  test_x = np.asarray(test_x, np.float32)
  k = min(k, len(train_x))
  # Pad the train rows to a multiple of the shards (label -1: never votes).
  shards = 1 if mesh is None else sharding_lib.data_parallel_size(mesh)
  pad = -len(train_x) % shards
  train_x = np.concatenate([train_x, np.zeros((pad, train_x.shape[1]), np.float32)])
  train_y = np.concatenate([train_y, np.full((pad,), -1, np.int32)])
  put = jax.device_put if mesh is None else (
      lambda x: jax.device_put(x, sharding_lib.batch_sharded(mesh)))
  train_n = jax.jit(_normalize)(put(train_x))
  train_y = put(train_y)
  chunk = min(chunk, len(test_x))
  preds = []
  for start in range(0, len(test_x), chunk):
    rows = test_x[start:start + chunk]
    n = len(rows)
    rows = np.concatenate([rows, np.zeros((chunk - n, rows.shape[1]), np.float32)])
    pred = _chunk_predictions(rows, train_n, train_y, k=k,
                              num_classes=num_classes, temperature=temperature)
    preds.append(np.asarray(pred)[:n])
  return np.concatenate(preds)


def balanced_accuracy(pred, labels):
  """The mean over the classes present in `labels` of the fraction of that
  class predicted right (recall): chance is 1 / classes and a constant
  majority-class guess scores 1 / classes too, whatever the imbalance."""
  pred, labels = np.asarray(pred), np.asarray(labels)
  return float(np.mean([np.mean(pred[labels == c] == c)
                        for c in np.unique(labels)]))

