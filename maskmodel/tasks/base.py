"""The task contract: everything the one train/eval loop asks of a method.

A task is an object built from the config (`tasks.get_task`). It must give

- `init(rng, batch) -> (params, state)`, traced under `jit` by the loop:
  fresh params and task state (EMA
  teachers, codebooks, frozen tokenizers: anything the loop carries and
  checkpoints but the optimizer does not update). Task state under the key
  "frozen" (a dict state's) never changes after `load_pretrained`: the loop
  checkpoints it once per run, not at every step, as it does the params
  that `param_labels` freezes.
- `loss(params, state, batch, rng, step) -> (loss, (metrics, state))`: `step`
  is the index of the optimizer step being taken (0 for the first), for
  schedules of momentum, mask difficulty or weight decay.

and may override the defaults of `TaskBase`:

- `after_update(params, state, step) -> state`: runs inside the jitted step,
  after the optimizer has applied step `step`, with the new params (EMA
  teachers, momentum schedules, online codebooks).
- `param_labels(params) -> tree of floats, or None`: a learning-rate
  multiplier per parameter leaf; 0.0 freezes a leaf (its update is zero and
  the optimizer keeps no state for it), other values scale its update
  (per-group learning rates, layer-wise decay). None: every leaf at 1.0.
- `preprocess(record, rng, train) -> dict`: one example from a source record,
  on the host inside the grain pipeline; `rng` is a numpy Generator seeded
  by the run's seed and the example's index (None when `train` is False, for
  evals). It may return several views (a global crop and a local crop
  inside it) or token ids. Default: the image augmentation of
  `config.data` for training, the eval resize/crop otherwise; either way a
  normalized float "image" and the "label".
- `load_pretrained(params, state) -> (params, state)`: called once, only
  when the run does not resume from its own checkpoint, so a fine-tune
  resumes even when the pretraining workdir is gone.
- `eval_params(params, state) -> params`: the params the evaluators score
  (features, the low-label fine-tune's starting network), from the train
  params and task state; the loop calls it for every eval round and for the
  random-init baseline. Default: the params. I-JEPA scores its EMA target
  encoder, which lives in the task state.
- `evaluators() -> {name: fn(ctx, params, state, cache) -> {metric: value}}`:
  the task's own evaluators, run like the built-in ones of
  `maskmodel.evaluators` when `evals.names` lists them (every
  `evals.NAME.every` steps if the config sets it, else at the end).

Evaluation hooks (`features`, `logits`, `reconstruct`, `encoder_params`) are
read by `maskmodel.evaluators` where a task has them. `reconstruct(params,
state, images, rng)` returns images like its input ("original", "masked",
"reconstruction") and "mask" [B, H, W, 1], 1 where the input was hidden, so
the evaluator needs no knowledge of the model's patches.
"""
from __future__ import annotations

import functools
from typing import Any, Protocol

from maskmodel import data


class Task(Protocol):
  """The two methods every task writes; see the module docstring."""

  def init(self, rng, batch) -> tuple[Any, Any]:
    ...

  def loss(self, params, state, batch, rng, step):
    ...


class TaskBase:
  """Defaults for the optional methods of the contract."""

  def __init__(self, config):
    self.config = config

  def after_update(self, params, state, step):
    del params, step
    return state

  def param_labels(self, params):
    del params
    return None

  @functools.cached_property
  def image_spec(self):
    return data.image_spec(self.config.data)

  def preprocess(self, record, rng, train):
    if train:
      d = self.config.data
      return data.train_augment(record, rng, self.image_spec, d.crop_scale,
                                d.flip)
    return data.eval_preprocess(record, self.image_spec)

  def load_pretrained(self, params, state):
    return params, state

  def eval_params(self, params, state):
    del state
    return params

  def evaluators(self):
    return {}


class EncoderTask(TaskBase):
  """A pretraining task whose params keep its encoder under "encoder" and
  whose `self.encoder` (a registered model) pools a full image: the feature
  evals and a fine-tune's `task.init_from` read that encoder."""

  def features(self, params, state, images):
    del state
    return self.encoder.apply({"params": params["encoder"]}, images)["pooled"]

  def encoder_params(self, params):
    return params["encoder"]
