"""Frozen-feature extraction over a whole split.

A feature function takes what `model_input` gives it: the images of an
image batch, or, for a sequence batch (`{"tokens", "mask", "label"}`), the
dict of its tokens and mask. The no-encoder baseline (`raw_features`) is the
flattened pixels of an image, and a bag of k-mers of a sequence.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from maskmodel import sharding
from maskmodel.data import eval_batches


def model_input(batch):
  """What a network reads of a batch: `batch["image"]` for images; for
  sequences, everything but the label and the eval's `valid` rows
  (`{"tokens", "mask"}`)."""
  if "image" in batch:
    return batch["image"]
  return {k: v for k, v in batch.items() if k not in ("label", "valid")}


def mesh_batches(source, *, batch_size, mesh, spec=None, preprocess=None,
                 num_threads=0):
  """The eval batches of a split as global arrays on the mesh, with their
  real row count: each process decodes only its own rows
  (`eval_batches(local=True)`), and a boolean `valid` row field marks the
  padding of the last batch. `sharding.to_host(x)[:n]` gives the real rows
  of any per-row result, in order, on every host."""
  data_sharding = sharding.batch_sharded(mesh)
  for batch, n in eval_batches(source, batch_size=batch_size, spec=spec,
                               preprocess=preprocess, local=True,
                               num_threads=num_threads):
    rows = len(batch["label"])
    first = jax.process_index() * rows
    batch = dict(batch, valid=np.arange(first, first + rows) < n)
    yield sharding.shard_batch(batch, data_sharding), n


def extract(feature_fn, source, *, batch_size, mesh, spec=None, preprocess=None,
            num_threads=0):
  """Applies a jitted `feature_fn(images) -> [B, D]` to every example, made
  by `preprocess(record)` (default: the eval preprocessing of `spec`); each
  process decodes and embeds its share of every batch (`mesh_batches`).

  Returns (features [N, D] float32, labels [N] int32) as numpy arrays, the
  whole split on every host.
  """
  feats, labels = [], []
  for batch, n in mesh_batches(source, batch_size=batch_size, mesh=mesh,
                               spec=spec, preprocess=preprocess,
                               num_threads=num_threads):
    feats.append(sharding.to_host(feature_fn(model_input(batch)))[:n])
    labels.append(sharding.to_host(batch["label"])[:n])
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


# At most this many features per example in the bag-of-k-mers baseline.
MAX_KMER_FEATURES = 2**15


@functools.lru_cache(maxsize=None)   # one function (one jit) per (V, k)
def bag_of_kmers(vocab_size: int, k: int = 1):
  """The no-encoder baseline for sequences, in the shape of `Task.features`:
  the frequency of each k-mer of token ids among a sequence's real tokens
  (`mask`; [CLS] and [SEP] count as tokens), `[B, vocab_size ** k]`. k = 1
  is a bag of tokens; on DNA, k = 3 counts codons."""
  dim = vocab_size ** k
  if dim > MAX_KMER_FEATURES:
    raise ValueError(f"a bag of {k}-mers over {vocab_size} token ids has "
                     f"{dim} features, more than {MAX_KMER_FEATURES}; lower "
                     "evals.raw_kmer.")

  def features(params, task_state, inputs):
    del params, task_state
    tokens, mask = inputs["tokens"], inputs["mask"]
    b, n = tokens.shape
    m = n - k + 1
    ids = sum(tokens[:, j:j + m] * vocab_size ** (k - 1 - j) for j in range(k))
    real = jnp.stack([mask[:, j:j + m] for j in range(k)]).all(0)
    counts = jnp.zeros((b, dim), jnp.float32).at[
        jnp.arange(b)[:, None], ids].add(real.astype(jnp.float32))
    return counts / jnp.maximum(counts.sum(1, keepdims=True), 1.0)
  return features


def raw_features(example, config):
  """The no-encoder feature function for records like `example`: the
  pixels of an image, a bag of `evals.raw_kmer`-mers (default 1) over
  `model.vocab_size` token ids of a sequence."""
  if "image" in example:
    return pixel_features
  return bag_of_kmers(int(config.model.vocab_size),
                      int(config.evals.get("raw_kmer", 1)))
