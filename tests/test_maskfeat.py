"""MaskFeat (Wei et al. 2022): BEiT block masks against a port of the
official generator, HOG against a port of the official HOG layer and against
scikit-image's `hog`, and training through the loop."""
import math
import os
import random

import jax
import jax.numpy as jnp
import numpy as np

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel import masking
from maskmodel.masking.block import official_block_mask
from maskmodel.tasks.maskfeat import NBINS, hog, hog_targets

SMOKE = os.path.join(ROOT, "configs", "maskfeat", "mnist_vit_tiny.py") + ":smoke"


def official_generator(rnd, height, width, num_masking_patches, min_num_patches,
                       min_aspect=0.3):
  """`MaskingGenerator.__call__` of microsoft/unilm `beit/masking_generator.py`
  (also `slowfast/datasets/transform.py`), with its Python `random`."""
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  mask = np.zeros((height, width), int)
  count = 0
  while count < num_masking_patches:
    max_mask = num_masking_patches - count
    delta = 0
    for _ in range(10):
      area = rnd.uniform(min_num_patches, max_mask)
      aspect = math.exp(rnd.uniform(*log_aspect))
      h = int(round(math.sqrt(area * aspect)))
      w = int(round(math.sqrt(area / aspect)))
      if w < width and h < height:
        top, left = rnd.randint(0, height - h), rnd.randint(0, width - w)
        num_masked = mask[top:top + h, left:left + w].sum()
        if 0 < h * w - num_masked <= max_mask:
          for i in range(top, top + h):
            for j in range(left, left + w):
              if mask[i, j] == 0:
                mask[i, j] = 1
                delta += 1
        if delta > 0:
          break
    if delta == 0:
      break
    count += delta
  return mask


def _stats(masks, grid):
  """Mean hidden count, and the mean share of hidden patches whose right
  neighbour is hidden too (blockiness)."""
  m = masks.reshape(-1, *grid).astype(bool)
  pairs = (m[:, :, :-1] & m[:, :, 1:]).sum(axis=(1, 2))
  return m.sum(axis=(1, 2)).mean(), (pairs / m.sum(axis=(1, 2))).mean()


