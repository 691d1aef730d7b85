"""I-JEPA: Self-Supervised Learning from Images with a Joint-Embedding
Predictive Architecture (Assran et al., CVPR 2023, arXiv 2301.08243).

From one image, a context block predicts the representations of several
target blocks (Sec. 3). What the official code does
(facebookresearch/ijepa `src/train.py`, `src/masks/multiblock.py`,
`src/models/vision_transformer.py`, `src/helper.py`,
`src/utils/schedulers.py`), and this task with it:

- Masks: `maskmodel.masking.multiblock` (4 target blocks, scale 0.15-0.2,
  aspect 0.75-1.5; one context block, scale 0.85-1.0, aspect 1, the targets
  removed from it; sizes per batch, positions per image; every context
  truncated to its group's shortest).
- Targets (Sec. 3, "Targets"): the target encoder, an EMA of the context
  encoder, on the whole image; its output layer-normed over the features
  without affine (`F.layer_norm`), then gathered at each target block.
- Context: the context encoder on the context patches only; the predictor
  (`maskmodel.models.jepa.JEPAPredictor`) runs once per target block.
- Loss: `F.smooth_l1_loss(z, h)` (beta 1), the mean over every target patch
  and feature. The paper's Eq. 1 writes the average squared L2 distance:
  `task.loss="l2"` is that, the mean squared error over the same entries.
- The EMA momentum goes linearly from 0.996 to 1 over the run (`ema`),
  applied after each optimizer step (`after_update`), with no gradient.
- Optimizer (set in the config, `configs/ijepa/`): AdamW (0.9, 0.999), no
  gradient clipping; lr warms up linearly from 2e-4 to 1e-3 over 40
  epochs, then a cosine to 1e-6; weight decay a cosine from 0.04 to 0.4,
  none on biases and norms.
- Evaluation: the paper evaluates the target encoder with its output
  average-pooled (the repository releases no evaluation code).
  `eval_params` gives the evaluators the EMA encoder, so k-NN, the linear
  probe and the low-label fine-tune all read it (`task.eval_encoder=
  "context"` scores the context encoder instead).

Deliberate differences, named:
- The official schedulers count from 1 (the first step uses the lr and
  weight decay of step 1); maskmodel's from 0: the same curves, one step
  earlier. The momentum is the official one, step for step.
- The official collator draws block sizes on a host RNG seeded by the
  iteration; here they come from the step's key on the device.
- Initialization: see `maskmodel.models.jepa`.
- Optional `task.context_length`: a static length for the context lists
  below the largest context block, which saves the context encoder its
  work on padding; a group whose shortest context is longer is cut to it
  (`maskmodel.masking.multiblock`). 0 (the default): no such cut.
- The mask token gets no weight decay (the official groups decay every
  parameter that is not a bias or 1-d, so its 3-d mask token decays).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.config import ConfigError
from maskmodel.masking import multiblock
from maskmodel.models import build
from maskmodel.models.jepa import (IJEPA, JEPAEncoder, JEPAPredictor,
                                   gather_tokens, layer_norm_no_affine)
from maskmodel.tasks import teachers
from maskmodel.tasks.base import EncoderTask

LOSSES = ("smooth_l1", "l2")
EVAL_ENCODERS = ("target", "context")


def smooth_l1(x, y, beta: float = 1.0):
  """torch's `F.smooth_l1_loss(x, y, reduction="none")`: 0.5 d^2 / beta
  where |d| < beta, else |d| - 0.5 beta."""
  d = jnp.abs(x - y)
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def prediction_loss(pred, target, valid, kind: str = "smooth_l1"):
  """The mean of the per-entry loss ("smooth_l1", "l2", or "l1": V-JEPA's
  `loss_exp` 1) over the valid target patches and all features; pred,
  target [M, B, Kt, D], valid [M, B, Kt]. The official lists have no
  padding, so this is the official mean."""
  pred = pred.astype(jnp.float32)
  per = {"smooth_l1": smooth_l1, "l1": lambda p, t: jnp.abs(p - t),
         "l2": lambda p, t: (p - t) ** 2}[kind](pred, target)
  w = valid[..., None].astype(jnp.float32)
  return (per * w).sum() / (w.sum() * pred.shape[-1])


def check_encoder(config):
  """One-line errors for a model that I-JEPA's encoder cannot be."""
  m, t = config.model, config.task
  if m.name != "vit":
    raise ConfigError(f"task.name={t.name!r} needs model.name='vit' (I-JEPA's "
                      f"encoder is a ViT), got {m.name!r}.")
  if m.pool != "gap":
    raise ConfigError("I-JEPA's encoder has no class token and its "
                      "evaluation average-pools the tokens; set "
                      "model.pool='gap'.")
  if m.token_reduction.method != "none":
    raise ConfigError(f"task.name={t.name!r} does not support "
                      "model.token_reduction; set its method to 'none'.")


