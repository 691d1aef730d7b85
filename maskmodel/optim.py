"""The optax optimizer: AdamW, warmup + cosine schedule, gradient clipping,
and a learning-rate multiplier per parameter from the task
(`Task.param_labels`): layer-wise lr decay for fine-tuning (BEiT Sec. 2.4;
MAE Appendix A.2), per-group rates, and frozen leaves (multiplier 0)."""
from __future__ import annotations

import jax
import optax


def lr_schedule(config):
  """Linear warmup from 0 to `optimizer.lr`, then `optimizer.schedule`:
  "cosine" down to `min_lr` at the last step, or "multistep", the rate
  times `gamma` at each step of `milestones` (SimMIM's schedule)."""
  o = config.optimizer
  if o.schedule == "multistep":
    warmup = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
    steps = optax.piecewise_constant_schedule(
        o.lr, {int(m) - o.warmup_steps: o.gamma for m in o.milestones})
    return optax.join_schedules([warmup, steps], [o.warmup_steps])
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


def layer_decay_scales(layer_ids, decay: float, num_layers: int):
  """The lr multiplier of layer i: decay**(num_layers - i) (BEiT Sec. 2.4)."""
  return jax.tree.map(lambda i: decay ** (num_layers - i), layer_ids)


def make_optimizer(config, params, lr_scales=None):
  """Returns `(tx, schedule)`.

  `lr_scales` (a tree like params of floats, `Task.param_labels`) multiplies
  each leaf's update; leaves at 0.0 are frozen: `optax.multi_transform`
  gives them `set_to_zero`, so AdamW keeps no moments for them (a frozen
  teacher costs no optimizer memory), and the gradient clip measures only
  the trained leaves.
  """
  o = config.optimizer
  schedule = lr_schedule(config)
  parts = []
  if o.grad_clip:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2,
                           weight_decay=o.weight_decay, mask=decay_mask))
  tx = optax.chain(*parts)
  scales = jax.tree.leaves(lr_scales)
  if 0.0 in scales:
    labels = jax.tree.map(lambda s: "frozen" if s == 0.0 else "trained",
                          lr_scales)
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                               labels)
  if any(s not in (0.0, 1.0) for s in scales):
    tx = optax.chain(tx, scale_by_tree(jax.tree.map(float, lr_scales)))
  return tx, schedule
