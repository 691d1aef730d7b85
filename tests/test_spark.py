"""SparK (Tian et al. 2023): the sparse convnet ignores what masked cells
hold, the task's mask and loss, and training through the loop with its
BatchNorm state."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel import models
from maskmodel.config import ConfigError
from maskmodel.models.convnet import upsample_mask
from maskmodel.models.patches import patchify
from maskmodel.tasks import get_task
from maskmodel.tasks.mae import masked_mse, normalized_pixel_target

SMOKE = os.path.join(ROOT, "configs", "spark", "mnist_convnet_tiny.py") + ":smoke"


def test_sparse_convnet_ignores_masked_cells():
  config = load_config(SMOKE)
  net = models.get_model("convnet").build(config.model)
  assert net.downsample == 4
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 28, 28, 1)), jnp.float32)
  active = jnp.asarray(rng.random((2, 7, 7)) < 0.4)
  params = jax.jit(net.init)(jax.random.PRNGKey(0), images)["params"]
  # Other content in the inactive cells only.
  noise = jnp.asarray(rng.normal(size=images.shape), jnp.float32) * 5
  other = images + noise * (1 - upsample_mask(active, 28))
  features = jax.jit(
      lambda x, *a: net.apply({"params": params}, x, *a)["features"])
  a = features(images, active)
  b = features(other, active)
  for fa, fb in zip(a, b):
    np.testing.assert_array_equal(fa, fb)
    keep = upsample_mask(active, fa.shape[1])
    assert float(jnp.abs(fa * (1 - keep)).max()) == 0.0  # exact zeros there
    assert float(jnp.abs(fa * keep).max()) > 0
  # Dense, the same change does reach the features.
  dense_a = features(images)[-1]
  dense_b = features(other)[-1]
  assert not np.allclose(dense_a, dense_b)


def test_loss_counts_masked_cells_only_and_updates_batch_stats():
  config = load_config(SMOKE)
  task = get_task(config)
  assert task.grid == (7, 7) and task.keep == round(49 * 0.4)
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 1))
  params, state = jax.jit(task.init)(jax.random.PRNGKey(1), {"image": images})
  rng = jax.random.PRNGKey(2)
  loss, (_, new_state) = jax.jit(task.loss, static_argnums=4)(
      params, state, {"image": images}, rng, 0)
  assert np.isfinite(float(loss))
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), state, new_state)
  assert any(jax.tree.leaves(moved))  # running statistics were updated
  # Only masked cells count: a prediction at active cells is free.
  mask = task.mask_policy(rng, 4)
  pred, _, _ = jax.jit(task.predict, static_argnums=4)(
      params, state, images, rng, True)
  g = jax.jit(jax.grad(lambda p: masked_mse(p, normalized_pixel_target(
      patchify(images, 4)), mask)))(pred)
  assert float(jnp.abs(g * (1 - mask)[..., None]).max()) == 0.0
  assert float(jnp.abs(g * mask[..., None]).max()) > 0.0
  config.model.name = "vit"
  with pytest.raises(ConfigError, match="model.name='convnet'"):
    get_task(config)


def test_trains_and_resumes_bit_exactly_on_8_devices(tmp_path):
  final = assert_resumes_bit_exactly(SMOKE, tmp_path / "w")
  assert 0.1 < final["knn_accuracy"] <= 1.0
  assert np.isfinite(final["reconstruction_mse_pixels"])
  assert "ConvNeXt-style convnet" in (tmp_path / "w" / "report.md").read_text()
