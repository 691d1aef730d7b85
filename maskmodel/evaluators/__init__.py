"""Evaluators by name. Each is `fn(ctx, params, task_state, cache) -> metrics`.

`config.evals.NAME.every` sets how often one runs (0 = only at the end).
Feature-based evaluators share one feature extraction per round via `cache`,
and read the network from `cache["feature_fn"]` when it is there (the raw
pixels of `run_on_pixels`), else from `task.features`. A network reads
`features_lib.model_input(batch)`: images, or a sequence's tokens and mask.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from maskmodel import sharding
from maskmodel.config import ConfigError
from maskmodel.data.pipeline import eval_preprocess
from maskmodel.evaluators import features as features_lib
from maskmodel.evaluators import low_label as low_label_lib
from maskmodel.evaluators.knn import balanced_accuracy, knn_predict
from maskmodel.evaluators.linear_probe import linear_probe
from maskmodel.evaluators.plots import image_grid
from maskmodel.paths import workdir_path


@dataclasses.dataclass
class Context:
  config: Any
  task: Any
  mesh: Any
  train_source: Any
  test_source: Any
  spec: Any
  workdir: Any  # an etils.epath.Path or str, local or gs://

  def example(self, record):
    """One eval example: the task's `preprocess` with train=False, or the
    image eval preprocessing of `spec` where there is no task (pixels)."""
    if hasattr(self.task, "preprocess"):
      return self.task.preprocess(record, None, False)
    return eval_preprocess(record, self.spec)

  def test_batches(self):
    """The test split's eval batches on the mesh, with their real row count
    (`features.mesh_batches`: each process decodes its own rows)."""
    return features_lib.mesh_batches(
        self.test_source, batch_size=self.config.evals.batch_size,
        mesh=self.mesh, preprocess=self.example,
        num_threads=self.config.evals.decode_threads)


# One jit per task method, taking params and state as arguments: a closure
# over this round's params would be a new function, traced and compiled again
# at every eval round. The task, or its bound method, is static (hashed by
# identity).
@functools.partial(jax.jit, static_argnums=0)
def _apply_features(features_fn, params, task_state, images):
  return features_fn(params, task_state, images)


@functools.partial(jax.jit, static_argnums=0)
def _task_predictions(task, params, task_state, images):
  return task.logits(params, task_state, images).argmax(-1)


@functools.partial(jax.jit, static_argnums=0)
def _task_reconstruction(task, params, task_state, images, rng):
  return task.reconstruct(params, task_state, images, rng)


def _extract(ctx, feature_fn):
  """(train, test) features of `feature_fn`, the value of cache["features"]."""
  kw = dict(batch_size=ctx.config.evals.batch_size, preprocess=ctx.example,
            mesh=ctx.mesh, num_threads=ctx.config.evals.decode_threads)
  return (features_lib.extract(feature_fn, ctx.train_source, **kw),
          features_lib.extract(feature_fn, ctx.test_source, **kw))


def _features_fn(ctx, cache):
  """The network the feature evaluators score: the task's, or raw pixels."""
  return cache["feature_fn"] if "feature_fn" in cache else ctx.task.features


def _features(ctx, params, task_state, cache):
  if "features" not in cache:
    cache["features"] = _extract(ctx, functools.partial(
        _apply_features, _features_fn(ctx, cache), params, task_state))
  return cache["features"]


def _scores(ctx, name, pred, labels):
  """`{name}_accuracy`, and with `evals.balanced_accuracy` (imbalanced
  labels, such as the genome's coding windows) `{name}_balanced_accuracy`."""
  out = {f"{name}_accuracy": float(np.mean(pred == labels))}
  if ctx.config.evals.get("balanced_accuracy", False):
    out[f"{name}_balanced_accuracy"] = balanced_accuracy(pred, labels)
  return out


def knn(ctx, params, task_state, cache):
  (xtr, ytr), (xte, yte) = _features(ctx, params, task_state, cache)
  c = ctx.config.evals.knn
  pred = knn_predict(xtr, ytr, xte, k=c.k,
                     num_classes=ctx.config.data.num_classes, mesh=ctx.mesh)
  return _scores(ctx, "knn", pred, np.asarray(yte))


def probe(ctx, params, task_state, cache):
  (xtr, ytr), (xte, yte) = _features(ctx, params, task_state, cache)
  c = ctx.config.evals.linear_probe
  r = linear_probe(xtr, ytr, xte, yte, num_classes=ctx.config.data.num_classes,
                   steps=c.steps, lr=c.lr)
  return _scores(ctx, "linear_probe", r["test_predictions"], np.asarray(yte))


