"""SALT: Static-teacher Asymmetric Latent Training ("Rethinking JEPA:
Compute-Efficient Video SSL with Frozen Teachers", Li et al., Apple 2025,
arXiv 2509.24317), for images.

Two runs, two tasks, one loop:

- Stage 1, `salt_teacher`: a teacher trained by pixel reconstruction under
  V-JEPA's multi-block masking. The context encoder sees the context block;
  the predictor, given mask tokens at each target block's positions,
  regresses the pixels of those patches.
- Stage 2, `salt`: that teacher is frozen (`load_pretrained` reads its
  encoder from `task.teacher_workdir`; `maskmodel.tasks.teachers`), and a
  new student (context encoder plus predictor, I-JEPA's networks,
  `maskmodel.models.jepa`) regresses the teacher's latents at the target
  positions. There is no EMA and no other collapse regularizer: the target
  never moves. Evaluation reads the student's encoder.

Stage 2's loss, for M target blocks T_1..T_M of D-dimensional latents:

  L = 1 / (M |T| D) sum_m sum_{i in T_m} || g(f_s(x_C), p_i) - sg(LN(f_t(x))_i) ||_1

f_s the student encoder on the context x_C, g the predictor queried at
position p_i, f_t the frozen teacher on the whole image, LN the layer norm
without affine over the features, sg a stop gradient. Stage 1's loss is
of the same form, squared instead of absolute, with the per-patch
normalized pixels of patch i as the target.

There is no official code. What follows the paper, and what is chosen here
(the settings among them are options):
- Masks: I-JEPA's multi-block masks in both stages
  (`maskmodel.masking.multiblock`, the same task keys as `ijepa`); the
  paper uses V-JEPA's (spatio-temporal) multi-block masks on video.
- Stage 1 uses the JEPA networks with a pixel head (the predictor's output
  width is a patch's p*p*C values), not `mae`'s encoder-decoder: `mae`'s
  ViT takes a static number of visible patches, and multi-block contexts
  vary in length, which the JEPA networks handle with key masks
  (`models/jepa.py`). So the teacher is the same kind of encoder as the
  student, and the teacher's and the student's sizes are set apart
  (`task.teacher`: width, depth, num_heads, mlp_ratio; 0 takes the
  student's).
- Stage 1's loss: the mean squared error on per-patch normalized pixels
  (MAE's and VideoMAE's `norm_pix_loss`), `task.loss="l2"`,
  `task.norm_pix_loss=True`.
- Stage 2's loss: L1 (`task.loss="l1"`), as V-JEPA's code computes it
  (facebookresearch/jepa `app/vjepa/train.py`, `loss_fn`, with
  `loss_exp: 1.0` of its pretraining configs), over the teacher's output
  layer-normed without affine (its `F.layer_norm(h, (h.size(-1),))`;
  `task.target_norm=False` regresses the raw output); the mean over every
  valid target entry, which is V-JEPA's mean when the batch is one mask
  group (`task.mask_group_size`). "smooth_l1" (I-JEPA's code) and "l2"
  (I-JEPA's paper) are options.
- The teacher is the stage-1 run's context encoder (its last checkpoint)
  applied to the whole image.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.config import ConfigError
from maskmodel.masking import multiblock
from maskmodel.models import build
from maskmodel.models.jepa import (JEPAEncoder, gather_tokens,
                                   layer_norm_no_affine)
from maskmodel.models.patches import patchify
from maskmodel.tasks import ijepa, teachers
from maskmodel.tasks.base import EncoderTask
from maskmodel.tasks.mae import normalized_pixel_target

LOSSES = ("l1", "smooth_l1", "l2")


class MultiBlockRegressionTask(EncoderTask):
  """A context encoder and a predictor that regresses a target of width
  `target_width` at I-JEPA's target blocks. Subclasses define
  `targets(state, images, masks)`: the [M, B, Kt, target_width] target at
  each block, without gradient. Task contract: `init`, `loss`, and
  `features` for the evaluators."""

  def __init__(self, config, target_width: int):
    super().__init__(config)
    t = config.task
    ijepa.check_encoder(config)
    if t.loss not in LOSSES:
      raise ConfigError(f"task.loss={t.loss!r} is unknown; use one of {LOSSES}.")
    self.grid = build.grid(config)
    self.mask_kw, self.group_size = ijepa.multiblock_options(config, self.grid)
    self.encoder, self.model = ijepa.jepa_networks(config, self.grid,
                                                   target_width)

  def masks(self, rng, batch_size):
    return multiblock.multiblock_mask(rng, batch_size, self.grid,
                                      group_size=self.group_size, **self.mask_kw)

  def init(self, rng, batch):
    masks = multiblock.placeholder_masks(batch["image"].shape[0], self.grid,
                                         **self.mask_kw)
    return self.model.init(rng, batch["image"], masks)["params"], {}

  def loss(self, params, state, batch, rng, step):
    del step
    images = batch["image"]
    masks = self.masks(rng, images.shape[0])
    target = self.targets(state, images, masks)
    pred = self.model.apply({"params": params}, images, masks)
    loss = ijepa.prediction_loss(pred, target, masks.targets_valid,
                                 self.config.task.loss)
    metrics = {
        "loss": loss,
        "context_patches": masks.context_valid.sum(axis=1).mean(),
        "target_patches": masks.targets_valid[0].sum(axis=1).mean()}
    return loss, (metrics, state)


def at_targets(tokens, masks):
  """tokens [B, N, D] gathered at each target block: [M, B, Kt, D]."""
  return jax.vmap(lambda ids: gather_tokens(tokens, ids))(masks.targets)


class SALTTeacherTask(MultiBlockRegressionTask):
  """Stage 1: the pixels of the target patches (per-patch normalized with
  `task.norm_pix_loss`)."""

  def __init__(self, config):
    p = config.model.patch_size
    super().__init__(config, p * p * config.data.channels)

  def targets(self, state, images, masks):
    del state
    pixels = patchify(images, self.config.model.patch_size).astype(jnp.float32)
    if self.config.task.norm_pix_loss:
      pixels = normalized_pixel_target(pixels)
    return at_targets(pixels, masks)


class SALTTask(MultiBlockRegressionTask):
  """Stage 2: the frozen teacher's (layer-normed) latents at the target
  patches. Task contract: `init` (a teacher of the right shapes, replaced
  by `load_pretrained`), `loss`; `eval_params` is the default, the
  student."""

  def __init__(self, config):
    m, tt = config.model, config.task.teacher
    width = tt.width or m.width
    heads = tt.num_heads or m.num_heads
    if width % heads:
      raise ConfigError(f"task.teacher.width={width} must be a multiple of its "
                        f"{heads} heads (task.teacher.num_heads).")
    self.teacher = JEPAEncoder(m.patch_size, width, tt.depth or m.depth, heads,
                               tt.mlp_ratio or m.mlp_ratio, m.attn_impl,
                               build.dtype(m))
    super().__init__(config, width)

  def init(self, rng, batch):
    student_rng, teacher_rng = jax.random.split(rng)
    params, _ = super().init(student_rng, batch)
    # Placeholder weights of the teacher's shapes: `load_pretrained` puts
    # the trained ones here (and a resume restores them from `frozen/`).
    teacher = self.teacher.init(teacher_rng, batch["image"])["params"]
    return params, {"frozen": {"teacher": {"encoder": teacher}}}

  def load_pretrained(self, params, state):
    teacher = teachers.load_frozen_teacher(
        self.config.task.teacher_workdir, state["frozen"]["teacher"]["encoder"])
    return params, dict(state, frozen={"teacher": {"encoder": teacher}})

  def teacher_latents(self, state, images):
    """The frozen teacher on the whole image, [B, N, D_teacher]."""
    teacher = teachers.frozen(state["frozen"]["teacher"]["encoder"])
    h = self.teacher.apply({"params": teacher}, images)["tokens"]
    if self.config.task.target_norm:
      h = layer_norm_no_affine(h)
    return jax.lax.stop_gradient(h.astype(jnp.float32))

  def targets(self, state, images, masks):
    return at_targets(self.teacher_latents(state, images), masks)
