"""LUT (Kim et al. 2024): disjoint masks from one noise, the BC loss and the
EMA schedule against ports of the official code (naver-ai/lut), a teacher
moved only by the EMA, the bc_weight=0 ablation equal to MAE, the views, and
training through the loop."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel import data, masking, train
from maskmodel.config import ConfigError
from maskmodel.tasks import get_task
from maskmodel.tasks.lut import bc_loss, disjoint_masks, ema_decay

SMOKE = os.path.join(ROOT, "configs", "lut", "mnist_vit_tiny.py") + ":smoke"


def _batch(task, n=8, seed=0):
  src = data.get_source("mnist5k", "train")
  ds = data.train_dataset(src, batch_size=n, seed=seed,
                          preprocess=functools.partial(task.preprocess, train=True))
  return {k: jnp.asarray(v) for k, v in ds[0].items()}


def test_views_have_disjoint_visible_sets_from_one_noise():
  rng, b, grid, keep = jax.random.PRNGKey(3), 4, (7, 7), 12
  first, second = disjoint_masks(rng, b, grid, keep=keep)
  # `random_masking` of naver-ai/lut `models/models_lut.py`, in numpy, on
  # the same noise: view 1 keeps ids[:n], view 2 keeps ids[n:2n].
  ids = np.argsort(np.asarray(jax.random.uniform(rng, (b, 49))), axis=1)
  for mask, want in ((first, ids[:, :keep]), (second, ids[:, keep:2 * keep])):
    visible = np.asarray(mask.mask) == 0
    assert (visible.sum(axis=1) == keep).all()
    for i in range(b):
      assert set(np.flatnonzero(visible[i])) == set(want[i])
      assert set(np.asarray(mask.ids_keep[i])) == set(want[i])
  assert not ((np.asarray(first.mask) == 0) & (np.asarray(second.mask) == 0)).any()
  # View 1's mask is MAE's from the same rng.
  mae = masking.random_mask(rng, b, grid, keep=keep)
  np.testing.assert_array_equal(first.ids_keep, mae.ids_keep)
  np.testing.assert_array_equal(first.mask, mae.mask)


def official_bc_loss(q, z):
  """`loss_ftn` and the pair loop of `train_one_epoch` in naver-ai/lut
  `engines/engine_lut.py`, in numpy: q, z [V, B, D]."""
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  total, terms = 0.0, 0
  for iq in range(len(z)):
    for v in range(len(q)):
      if v == iq:
        continue
      total += (2 - 2 * (unit(q[v]) * unit(z[iq])).sum(-1)).mean()
      terms += 1
  return total / terms


def test_bc_loss_matches_the_official_loss():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 5, 16)).astype(np.float32)
  z = rng.normal(size=(2, 5, 16)).astype(np.float32)
  np.testing.assert_allclose(bc_loss(jnp.asarray(q), jnp.asarray(z)),
                             official_bc_loss(q, z), rtol=1e-5)
  # Each view is compared with the *other* view's teacher output.
  swapped = q[::-1].copy()
  assert float(bc_loss(jnp.asarray(q), jnp.asarray(swapped))) < 1e-5
  assert float(bc_loss(jnp.asarray(q), jnp.asarray(-swapped))) == pytest.approx(4.0, abs=1e-5)
  assert float(bc_loss(jnp.asarray(q), jnp.asarray(q))) > 0.5
  # Symmetrized: relabelling the views changes nothing; the scale of q or
  # z does not matter (cosines); z is detached.
  np.testing.assert_allclose(bc_loss(jnp.asarray(q[::-1]), jnp.asarray(z[::-1])),
                             bc_loss(jnp.asarray(q), jnp.asarray(z)), rtol=1e-6)
  np.testing.assert_allclose(bc_loss(jnp.asarray(3 * q), jnp.asarray(z)),
                             bc_loss(jnp.asarray(q), jnp.asarray(z)), rtol=1e-5)
  g = jax.grad(bc_loss, argnums=1)(jnp.asarray(q), jnp.asarray(z))
  assert float(jnp.abs(g).max()) == 0


def official_cosine_scheduler(base_value, final_value, epochs, niter_per_ep):
  """`cosine_scheduler` of naver-ai/lut `util/augs.py` (no warmup), as
  `main_lut.py` calls it for the EMA decay."""
  iters = np.arange(epochs * niter_per_ep)
  return final_value + 0.5 * (base_value - final_value) * (
      1 + np.cos(np.pi * iters / len(iters)))


def test_ema_decay_is_the_official_cosine():
  epochs, niter = 7, 13
  total = epochs * niter
  want = official_cosine_scheduler(0.996, 1, epochs, niter)
  got = np.asarray([ema_decay(s, total, 0.996) for s in range(total)])
  np.testing.assert_allclose(got, want, atol=1e-7)
  assert float(ema_decay(0, total, 0.996)) == pytest.approx(0.996, abs=1e-7)
  assert float(ema_decay(total, total, 0.996)) == 1.0
  assert float(ema_decay(total // 2, total, 0.996)) == pytest.approx(0.998, abs=1e-4)
  assert (np.diff(got) > 0).all()


def test_teacher_moves_only_by_the_ema():
  config = load_config(SMOKE)
  task = get_task(config)
  batch = _batch(task)
  state, tx, schedule = train.initial_state(config, task, batch)
  # No gradient reaches the teacher through the loss.
  grads = jax.jit(jax.grad(lambda s: task.loss(state["params"], s, batch,
                                               jax.random.PRNGKey(1), 0)[0]))(
                                                   state["task_state"])
  assert all(float(jnp.abs(g).max()) == 0
             for g in jax.tree.leaves(grads["teacher"]))
  old = jax.tree.map(jnp.copy, state["task_state"]["teacher"])
  new_state, metrics = jax.jit(functools.partial(train.train_step, task, tx, schedule))(
      state, batch)
  assert {"loss", "mae_loss", "bc_loss", "ema_decay"} <= set(metrics)
  params, stats = new_state["params"], new_state["task_state"]["batch_stats"]
  student = {"params": {"encoder": params["encoder"], "projector": params["projector"]},
             "batch_stats": {"projector": stats["projector"]}}
  decay = float(ema_decay(0, config.total_steps, config.task.ema_start))
  assert float(metrics["ema_decay"]) == pytest.approx(decay)
  moved = False
  for t, o, s in zip(jax.tree.leaves(new_state["task_state"]["teacher"]),
                     jax.tree.leaves(old), jax.tree.leaves(student)):
    np.testing.assert_allclose(t, decay * o + (1 - decay) * s, rtol=1e-5, atol=1e-7)
    moved |= not np.array_equal(t, o)
  assert moved
  # The running statistics moved too (training-mode BatchNorm).
  assert not np.array_equal(stats["predictor"]["bn_0"]["mean"],
                            state["task_state"]["batch_stats"]["predictor"]["bn_0"]["mean"])


def test_bc_weight_zero_is_mae_on_view_1():
  config = load_config(SMOKE)
  config.task.bc_weight = 0.0
  task = get_task(config)
  batch = _batch(task)
  params, state = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(5)
  loss, (metrics, _) = jax.jit(task.loss, static_argnums=4)(
      params, state, batch, rng, 3)
  assert "bc_loss" not in metrics
  config.task.name = "mae"
  mae = get_task(config)
  mae_params = {"encoder": params["encoder"], "decoder": params["decoder"]}
  want, _ = jax.jit(mae.loss, static_argnums=4)(
      mae_params, {}, {"image": batch["image"]}, rng, 3)
  np.testing.assert_array_equal(loss, want)


def test_views_and_config_errors():
  config = load_config(SMOKE)
  task = get_task(config)
  src = data.get_source("mnist5k", "train")
  record = src[0]
  out = task.preprocess(record, np.random.default_rng(0), True)
  assert out["image"].shape == out["view2"].shape == (28, 28, 1)
  # View 1 is a crop of the reflect-padded digit, no colour change.
  spec = task.image_spec
  raw = np.pad(record["image"], ((4, 4), (4, 4), (0, 0)), mode="reflect")
  norm = data.normalize(raw, spec)
  assert any(np.array_equal(norm[y:y + 28, x:x + 28], out["image"])
             for y in range(9) for x in range(9))
  assert not np.allclose(out["image"], out["view2"])
  assert set(task.preprocess(record, None, False)) == {"image", "label"}
  # Colour data: the second view's jitter and grayscale/solarize/blur run.
  config.data.channels, config.data.mean, config.data.std = 3, (0.5,) * 3, (0.25,) * 3
  rgb = get_task(config)
  image = np.random.default_rng(1).integers(0, 256, (40, 32, 3), np.uint8)
  views = [rgb.preprocess({"image": image, "label": 0}, np.random.default_rng(s), True)
           for s in range(6)]
  assert all(v["view2"].shape == (28, 28, 3) for v in views)
  for key, value in (("mask_ratio", 0.4), ("bc_weight", -1.0), ("ema_start", 1.5),
                     ("head_hidden", 0), ("color_jitter_prob", 2.0)):
    bad = load_config(SMOKE)
    bad.task[key] = value
    with pytest.raises(ConfigError, match=f"task.{key}"):
      get_task(bad)


def test_trains_and_resumes_bit_exactly_on_8_devices(tmp_path):
  final = assert_resumes_bit_exactly(SMOKE, tmp_path / "w")
  assert 0.1 < final["knn_accuracy"] <= 1.0
  assert np.isfinite(final["reconstruction_mse_pixels"])