def test_block_mask_follows_the_official_generator():
  grid, hidden, n = (14, 14), 78, 1000  # MaskFeat ViT-B: 40% of 14 x 14
  rnd = random.Random(0)
  official = np.stack([official_generator(rnd, *grid, hidden, hidden // 5)
                       for _ in range(n)])
  ours = np.asarray(official_block_mask(jax.random.PRNGKey(0), n, grid,
                                        num_hidden=hidden, min_patches=hidden // 5))
  (count_o, block_o), (count_m, block_m) = _stats(official, grid), _stats(ours, grid)
  assert abs(count_o - count_m) < 0.5, (count_o, count_m)
  assert abs(block_o - block_m) < 0.02, (block_o, block_m)
  # Random masks of the same count are far less blocky.
  rand = np.asarray(masking.random_mask(jax.random.PRNGKey(1), n, grid,
                                        keep=196 - hidden).mask)
  assert _stats(rand, grid)[1] < block_m - 0.2


def test_block_mask_count_is_exact():
  m = masking.block_mask(jax.random.PRNGKey(0), 64, (7, 7), num_hidden=20,
                         min_patches=4)
  mask = np.asarray(m.mask)
  assert (mask.sum(axis=1) == 20).all()
  np.testing.assert_array_equal(
      np.take_along_axis(mask, np.asarray(m.ids_keep), 1), 0)


def official_hog(x, nbins=9, pool=8):
  """`HOGLayerC.forward` of facebookresearch/SlowFast
  `slowfast/models/operators.py`, in numpy, on [B, C, H, W]."""
  wx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64)
  wy = wx.T
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
  h, w = x.shape[2:]
  gx = sum(wx[u, v] * xp[:, :, u:u + h, v:v + w] for u in range(3) for v in range(3))
  gy = sum(wy[u, v] * xp[:, :, u:u + h, v:v + w] for u in range(3) for v in range(3))
  norm = np.sqrt(gx**2 + gy**2)
  phase = np.arctan2(gx, gy) / np.pi * nbins
  b, c = x.shape[:2]
  out = np.zeros((b, c, nbins, h, w))
  idx = np.floor(phase).astype(int) % nbins
  for k in range(nbins):
    out[:, :, k] = np.where(idx == k, norm, 0)
  out = out.reshape(b, c, nbins, h // pool, pool, w // pool, pool).sum(axis=(4, 6))
  return out / np.maximum(np.sqrt((out**2).sum(axis=2, keepdims=True)), 1e-12)


def official_labels(x, patch, pool=8):
  """`_get_hog_label_2d` of `slowfast/models/masked.py`: B C H W HOG ->
  [B, N, C * 9 * u * u] with u cells per patch side."""
  out = official_hog(x, pool=pool)
  b, c, nb, hc, wc = out.shape
  out = out.reshape(b, c * nb, hc, wc).transpose(0, 2, 3, 1)  # B Hc Wc 27
  u = patch // pool
  # unfold(1, u, u).unfold(2, u, u): windows appended as the last two dims.
  out = out.reshape(b, hc // u, u, wc // u, u, c * nb).transpose(0, 1, 3, 5, 2, 4)
  return out.reshape(b, (hc // u) * (wc // u), c * nb * u * u)


def test_hog_matches_the_official_hog_layer():
  rng = np.random.default_rng(0)
  # A smooth image plus noise, so the orientations cover every bin.
  yy, xx = np.mgrid[:32, :48] / 8.0
  x = np.stack([np.sin(xx + c) * np.cos(yy * (c + 1)) for c in range(3)])[None]
  x = np.concatenate([x, rng.normal(size=(1, 3, 32, 48))]).astype(np.float32)
  want = official_labels(x.astype(np.float64), patch=16)
  got = hog_targets(jnp.asarray(x.transpose(0, 2, 3, 1)), 16, 8)
  assert got.shape == (2, 6, 108)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_hog_matches_skimage_on_one_channel():
  """`skimage.feature.hog` with the same cells (8 px), bins (9 unsigned) and
  per-cell L2 norm (`cells_per_block=(1, 1)`). Two conventions differ, so
  the image is chosen where they provably agree:
  - skimage's gradient is the central difference (zero across the border);
    the official Sobel kernel also smooths [1, 2, 1] across it. On an
    additively separable image f(row) + g(col) that smoothing is exactly 4x,
    and with reflect padding the border gradients agree too; the per-cell
    L2 norm cancels the factor (and skimage's division by the cell area);
  - skimage measures the angle from the column axis, the official code
    (atan2(gx, gy)) from the row axis: skimage is run on the transpose,
    whose cell (j, i) is cell (i, j) here.
  Integer steps keep every angle clear of a bin edge."""
  from skimage.feature import hog as skimage_hog  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  f = np.cumsum(rng.integers(-3, 4, size=40))
  g = np.cumsum(rng.integers(-3, 4, size=32))
  image = (f[:, None] + g[None, :]).astype(np.float64)   # 40 x 32: 5 x 4 cells
  want = skimage_hog(image.T, orientations=NBINS, pixels_per_cell=(8, 8),
                     cells_per_block=(1, 1), block_norm="L2",
                     feature_vector=False)[:, :, 0, 0, :]   # [4, 5, 9]
  got = np.asarray(hog(jnp.asarray(image, jnp.float32)[None, :, :, None], 8))
  assert got.shape == (1, 5, 4, 1, NBINS)
  np.testing.assert_allclose(got[0, :, :, 0], want.transpose(1, 0, 2),
                             atol=1e-5)
  assert (want.sum(axis=(0, 1)) > 0).all()   # every bin is exercised


def test_trains_and_resumes_bit_exactly_on_8_devices(tmp_path):
  final = assert_resumes_bit_exactly(SMOKE, tmp_path / "w")
  assert 0.1 < final["knn_accuracy"] <= 1.0


def test_pixel_target_is_the_masked_mse_on_normalized_pixels():
  from maskmodel import tasks  # pylint: disable=g-import-not-at-top
  from maskmodel.models.patches import patchify  # pylint: disable=g-import-not-at-top
  from maskmodel.tasks.mae import masked_mse  # pylint: disable=g-import-not-at-top
  c = load_config(SMOKE)
  c.task.target = "pixels"
  task = tasks.get_task(c)
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 1))
  params, state = jax.jit(task.init)(jax.random.PRNGKey(1), {"image": images})
  rng = jax.random.PRNGKey(2)
  loss, _ = jax.jit(task.loss, static_argnums=4)(
      params, state, {"image": images}, rng, 0)
  mask = task.mask_policy(rng, 4).mask
  pred = jax.jit(task.model.apply)({"params": params}, images, mask)
  assert pred.shape == (4, 49, 16)
  np.testing.assert_allclose(loss, masked_mse(pred, patchify(images, 4), mask),
                             rtol=1e-6)
  c.task.target = "hogg"
  with np.testing.assert_raises_regex(Exception, "task.target='hogg'"):
    tasks.get_task(c)