def jepa_networks(config, grid, target_width: int):
  """`(encoder, model)`: the context encoder of `config.model` and the
  `IJEPA` pair with a `config.task.predictor` that regresses `target_width`
  features at the target blocks (checked: one-line errors)."""
  m, p = config.model, config.task.predictor
  heads = p.num_heads or m.num_heads
  if p.width % heads or p.width % 4:
    raise ConfigError(f"task.predictor.width={p.width} must be a multiple of 4 "
                      f"and of its {heads} heads.")
  dtype = build.dtype(m)
  encoder = JEPAEncoder(m.patch_size, m.width, m.depth, m.num_heads,
                        m.mlp_ratio, m.attn_impl, dtype)
  predictor = JEPAPredictor(grid, p.width, p.depth, heads, target_width,
                            m.mlp_ratio, m.attn_impl, dtype)
  return encoder, IJEPA(encoder=encoder, predictor=predictor)


def multiblock_options(config, grid):
  """`(mask_kw, group_size)`: the multi-block mask settings of `config.task`
  for `multiblock.multiblock_mask`, checked, and the group whose contexts
  are truncated together."""
  t = config.task
  mask_kw = dict(
      num_targets=t.num_targets, target_scale=tuple(t.target_scale),
      target_aspect=tuple(t.target_aspect),
      context_scale=tuple(t.context_scale), min_keep=t.min_keep,
      allow_overlap=t.allow_overlap,
      context_length=t.get("context_length", 0) or None)
  multiblock.check_config(grid, **{
      k: v for k, v in mask_kw.items()
      if k not in ("allow_overlap", "context_length")})
  multiblock.context_list_length(grid, mask_kw["context_scale"],
                                 mask_kw["context_length"])
  group = t.mask_group_size or config.batch_size
  if config.batch_size % group:
    raise ConfigError(f"task.mask_group_size={group} must divide "
                      f"batch_size={config.batch_size}.")
  return mask_kw, group


class IJEPATask(EncoderTask):
  """Task contract: `init`, `loss`, `after_update` (the EMA), and
  `eval_params`/`features` for the evaluators."""

  TEACHER = ("encoder",)   # the params that the EMA teacher copies

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    check_encoder(config)
    if t.loss not in LOSSES:
      raise ConfigError(f"task.loss={t.loss!r} is unknown; use one of {LOSSES} "
                        "(the official code: smooth_l1).")
    if t.eval_encoder not in EVAL_ENCODERS:
      raise ConfigError(f"task.eval_encoder={t.eval_encoder!r} is unknown; use "
                        f"one of {EVAL_ENCODERS} (I-JEPA evaluates the target).")
    start, end = t.ema
    if not 0.0 <= start <= end <= 1.0:
      raise ConfigError(f"task.ema={tuple(t.ema)} must be (start, end) with "
                        "0 <= start <= end <= 1 (I-JEPA: (0.996, 1.0)).")
    self.grid = build.grid(config)
    self.mask_kw, self.group_size = multiblock_options(config, self.grid)
    self.encoder, self.model = jepa_networks(config, self.grid, m.width)

  def masks(self, rng, batch_size, group_size=None):
    return multiblock.multiblock_mask(rng, batch_size, self.grid,
                                      group_size=group_size, **self.mask_kw)

  def init(self, rng, batch):
    images = batch["image"]
    # Only the shapes matter here (the example batch may be one host's part).
    masks = multiblock.placeholder_masks(images.shape[0], self.grid,
                                         **self.mask_kw)
    params = self.model.init(rng, images, masks)["params"]
    # The target networks start as copies of the trained ones.
    return params, {"teacher": {k: params[k] for k in self.TEACHER}}

  def target_head(self, teacher, h):
    """What follows the layer norm on the target side (DMT-JEPA's head)."""
    del teacher
    return h

  def targets(self, teacher, images, masks):
    """The target encoder's layer-normed features at each target block,
    [M, B, Kt, D], without gradient."""
    h = self.encoder.apply({"params": teacher["encoder"]}, images)["tokens"]
    h = self.target_head(teacher, layer_norm_no_affine(h))
    h = jax.lax.stop_gradient(h)
    return jax.vmap(lambda ids: gather_tokens(h, ids))(masks.targets)

  def loss(self, params, state, batch, rng, step):
    images = batch["image"]
    masks = self.masks(rng, images.shape[0], self.group_size)
    target = self.targets(state["teacher"], images, masks)
    pred = self.model.apply({"params": params}, images, masks)
    loss = prediction_loss(pred, target, masks.targets_valid,
                           self.config.task.loss)
    metrics = {
        "loss": loss,
        "ema_momentum": self.momentum(step),
        "context_patches": masks.context_valid.sum(axis=1).mean(),
        "target_patches": masks.targets_valid[0].sum(axis=1).mean()}
    return loss, (metrics, state)

  def momentum(self, step):
    start, end = self.config.task.ema
    return teachers.linear_momentum(step, self.config.total_steps, start, end)

  def after_update(self, params, state, step):
    """The target encoder's EMA step after optimizer step `step` (the
    official `param_k.mul_(m).add_((1 - m) * param_q)`)."""
    teacher = teachers.ema_update(state["teacher"],
                                  {k: params[k] for k in self.TEACHER},
                                  self.momentum(step))
    return dict(state, teacher=teacher)

  def eval_params(self, params, state):
    """The target encoder (I-JEPA's evaluation), or the context encoder
    with `task.eval_encoder="context"`."""
    if self.config.task.eval_encoder == "context":
      return params
    return dict(params, encoder=state["teacher"]["encoder"])
