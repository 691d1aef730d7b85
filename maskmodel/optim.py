"""The optax optimizer: AdamW, warmup + cosine schedule, gradient clipping,
and layer-wise lr decay for fine-tuning (BEiT Sec. 2.4; MAE Appendix A.2)."""
from __future__ import annotations

import jax
import optax


def lr_schedule(config):
  o = config.optimizer
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps,
      decay_steps=config.total_steps, end_value=o.min_lr)


def decay_mask(params):
  """Weight decay on matrices only: no decay on biases, norms, tokens."""
  return jax.tree.map(lambda p: p.ndim > 1 and p.size > p.shape[-1], params)


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by a fixed per-leaf factor."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, scales), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(config, params, layer_ids=None, num_layers=None):
  """Returns `(tx, schedule)`. `layer_ids` (a tree like params) enables
  layer-wise decay: the lr of layer i is scaled by decay**(num_layers - i)."""
  o = config.optimizer
  schedule = lr_schedule(config)
  parts = []
  if o.grad_clip:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2,
                           weight_decay=o.weight_decay, mask=decay_mask(params)))
  if o.layer_decay < 1.0 and layer_ids is not None:
    scales = jax.tree.map(lambda i: o.layer_decay ** (num_layers - i), layer_ids)
    parts.append(scale_by_tree(scales))
  return optax.chain(*parts), schedule
