"""CAE: Context Autoencoder for Self-Supervised Representation Learning
(Chen et al. 2022).

BEiT block masks hide half of the patches (98 of 196 for ViT-B, smallest
block `task.min_block_patches`). In the paper's "Approach" section:
- the encoder F sees only the visible patches and [CLS]: Z_v = F(X_v);
- the latent contextual regressor H (`maskmodel.models.cae`,
  cross-attention with mask-token queries) predicts the masked patches'
  latents from them and the positions: Z_m = H(Z_v, P_v, P_m);
- the alignment constraint asks Z_m to equal what the encoder itself gives
  when the masked patches alone are its input, with no gradient:
  Z_m_bar = sg(F(X_m));
- the decoder G maps Z_m (plus P_m) to the targets of the masked patches,
  Y_m_hat = G(Z_m);
- the objective is

  L = l_y(Y_m_hat, Y_m) + lambda * l_z(Z_m, Z_m_bar),   l_z = MSE,

with lambda = `task.align_weight` = 2 in the official scripts
(`--align_loss_weight 2`; the MSE is torch's mean over every element,
`furnace/engine_for_pretraining.py` of lxtGH/CAE). `task.align_weight = 0`
turns the constraint off (the paper's ablation).

Targets (`task.target`): the paper's are the ids of a pretrained DALL-E
tokenizer (8192 classes, cross-entropy), which cannot be loaded offline.
- "tokens" (the default): cross-entropy on the ids that a k-means patch
  tokenizer (`task.tokenizer`, `maskmodel.tokenizers`; CCViT's k-means on
  raw patches) gives the masked patches: the nearest offline stand-in for a
  discrete visual tokenizer. It is fitted once, in `load_pretrained`, on the
  first `task.tokenizer.images` training images, and kept frozen under
  task_state["frozen"].
- "pixels": the per-patch normalized pixels with MSE, as MAE's
  `norm_pix_loss` (`task.norm_pix_loss = False` for raw pixels); it needs
  no fitted tokenizer.

Differences from lxtGH/CAE:
- The encoder is maskmodel's ViT: no layer scale and no stochastic depth
  in the encoder (the official ViT-B has both, 0.1 each); the regressor and
  decoder have the official layer scale (`task.layer_scale`).
- (Not a difference by default.) The alignment teacher: the official teacher is a copy of the encoder in
  the model, moved toward it (`momentum_update(base_momentum)`, momentum 0
  by default) after its own forward in each step, so it runs the params of
  one optimizer step earlier. `task.teacher_momentum = 0.0` (the configs'
  default) is that copy, kept in the task state (any m: teacher <- m
  teacher + (1 - m) encoder after each step's use). `None` is the current
  encoder under `stop_gradient`, as the paper describes it.
- The block mask's count is made exact (`maskmodel.masking.block`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from maskmodel import masking
from maskmodel import models
from maskmodel import tokenizers
from maskmodel.config import ConfigError
from maskmodel.models import build
from maskmodel.models.cae import ContextRegressorDecoder
from maskmodel.models.patches import patchify
from maskmodel.tasks import teachers
from maskmodel.tasks.base import EncoderTask
from maskmodel.tasks.mae import normalized_pixel_target

TARGETS = ("tokens", "pixels")


def masked_ids(mask) -> jax.Array:
  """The hidden patches' indices [B, N - K] of a `Mask` (the tail of its
  shuffle, the complement of `ids_keep`)."""
  keep = mask.ids_keep.shape[1]
  return jnp.argsort(mask.ids_restore, axis=1)[:, keep:]


def alignment_loss(latent_pred, latent_target):
  """CAE's alignment term l_z: the MSE, averaged over every element,
  between the predicted latents and the encoder's own latents of the masked
  patches, which carry no gradient."""
  diff = latent_pred - jax.lax.stop_gradient(latent_target)
  return jnp.mean(diff.astype(jnp.float32) ** 2)


class CAETask(EncoderTask):
  """Task contract: `init`, `loss`, plus `features` for the evals."""

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    if m.name != "vit":
      raise ConfigError(f"model.name={m.name!r}: CAE runs the encoder on the "
                        "visible patches only, which needs model.name='vit'.")
    reduction = m.get("token_reduction")
    if reduction is not None and reduction.method not in ("none", None, ""):
      raise ConfigError("CAE does not support model.token_reduction: the "
                        "regressor needs one latent per visible patch; set "
                        "--config.model.token_reduction.method=none.")
    self.grid = build.grid(config)
    n = self.grid[0] * self.grid[1]
    self.num_hidden = masking.num_hidden_blocks(n, t.mask_ratio)
    self.min_block_patches = t.get("min_block_patches", 16)
    if not 1 <= self.min_block_patches <= self.num_hidden:
      raise ConfigError(
          f"task.min_block_patches={self.min_block_patches} must lie in "
          f"[1, {self.num_hidden}] (the patches hidden); BEiT and CAE use 16 "
          "of 196.")
    self.target_name = t.get("target", "tokens")
    if self.target_name not in TARGETS:
      raise ConfigError(f"task.target={self.target_name!r} is unknown; use one "
                        f"of {TARGETS} (k-means token ids, or the normalized "
                        "pixels).")
    self.align_weight = float(t.get("align_weight", 2.0))
    if self.align_weight < 0:
      raise ConfigError(f"task.align_weight={self.align_weight} is negative; "
                        "use 2 (CAE's weight) or 0 to turn the alignment off.")
    self.norm_pix_loss = t.get("norm_pix_loss", True)
    self.teacher_momentum = t.get("teacher_momentum", None)
    if self.teacher_momentum is not None and not 0 <= self.teacher_momentum < 1:
      raise ConfigError(f"task.teacher_momentum={self.teacher_momentum} is "
                        "outside [0, 1); use None (the current encoder) or 0 "
                        "(the official one-step-old copy).")
    self.patch_dim = m.patch_size**2 * config.data.channels
    self.tokenizer = None
    if self.target_name == "tokens":
      if t.get("tokenizer") is None:
        raise ConfigError("task.target='tokens' needs task.tokenizer (e.g. "
                          "dict(name='kmeans', vocab_size=8192, images=50000)"
                          "); or use --config.task.target=pixels.")
      self.tokenizer = tokenizers.get_patch_tokenizer(t.tokenizer)
      out_dim = self.tokenizer.vocab_size
    else:
      out_dim = self.patch_dim
    num_heads = t.get("num_heads", m.num_heads)
    if m.width % num_heads:
      raise ConfigError(f"task.num_heads={num_heads} does not divide the "
                        f"regressor's width model.width={m.width}.")
    self.encoder = models.get_model(m.name).build(m, num_classes=0)
    self.neck = ContextRegressorDecoder(
        grid=self.grid, out_dim=out_dim, num_heads=num_heads,
        regressor_depth=t.get("regressor_depth", 4),
        decoder_depth=t.get("decoder_depth", 4), mlp_ratio=m.mlp_ratio,
        layer_scale=t.get("layer_scale", 0.1), attn_impl=m.attn_impl,
        dtype=build.dtype(m))

  def mask_policy(self, rng, batch_size):
    """BEiT's block mask, with exactly `num_hidden` patches hidden."""
    return masking.block_mask(rng, batch_size, self.grid,
                              num_hidden=self.num_hidden,
                              min_patches=self.min_block_patches)

  def init(self, rng, batch):
    images = batch["image"]
    mask = self.mask_policy(jax.random.PRNGKey(0), images.shape[0])
    k_enc, k_neck = jax.random.split(rng)
    encoder = self.encoder.init(k_enc, images, ids_keep=mask.ids_keep)
    visible = jnp.zeros((images.shape[0], mask.ids_keep.shape[1],
                         self.config.model.width), jnp.float32)
    neck = self.neck.init(k_neck, visible, mask.ids_keep, masked_ids(mask))
    state = {}
    if self.tokenizer is not None:  # fitted in load_pretrained
      state["frozen"] = self.tokenizer.placeholder(self.patch_dim)
    if self.teacher_momentum is not None:  # the official `_init_teacher`
      state["teacher"] = encoder["params"]
    return {"encoder": encoder["params"], "regressor": neck["params"]}, state

  def encode(self, params, images, ids):
    """The encoder on the patches `ids` alone (+[CLS]): [B, len(ids), D]."""
    out = self.encoder.apply({"params": params["encoder"]}, images,
                             ids_keep=ids)
    return out["tokens"][:, 1:]

  def predict(self, params, images, mask):
    """Predicted latents [B, M, D] and decoder outputs [B, M, out_dim] at the
    hidden patches `masked_ids(mask)`."""
    visible = self.encode(params, images, mask.ids_keep)
    return self.neck.apply({"params": params["regressor"]}, visible,
                           mask.ids_keep, masked_ids(mask))

  def main_loss(self, out, images, ids_masked, state):
    """L_main at the hidden patches: cross-entropy on token ids, or the MSE
    on (normalized) pixels; and its metrics."""
    if self.target_name == "tokens":
      ids = self.tokenizer_ids(state, images)
      labels = jnp.take_along_axis(ids, ids_masked, axis=1)
      loss = optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()
      acc = (out.argmax(-1) == labels).mean()
      return loss, {"loss_main": loss, "token_accuracy": acc}
    target = patchify(images, self.config.model.patch_size)
    if self.norm_pix_loss:
      target = normalized_pixel_target(target)
    target = jnp.take_along_axis(target, ids_masked[..., None], axis=1)
    loss = jnp.mean((out - target) ** 2)
    return loss, {"loss_main": loss}

  def load_pretrained(self, params, state):
    """Fits the patch tokenizer once, before training (task.tokenizer.images
    training images, the run's seed); a resume reads it back instead."""
    if self.tokenizer is not None:
      state = dict(state, frozen=tokenizers.fit_on_training_images(
          self.tokenizer, self.config, self.config.task.tokenizer))
    return params, state

  def tokenizer_ids(self, state, images):
    """Each patch's token id [B, N], from its [0, 1] pixels."""
    pixels = tokenizers.unit_pixels(images, self.config.data)
    return self.tokenizer.encode(
        state["frozen"], patchify(pixels, self.config.model.patch_size))

  def loss(self, params, state, batch, rng, step):
    del step
    images = batch["image"]
    mask = self.mask_policy(rng, images.shape[0])
    ids_masked = masked_ids(mask)
    latent_pred, out = self.predict(params, images, mask)
    loss, metrics = self.main_loss(out, images, ids_masked, state)
    if self.align_weight:
      teacher = params
      if self.teacher_momentum is not None:
        teacher = {"encoder": state["teacher"]}
        state = dict(state, teacher=teachers.ema_update(
            state["teacher"], params["encoder"], self.teacher_momentum))
      # The masked patches alone, as if they were the visible ones.
      latent_target = self.encode(teacher, images, ids_masked)
      align = alignment_loss(latent_pred, latent_target)
      loss = loss + self.align_weight * align
      metrics["loss_align"] = align
    metrics["loss"] = loss
    return loss, (metrics, state)
