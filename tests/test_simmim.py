"""SimMIM (Xie et al. 2022): coarse masks, the masked L1 loss against a port
of the official loss, mask tokens, and training through the loop."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel import checkpoint, masking
from maskmodel.config import ConfigError
from maskmodel.models.patches import unpatchify
from maskmodel.tasks import get_task
from maskmodel.tasks.classify import ClassifyTask, transfer_encoder
from maskmodel.tasks.simmim import masked_l1

SMOKE = os.path.join(ROOT, "configs", "simmim", "mnist_vit_tiny.py") + ":smoke"


def test_coarse_mask_hides_whole_cells_with_the_official_count():
  grid, cell = (8, 12), 2
  keep = masking.num_kept_coarse(grid, cell, 0.6)
  # 4 x 6 = 24 cells, ceil(0.6 * 24) = 15 hidden, 9 kept of 4 patches each.
  assert keep == 36
  m = masking.coarse_random_mask(jax.random.PRNGKey(0), 16, grid, cell=cell, keep=keep)
  hidden = np.asarray(m.mask).reshape(16, 4, 2, 6, 2)
  assert (hidden.sum(axis=(1, 2, 3, 4)) == 96 - keep).all()
  per_cell = hidden.sum(axis=(2, 4))
  assert set(np.unique(per_cell)) == {0.0, 4.0}  # all or nothing per cell
  np.testing.assert_array_equal(
      np.take_along_axis(np.asarray(m.mask), np.asarray(m.ids_keep), 1), 0)
  assert len({tuple(r) for r in np.asarray(m.mask)}) > 1
  with pytest.raises(ConfigError, match="mask_patch_size"):
    masking.num_kept_coarse((7, 7), 2, 0.6)


def official_loss(x, x_rec, mask, patch_size):
  """microsoft/SimMIM `models/simmim.py`, `SimMIM.forward`, in numpy: the
  patch mask is upsampled to pixels (repeat_interleave), then
  (|x - x_rec| * mask).sum() / (mask.sum() + 1e-5) / in_chans on [B, C, H, W]."""
  mask = mask.repeat(patch_size, 1).repeat(patch_size, 2)[:, None]
  l1 = np.abs(x - x_rec)
  return (l1 * mask).sum() / (mask.sum() + 1e-5) / x.shape[1]


def test_masked_l1_matches_the_official_loss_and_ignores_visible_pixels():
  rng = np.random.default_rng(0)
  p, grid, c = 4, (3, 5), 3
  x = rng.normal(size=(2, 12, 20, c)).astype(np.float32)
  x_rec = rng.normal(size=x.shape).astype(np.float32)
  mask = (rng.random((2, 15)) < 0.6).astype(np.float32)
  from maskmodel.models.patches import patchify  # pylint: disable=g-import-not-at-top
  got = masked_l1(patchify(x_rec, p), patchify(x, p), mask, c)
  want = official_loss(x.transpose(0, 3, 1, 2), x_rec.transpose(0, 3, 1, 2),
                       mask.reshape(2, *grid), p)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Visible pixels do not count: changing them changes nothing, and their
  # gradient is zero.
  pred = patchify(x_rec, p)
  visible = jnp.asarray(1 - mask)[..., None]
  moved = masked_l1(pred + 5.0 * visible, patchify(x, p), mask, c)
  np.testing.assert_allclose(moved, got, rtol=1e-6)
  grad = jax.grad(masked_l1)(pred, patchify(x, p), mask, c)
  assert float(jnp.abs(grad * visible).max()) == 0.0
  assert float(jnp.abs(grad * (1 - visible)).max()) > 0.0


def test_hidden_pixels_do_not_reach_the_prediction():
  config = load_config(SMOKE)
  task = get_task(config)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 1)),
                       jnp.float32)
  params, _ = jax.jit(task.init)(jax.random.PRNGKey(0), {"image": images})
  mask = task.mask_policy(jax.random.PRNGKey(1), 2).mask
  hidden = unpatchify(mask[..., None] * jnp.ones((1, 1, 16)), 4, (8, 8), 1)
  noisy = images + 3.0 * hidden  # other content in the hidden patches only
  apply = jax.jit(lambda x, m: task.model.apply({"params": params}, x, m))
  a = apply(images, mask)
  b = apply(noisy, mask)
  np.testing.assert_allclose(a, b, atol=1e-5)
  # Without the mask the encoder does see those pixels.
  zero = jnp.zeros_like(mask)
  assert not np.allclose(apply(images, zero), apply(noisy, zero))


def test_trains_resumes_bit_exactly_on_8_devices_and_fine_tunes(tmp_path):
  workdir = str(tmp_path / "simmim")
  final = assert_resumes_bit_exactly(SMOKE, workdir)
  assert 0.1 < final["knn_accuracy"] <= 1.0
  assert np.isfinite(final["reconstruction_mse_pixels"])
  assert os.path.exists(os.path.join(workdir, "report.md"))
  # The classifier takes the encoder; the mask token stays behind.
  pretrained = checkpoint.load_encoder_params(workdir)
  assert "mask_token" in pretrained
  ft = load_config(os.path.join(ROOT, "configs", "classify", "mnist_vit_tiny.py:smoke"))
  ft.data.image_size = 32
  task = ClassifyTask(ft)
  params, _ = task.init(jax.random.PRNGKey(0), {"image": jnp.zeros((1, 32, 32, 1))})
  moved = transfer_encoder(params, pretrained)
  np.testing.assert_array_equal(moved["patch_embed"]["kernel"],
                                pretrained["patch_embed"]["kernel"])
