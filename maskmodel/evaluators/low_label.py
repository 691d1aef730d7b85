"""Low-label fine-tuning: the whole network plus a new linear head, trained
with cross-entropy on a small labelled subset of the training split, scored
on the full test split.

This is the regime where masked pretraining is expected to pay off (MAE
Sec. 5, partial fine-tuning; BEiT/SimMIM report the same for low-shot
ImageNet): a pretrained encoder and the same encoder at random init run the
same number of steps on the same labels. Nothing here knows the method: the
network is any `features(params, state, images) -> [B, D]`, and raw pixels
are the same call with no params (the head alone, a linear classifier).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maskmodel import sharding
from maskmodel.config import ConfigError
from maskmodel.evaluators import features as features_lib


def metric_name(fraction: float) -> str:
  """`low_label_1%` for 0.01: the report's row for that fraction."""
  return f"low_label_{fraction * 100:g}%"


def labelled_subset(labels, fraction: float, num_classes: int, seed: int = 0):
  """Sorted indices of a class-balanced subset: `round(fraction * N /
  num_classes)` examples of every class, drawn without replacement by a
  seeded permutation, so the same labels come back for the same seed.

  Raises ConfigError when the fraction gives no example of a class, or a
  class has fewer examples than its share.
  """
  labels = np.asarray(labels)
  if not 0 < fraction <= 1:
    raise ConfigError(f"evals.low_label.fractions has {fraction}; each fraction "
                      "must be in (0, 1] (0.01 is 1% of the training labels).")
  per_class = int(round(fraction * len(labels) / num_classes))
  if per_class < 1:
    raise ConfigError(
        f"evals.low_label.fractions: {fraction} of {len(labels)} training "
        f"examples is less than one per class ({num_classes} classes); use a "
        f"fraction of at least {num_classes / len(labels):.3g}.")
  rng = np.random.default_rng(seed)
  picked = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise ConfigError(
          f"evals.low_label.fractions: {fraction} needs {per_class} examples "
          f"of class {c}, which has {len(members)}; use a smaller fraction.")
    picked.append(rng.permutation(members)[:per_class])
  return np.sort(np.concatenate(picked))


def batch_indices(n: int, batch_size: int, steps: int, seed: int = 0):
  """[steps, batch_size] indices into n examples: shuffled epochs back to
  back, so every example is seen once per epoch, and a batch larger than the
  subset repeats examples (the batch shape is static whatever the subset)."""
  rng = np.random.default_rng(seed)
  need = steps * batch_size
  order = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])
  return order[:need].reshape(steps, batch_size)


def _optimizer(lr, head_lr, weight_decay, steps):
  """AdamW with cosine decay; the new head has its own (larger) rate, so it
  catches up with a pretrained network without a rate that erases it."""
  adamw = lambda r: optax.adamw(optax.cosine_decay_schedule(r, steps),
                                weight_decay=weight_decay)
  labels = lambda t: {"net": jax.tree.map(lambda _: "net", t["net"]),
                      "head": jax.tree.map(lambda _: "head", t["head"])}
  return optax.multi_transform({"net": adamw(lr), "head": adamw(head_lr)},
                               labels)


def _logits(features_fn, trainable, task_state, images):
  feats = features_fn(trainable["net"], task_state, images)
  return feats @ trainable["head"]["w"] + trainable["head"]["b"]


@functools.partial(jax.jit, static_argnames="steps")
def _init(trainable, lr, head_lr, weight_decay, *, steps):
  return _optimizer(lr, head_lr, weight_decay, steps).init(trainable)


# Module level, with the network's params, the rates and weight decay as
# arguments and `features_fn` static (a bound method hashes by its object):
# every fine-tune of every eval round, trained or random init, reuses one
# program.
@functools.partial(jax.jit, static_argnames=("features_fn", "steps"),
                   donate_argnums=(0, 1))
def _step(trainable, opt_state, task_state, images, labels, lr, head_lr,
          weight_decay, *, features_fn, steps):
  def loss_fn(p):
    logits = _logits(features_fn, p, task_state, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  loss, grads = jax.value_and_grad(loss_fn)(trainable)
  updates, opt_state = _optimizer(lr, head_lr, weight_decay, steps).update(
      grads, opt_state, trainable)
  return optax.apply_updates(trainable, updates), opt_state, loss


@functools.partial(jax.jit, static_argnames="features_fn")
def _predict(trainable, task_state, images, *, features_fn):
  return _logits(features_fn, trainable, task_state, images).argmax(-1)


def _examples(source, indices, preprocess):
  """The network's inputs (`model_input`, stacked) and the labels."""
  recs = [preprocess(source[int(i)]) for i in indices]
  batch = {k: np.stack([r[k] for r in recs]) for k in recs[0]}
  return (features_lib.model_input(batch),
          np.asarray(batch["label"], np.int32))


def finetune(features_fn, params, task_state, train_source, indices, *,
             num_classes, preprocess, mesh, steps, lr, head_lr, batch_size,
             weight_decay=1e-4, seed=0):
  """Fine-tunes `params` and a zero-initialized linear head on the examples
  `indices` of `train_source`, full images without augmentation, for
  `steps` AdamW steps (cosine decay from `lr`, and from `head_lr` for the
  head). Returns the trained {"net", "head"}; `params` itself is left as it
  was. The subset's images are held in host memory."""
  repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  # The subset is decoded once and held on the host; each step gathers rows.
  inputs, labels = _examples(train_source, indices, preprocess)
  feature_dim = jax.eval_shape(features_fn, params, task_state, jax.tree.map(
      lambda x: x[:1], inputs)).shape[-1]
  # A copy: the step donates its params, and the caller's are still in use.
  trainable = jax.device_put(
      {"net": jax.tree.map(jnp.copy, params),
       "head": {"w": jnp.zeros((feature_dim, num_classes)),
                "b": jnp.zeros((num_classes,))}}, repl)
  kw = dict(features_fn=features_fn, steps=steps)
  opt_state = _init(trainable, lr, head_lr, weight_decay, steps=steps)
  for idx in batch_indices(len(indices), batch_size, steps, seed):
    batch = sharding.shard_replicated_batch(
        {"input": jax.tree.map(lambda x: x[idx], inputs),  # pylint: disable=cell-var-from-loop
         "label": labels[idx]}, data)
    trainable, opt_state, _ = _step(trainable, opt_state, task_state,
                                    batch["input"], batch["label"], lr,
                                    head_lr, weight_decay, **kw)
  return trainable


def split_accuracy(features_fn, trainable, task_state, batches):
  """Top-1 accuracy over `batches` of (batch on the mesh, n_valid), as
  `features.mesh_batches` yields them."""
  correct = total = 0
  for batch, n in batches:
    pred = sharding.to_host(_predict(trainable, task_state,
                                     features_lib.model_input(batch),
                                     features_fn=features_fn))[:n]
    correct += int((pred == sharding.to_host(batch["label"])[:n]).sum())
    total += n
  return correct / total
