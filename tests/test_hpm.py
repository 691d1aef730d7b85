"""HPM (Wang et al. 2023): the relative loss against a port of the official
function, the easy-to-hard masks and schedules, and training through the
loop."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel.tasks import get_task
from maskmodel.tasks.hpm import (ema_decay, hard_fraction, hard_patch_mask,
                                 relative_loss)

SMOKE = os.path.join(ROOT, "configs", "hpm", "mnist_vit_tiny.py") + ":smoke"


def official_relative_loss(loss_pred, loss_target):
  """`forward_learning_loss(..., relative=True)` of Haochen-Wang409/HPM
  `models_mae_learn_loss.py`, in numpy, on the masked patches [B, M]."""
  positive = (loss_target[:, None, :] > loss_target[:, :, None]).astype(float)
  negative = (loss_target[:, None, :] < loss_target[:, :, None]).astype(float)
  matrix = loss_pred[:, None, :] - loss_pred[:, :, None]
  sig = 1 / (1 + np.exp(-matrix))
  loss = -positive * np.log(sig + 1e-6) - negative * np.log(1 - sig + 1e-6)
  return loss.sum() / (positive + negative).sum()


def test_relative_loss_matches_the_official_loss_on_masked_patches():
  rng = np.random.default_rng(0)
  b, n, hidden = 3, 16, 12
  pred = rng.normal(size=(b, n)).astype(np.float32)
  target = rng.random((b, n)).astype(np.float32)
  target[0, 3] = target[0, 5]  # a tie: that pair counts for nothing
  mask = np.zeros((b, n), np.float32)
  for i in range(b):
    mask[i, rng.permutation(n)[:hidden]] = 1
  rows = [np.flatnonzero(m) for m in mask]
  want = official_relative_loss(np.stack([pred[i, r] for i, r in enumerate(rows)]),
                                np.stack([target[i, r] for i, r in enumerate(rows)]))
  got = relative_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_relative_loss_is_small_when_ordered_and_large_when_reversed():
  rng = np.random.default_rng(1)
  target = jnp.asarray(np.stack([rng.permutation(10) / 10 for _ in range(2)]),
                       jnp.float32)  # pairs differ by at least 0.1
  mask = jnp.ones((2, 10))
  ordered = relative_loss(100 * target, target, mask)
  reversed_ = relative_loss(-100 * target, target, mask)
  assert float(ordered) < 1e-3 < 5.0 < float(reversed_)
  g_ordered = jax.grad(relative_loss)(100 * target, target, mask)
  g_reversed = jax.grad(relative_loss)(-100 * target, target, mask)
  assert float(jnp.abs(g_ordered).max()) < 1e-4 < 1e-2 < float(jnp.abs(g_reversed).max())
  # The target is detached: no gradient flows into it.
  assert float(jnp.abs(jax.grad(relative_loss, argnums=1)(target, target, mask)).max()) == 0


def test_hard_masks_and_schedules():
  predicted = jnp.asarray(np.random.default_rng(2).random((4, 49)), jnp.float32)
  keep = 12
  m = hard_patch_mask(jax.random.PRNGKey(0), predicted, keep, int((49 - keep) * 0.5))
  mask = np.asarray(m.mask)
  assert (mask.sum(axis=1) == 49 - keep).all()
  top = np.argsort(-np.asarray(predicted), axis=1)[:, :int((49 - keep) * 0.5)]
  assert (np.take_along_axis(mask, top, 1) == 1).all()  # the hardest are hidden
  # No patch mined, the hardest patch is hidden only by chance.
  hardest = np.argmax(np.asarray(predicted), axis=1)
  seen = [np.asarray(hard_patch_mask(jax.random.PRNGKey(s), predicted, keep, 0).mask)[
      np.arange(4), hardest] for s in range(20)]
  assert 0 < np.mean(seen) < 1
  # alpha climbs per epoch to 0.5 in the last one; the EMA decay ramps, then stays.
  steps_per_epoch, epochs = 31, 49
  assert hard_fraction(0, steps_per_epoch, epochs) == 0.5 / epochs
  assert hard_fraction(steps_per_epoch * epochs - 1, steps_per_epoch, epochs) == 0.5
  np.testing.assert_allclose(ema_decay(0, 31, 0.999, 0.9999, 24), 0.999)
  np.testing.assert_allclose(ema_decay(12 * 31, 31, 0.999, 0.9999, 24), 0.99945)
  np.testing.assert_allclose(ema_decay(40 * 31, 31, 0.999, 0.9999, 24), 0.9999)


def test_trains_and_resumes_bit_exactly_on_8_devices(tmp_path):
  final = assert_resumes_bit_exactly(SMOKE, tmp_path / "w")
  assert 0.1 < final["knn_accuracy"] <= 1.0
  assert np.isfinite(final["reconstruction_mse_pixels"])


def test_teacher_is_an_ema_of_the_whole_model():
  task = get_task(load_config(SMOKE))
  images = jnp.zeros((2, 28, 28, 1))
  params, state = jax.jit(task.init)(jax.random.PRNGKey(0), {"image": images})
  assert jax.tree.structure(state["teacher"]) == jax.tree.structure(params)
  moved = jax.tree.map(lambda p: p + 1.0, params)
  decay = float(ema_decay(0, 2, 0.999, 0.9999, 2))
  new = jax.jit(task.after_update, static_argnums=2)(moved, state, 0)["teacher"]
  for t, p, n in zip(jax.tree.leaves(state["teacher"]), jax.tree.leaves(moved),
                     jax.tree.leaves(new)):
    np.testing.assert_allclose(n, decay * t + (1 - decay) * p, rtol=1e-6)
