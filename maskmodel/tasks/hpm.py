"""HPM: Hard Patches Mining for Masked Image Modeling (Wang et al. 2023).

MAE, plus a loss predictor that learns which patches are hard to
reconstruct, and masks chosen to hide them (Sec. 3):

- The loss predictor is a second decoder of the MAE decoder's shape, on the
  same embedded tokens; its output, averaged per patch, predicts the patch's
  reconstruction loss. Its gradient reaches the encoder.
- It learns the *order* of the losses (Eq. 6, "relative" loss): over the
  ordered pairs (a, b) of masked patches of an image with l_a != l_b, where
  l is the detached per-patch reconstruction MSE,
    L_pred = sum -1[l_b > l_a] log s(p_b - p_a) - 1[l_b < l_a] log(1 - s(p_b - p_a))
  divided by the number of such pairs (`forward_learning_loss` in
  Haochen-Wang409/HPM's `models_mae_learn_loss.py`, with its 1e-6 inside the
  logs). The total loss is L_rec + L_pred.
- An EMA of the whole model (timm's ModelEma) predicts the losses of the
  unmasked image. Of the n_mask hidden patches, int(n_mask * alpha) are the
  highest predicted and the rest are random among the others, with alpha =
  0.5 (epoch + 1) / epochs: easy to hard (`generate_mask`).
- The EMA decay goes from 0.999 to 0.9999 over the first 100 epochs, then
  stays (`engine_pretrain.py`); `task.ema_ramp_epochs` scales that to a run.
- The target is raw pixels: the official scripts leave norm-pix off.

`task.mine_hard_patches=False` is the paper's "loss predictor only" variant:
the same objective with random masks, and no EMA.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maskmodel import masking
from maskmodel.config import ConfigError
from maskmodel.models.mae import MaskedAutoencoder
from maskmodel.tasks.mae import MAETask


def relative_loss(pred, target, mask):
  """HPM Eq. 6 over the masked patches of each image.

  pred: [B, N] predicted losses; target: [B, N] reconstruction losses
  (detached); mask: [B, N], 1 = hidden. Pairs over all images share one
  normalizer, as the official code sums over the batch.
  """
  target = jax.lax.stop_gradient(target)
  pair = mask[:, :, None] * mask[:, None, :]        # both hidden
  positive = (target[:, None, :] > target[:, :, None]) * pair   # l_b > l_a
  negative = (target[:, None, :] < target[:, :, None]) * pair
  diff = pred[:, None, :] - pred[:, :, None]         # p_b - p_a
  loss = (-positive * jnp.log(jax.nn.sigmoid(diff) + 1e-6)
          - negative * jnp.log(1 - jax.nn.sigmoid(diff) + 1e-6))
  return loss.sum() / (positive + negative).sum()


def hard_fraction(step, steps_per_epoch: int, epochs: int):
  """alpha_t = 0.5 (t + 1) / T, t the epoch (HPM Sec. 3.3, easy-to-hard)."""
  epoch = step // steps_per_epoch
  return 0.5 * (epoch + 1) / epochs


def num_hard_patches(step, steps_per_epoch: int, epochs: int, num_masked: int):
  """int(num_masked * alpha_t), the number of mined patches in epoch t.

  Counted on the host in float64 as `generate_mask` counts them
  (`int((L - len_keep) * float((epoch + 1) / total_epoch) * 0.5)`), one
  entry per epoch, so that a float32 alpha under jit never rounds across an
  integer (at 49 epochs and 147 hidden patches the official count in epoch 1
  is 2, a float32 product gives 3). `step` may be traced.
  """
  table = np.array([int(num_masked * (float((e + 1) / epochs) * 0.5))
                    for e in range(epochs)], np.int32)
  epoch = jnp.clip(step // steps_per_epoch, 0, epochs - 1)
  return jnp.asarray(table)[epoch]


def hard_patch_mask(rng, predicted_loss, keep: int, num_hard) -> masking.Mask:
  """Hides the `num_hard` patches of highest predicted loss, and random
  others up to N - keep; `keep` stay visible, chosen at random among the
  rest (`generate_mask` in the official code). `num_hard` may be traced.

  Ties rank as the official ascending `torch.argsort` does on CPU (stable):
  of equal predicted losses the later patch counts as harder.
  """
  b, n = predicted_loss.shape
  order = jnp.argsort(predicted_loss, axis=1, stable=True)  # ascending
  rank = jnp.argsort(order, axis=1)                          # n - 1 = highest
  hard = rank >= n - num_hard
  noise = jax.random.uniform(rng, (b, n))
  return masking.mask_from_scores(jnp.where(hard, 2.0, noise), keep)


def ema_decay(step, steps_per_epoch, start, end, ramp_epochs):
  """start -> end linearly over `ramp_epochs` epochs, per epoch, then end."""
  epoch = step // steps_per_epoch
  return jnp.where(epoch < ramp_epochs,
                   start + epoch / ramp_epochs * (end - start), end)


class HPMTask(MAETask):
  """MAE's task with a loss predictor, an EMA teacher and hard masks."""

  def __init__(self, config):
    super().__init__(config)
    t = config.task
    if t.norm_pix_loss:
      raise ConfigError("task.norm_pix_loss must be False for HPM: its "
                        "official recipe regresses raw pixels.")
    if t.steps_per_epoch <= 0:
      raise ConfigError(f"task.steps_per_epoch={t.steps_per_epoch} must be > 0 "
                        "(training examples // batch size).")
    self.epochs = -(-config.total_steps // t.steps_per_epoch)
    decoder = self.model.decoder.clone(loss_predictor=True)
    self.model = self.model.clone(decoder=decoder)
    # The teacher scores whole images: every patch visible, no reduction.
    self.teacher = MaskedAutoencoder(encoder=self.encoder, decoder=decoder.clone())

  def init(self, rng, batch):
    params, _ = super().init(rng, batch)
    # The EMA starts as the model (timm's ModelEma copies it).
    state = {"teacher": params} if self.config.task.mine_hard_patches else {}
    return params, state

  def mask(self, state, images, rng, step):
    n = self.grid[0] * self.grid[1]
    if not self.config.task.mine_hard_patches:
      return self.mask_policy(rng, images.shape[0])
    everything = jnp.broadcast_to(jnp.arange(n), (images.shape[0], n))
    _, predicted = self.teacher.apply({"params": state["teacher"]}, images,
                                      everything, everything)
    num_hard = num_hard_patches(step, self.config.task.steps_per_epoch,
                                self.epochs, n - self.keep)
    return hard_patch_mask(rng, jax.lax.stop_gradient(predicted), self.keep,
                           num_hard)

  def loss(self, params, state, batch, rng, step):
    images = batch["image"]
    mask = self.mask(state, images, rng, step)
    pred, predicted_loss = self.model.apply({"params": params}, images,
                                            mask.ids_keep, mask.ids_restore)
    # MAE's masked MSE, keeping the per-patch losses the predictor learns.
    per_patch = ((pred - self.target(images)) ** 2).mean(axis=-1)
    reconstruction = (per_patch * mask.mask).sum() / mask.mask.sum()
    learn = relative_loss(predicted_loss, per_patch, mask.mask)
    loss = reconstruction + learn
    return loss, ({"loss": loss, "reconstruction_loss": reconstruction,
                   "loss_prediction_loss": learn}, state)

  def after_update(self, params, state, step):
    if "teacher" not in state:
      return state
    t = self.config.task
    decay = ema_decay(step, t.steps_per_epoch, t.ema_start, t.ema_end,
                      t.ema_ramp_epochs)
    teacher = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p,
                           state["teacher"], params)
    return dict(state, teacher=teacher)

  def predict(self, params, images, rng, state=None):
    mask = self.mask_policy(rng, images.shape[0], state)
    pred, _ = self.model.apply({"params": params}, images, mask.ids_keep,
                               mask.ids_restore)
    return pred, mask
