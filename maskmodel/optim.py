"""The optax optimizer: AdamW or LAMB, warmup + cosine schedule, an optional
cosine weight-decay schedule, gradient clipping,
and a learning-rate multiplier per parameter from the task
(`Task.param_labels`): layer-wise lr decay for fine-tuning (BEiT Sec. 2.4;
MAE Appendix A.2), per-group rates, and frozen leaves (multiplier 0)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def lr_schedule(config):
  """Linear warmup from `optimizer.warmup_init` (default 0; I-JEPA's
  `start_lr`) to `optimizer.lr`, then `optimizer.schedule`:
  "cosine" down to `min_lr` at the last step, or "multistep", the rate
  times `gamma` at each step of `milestones` (SimMIM's schedule)."""
  o = config.optimizer
  if o.schedule == "multistep":
    warmup = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
    steps = optax.piecewise_constant_schedule(
        o.lr, {int(m) - o.warmup_steps: o.gamma for m in o.milestones})
    return optax.join_schedules([warmup, steps], [o.warmup_steps])
  return optax.warmup_cosine_decay_schedule(
      init_value=o.get("warmup_init", 0.0), peak_value=o.lr, warmup_steps=o.warmup_steps,
      decay_steps=config.total_steps, end_value=o.min_lr)


def decay_mask(params):
  """Weight decay on matrices only: no decay on biases (whatever their
  shape: the fused qkv bias is [3, H, Dh]), norms, tokens."""
  def decays(path, p):
    name = getattr(path[-1], "key", None) if path else None
    return p.ndim > 1 and p.size > p.shape[-1] and name != "bias"
  return jax.tree_util.tree_map_with_path(decays, params)


def weight_decay_schedule(config):
  """`optimizer.weight_decay`, constant, or with `optimizer.weight_decay_end`
  a cosine from it at step 0 to the end value at the last step (SparK's
  `lr_wd_annealing` in `pretrain/utils/lr_control.py`)."""
  o = config.optimizer
  start, end = o.weight_decay, o.get("weight_decay_end")
  if end is None:
    return lambda step: jnp.asarray(start, jnp.float32)
  last = max(config.total_steps - 1, 1)
  def schedule(step):
    cos = jnp.cos(math.pi * jnp.minimum(step, last) / last)
    return end + (start - end) * (0.5 + 0.5 * cos)
  return schedule


def add_scheduled_weight_decay(schedule, mask) -> optax.GradientTransformation:
  """`optax.add_decayed_weights` with a rate that follows `schedule(step)`."""
  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    rate = schedule(state.count)
    updates = jax.tree.map(lambda u, p, m: u + rate * p if m else u,
                           updates, params, mask(params))
    return updates, optax.ScaleByScheduleState(
        count=optax.safe_int32_increment(state.count))
  return optax.GradientTransformation(init, update)


def lamb(schedule, wd_schedule, b1, b2):
  """LAMB (You et al. 2020) as SparK runs it (`TheSameAsTimmLAMB`, SparK's
  `pretrain/utils/lamb.py`): Adam's bias-corrected step with eps 1e-6, plus
  weight decay, scaled by ||w|| / ||update|| (1 where either is 0) only on
  the decayed leaves (the official trust ratio skips parameters with no
  weight decay), then by the learning rate."""
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=1e-6),
      add_scheduled_weight_decay(wd_schedule, decay_mask),
      optax.masked(optax.scale_by_trust_ratio(), decay_mask),
      optax.scale_by_learning_rate(schedule))


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
  name = o.get("name", "adamw")
  if name == "lamb":
    parts.append(lamb(schedule, weight_decay_schedule(config), o.b1, o.b2))
  elif o.get("weight_decay_end") is not None:
    parts.append(optax.chain(
        optax.scale_by_adam(b1=o.b1, b2=o.b2),
        add_scheduled_weight_decay(weight_decay_schedule(config), decay_mask),
        optax.scale_by_learning_rate(schedule)))
  else:
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
