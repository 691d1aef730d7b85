"""Linear probing: a softmax classifier on frozen features (MAE Sec. 4).

Features are standardized with training statistics (MAE puts a BatchNorm
without affine before the linear head for the same reason) and the head is
trained full-batch with AdamW.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def linear_probe(train_x, train_y, test_x, test_y, *, num_classes, steps=500,
                 lr=1e-2, weight_decay=1e-4, seed=0):
  """Returns {"train_accuracy", "test_accuracy", "test_predictions"} of a
  linear softmax head."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  xs, xt = (train_x - mean) / std, (test_x - mean) / std
  d = xs.shape[1]
  params = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros((num_classes,))}
  del seed  # zero init and full-batch updates make this deterministic
  params = _fit(params, jnp.asarray(xs), jnp.asarray(train_y), lr, weight_decay,
                steps=steps)
  predict = lambda x: np.asarray(x @ params["w"] + params["b"]).argmax(1)
  test_pred = predict(xt)
  return {"train_accuracy": float(np.mean(predict(xs) == train_y)),
          "test_accuracy": float(np.mean(test_pred == test_y)),
          "test_predictions": test_pred}


def _loss(p, x, y):
  logits = x @ p["w"] + p["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# Module level, with lr and weight decay as arguments, so that each eval
# round reuses one compilation instead of jitting a new closure.
@functools.partial(jax.jit, static_argnames="steps")
def _fit(params, x, y, lr, weight_decay, *, steps):
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)
  def step(carry, _):
    p, s = carry
    u, s = tx.update(jax.grad(_loss)(p, x, y), s, p)
    return (optax.apply_updates(p, u), s), None
  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return params