def low_label_finetune(ctx, params, task_state, cache):
  """Fine-tunes the network and a new linear head on each fraction of the
  training labels (`evals.low_label.fractions`, class-balanced, seeded), the
  same steps for every starting point; test accuracy on the full test split.
  On raw pixels (no params) only the head trains: a linear classifier."""
  c = ctx.config.evals.low_label
  for key, ok, fix in (("steps", c.steps > 0, "> 0"), ("lr", c.lr > 0, "> 0"),
                       ("head_lr", c.head_lr > 0, "> 0"),
                       ("batch_size", c.batch_size > 0 and
                        c.batch_size % ctx.mesh.size == 0,
                        f"a positive multiple of the {ctx.mesh.size} devices")):
    if not ok:
      raise ConfigError(f"evals.low_label.{key}={c[key]} must be {fix}.")
  num_classes = ctx.config.data.num_classes
  if "train_labels" not in cache:
    cache["train_labels"] = np.asarray(
        [ctx.train_source[i]["label"] for i in range(len(ctx.train_source))])
  fn = _features_fn(ctx, cache)
  out = {}
  for fraction in c.fractions:
    idx = low_label_lib.labelled_subset(cache["train_labels"], fraction,
                                        num_classes, seed=c.seed)
    trained = low_label_lib.finetune(
        fn, params, task_state, ctx.train_source, idx, num_classes=num_classes,
        preprocess=ctx.example, mesh=ctx.mesh, steps=c.steps, lr=c.lr,
        head_lr=c.head_lr,
        batch_size=c.batch_size, weight_decay=c.weight_decay, seed=c.seed)
    out[low_label_lib.metric_name(fraction)] = low_label_lib.split_accuracy(
        fn, trained, task_state, ctx.test_batches())
  return out


def accuracy(ctx, params, task_state, cache):
  del cache
  fn = functools.partial(_task_predictions, ctx.task, params, task_state)
  correct = total = 0
  for batch, n in ctx.test_batches():
    pred = sharding.to_host(fn(features_lib.model_input(batch)))[:n]
    correct += int((pred == sharding.to_host(batch["label"])[:n]).sum())
    total += n
  return {"test_accuracy": correct / total}


def reconstruction(ctx, params, task_state, cache):
  """Writes `reconstructions.png`: original / masked / reconstructed rows."""
  del cache
  n = ctx.config.evals.reconstruction.num_images
  images = np.stack([ctx.example(ctx.test_source[i])["image"] for i in range(n)])
  out = {k: np.asarray(v) for k, v in _task_reconstruction(
      ctx.task, params, task_state, images, jax.random.PRNGKey(ctx.config.seed)).items()}
  if jax.process_index() == 0:  # one writer for the shared workdir
    image_grid({"original": out["original"], "masked": out["masked"],
                "reconstructed": out["reconstruction"]},
               workdir_path(ctx.workdir) / "reconstructions.png",
               ctx.config.data.mean, ctx.config.data.std)
  hidden = out["mask"]  # [B, H, W, 1]: the mean over hidden pixels, channels
  err = float(((out["reconstruction"] - out["original"]) ** 2 * hidden).sum()
              / (hidden.sum() * out["original"].shape[-1]))
  return {"reconstruction_mse_pixels": err}


EVALUATORS = {"knn": knn, "linear_probe": probe, "low_label": low_label_finetune,
              "accuracy": accuracy, "reconstruction": reconstruction}
# The evaluators that score a representation through `features`: the loop
# reruns them on the initial params and on raw pixels (`run_on_pixels`).
FEATURE_EVALUATORS = ("knn", "linear_probe", "low_label")


def registry(task):
  """The built-in evaluators plus the task's own (`Task.evaluators`)."""
  own = task.evaluators() if hasattr(task, "evaluators") else {}
  clash = sorted(set(own) & set(EVALUATORS))
  if clash:
    raise ConfigError(f"the task's evaluators {clash} reuse built-in names; "
                      "rename them.")
  return {**EVALUATORS, **own}


def due(config, step: int, final: bool, task=None):
  """Names of the evaluators to run at `step`. An evaluator without
  `evals.NAME.every` in the config runs at the end only."""
  known = registry(task) if task is not None else EVALUATORS
  names = []
  for name in config.evals.names:
    if name not in known:
      raise ConfigError(f"evals.names has unknown evaluator {name!r}; use some of "
                        f"{sorted(known)}.")
    every = config.evals[name].every if name in config.evals else 0
    if final or (every and step % every == 0):
      names.append(name)
  return names


def run(ctx, names, params, task_state, cache=None):
  cache = {} if cache is None else cache
  known = registry(ctx.task)
  out = {}
  for name in names:
    out.update(known[name](ctx, params, task_state, cache))
  return out


def run_on_pixels(ctx, names):
  """The feature evaluators among `names`, on the flattened, normalized
  pixels of the same train/test split instead of an encoder's features: the
  baseline a learned representation has to beat (DESIGN.md, Baselines).
  For sequences the raw input is a bag of k-mers of the token ids
  (`features_lib.bag_of_kmers`, k = `evals.raw_kmer`)."""
  names = [n for n in names if n in FEATURE_EVALUATORS]
  if not names:
    return {}
  # The pixel "network" has no params: k-NN and the probe read pixels, and
  # the low-label fine-tune trains only its linear head.
  try:
    fn = features_lib.raw_features(ctx.example(ctx.test_source[0]), ctx.config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return run(ctx, names, {}, None, {"feature_fn": fn})
