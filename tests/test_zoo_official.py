"""Parity of maskmodel's SparK, ColorMAE and HPM with numpy ports of their
official functions.

Each port restates the official function's steps in plain numpy (repository
and path in its docstring); maskmodel must give the same sets exactly and
the same values to float32 precision, on random inputs from fixed seeds.
Where maskmodel draws its own randomness (a mask's noise, a crop offset),
the test draws the same numbers from the same key and hands them to the
port in place of torch's generator.
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from conftest import ROOT, load_config
from maskmodel.masking.color import color_noise_mask
from maskmodel.models.convnet import upsample_mask
from maskmodel.tasks import get_task
from maskmodel.tasks.hpm import hard_patch_mask, num_hard_patches, relative_loss

SPARK = os.path.join(ROOT, "configs", "spark", "mnist_convnet_tiny.py") + ":smoke"


# ---------------------------------------------------------------- SparK -----

def _spark_mask(noise, len_keep):
  """keyu-tian/SparK `pretrain/spark.py`, `SparK.mask`: argsort per-sample
  noise on the coarsest grid, the first `len_keep` cells are active."""
  b, n = noise.shape
  active = np.zeros((b, n), bool)
  np.put_along_axis(active, np.argsort(noise, axis=1)[:, :len_keep], True, 1)
  return active


def _spark_upsample(active, size):
  """`pretrain/encoder.py`, `_get_active_ex_or_ii`: each coarse cell
  repeated (repeat_interleave) to the map's resolution, [B, H, W]."""
  r = size // active.shape[1]
  return active.repeat(r, axis=1).repeat(r, axis=2)


def _sparse_layer_norm(x, active, scale, bias, eps=1e-6):
  """`pretrain/encoder.py`, `SparseConvNeXtLayerNorm` (sparse=True): the
  active positions' vectors are layer-normed, the others are set to 0."""
  m = _spark_upsample(active, x.shape[1])
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  y = (x - mu) / np.sqrt(var + eps) * scale + bias
  return np.where(m[..., None], y, 0.0)


def _sparse_batch_norm(x, active, eps=1e-5):
  """`pretrain/encoder.py`, `sp_bn_forward` in training mode: BatchNorm1d
  over the active positions only (their biased variance, as torch normalizes
  with), the others set to 0. Returns the output and the statistics."""
  m = _spark_upsample(active, x.shape[1])
  nc = x[m]                                     # [num_active, C]
  mu, var = nc.mean(0), nc.var(0)
  out = np.zeros_like(x)
  out[m] = (nc - mu) / np.sqrt(var + eps)
  return out, mu, var


def _conv(x, kernel, bias=None, stride=1, groups=1):
  """A 'same'-padded (odd kernel) or non-overlapping (kernel == stride) conv,
  NHWC with an HWIO kernel, as torch's Conv2d with padding k // 2."""
  k = kernel.shape[0]
  b, h, w, c = x.shape
  if stride > 1:  # non-overlapping patches
    p = x.reshape(b, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5)
    y = np.einsum("bhwpqc,pqcd->bhwd", p, kernel)
  else:
    pad = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    y = 0.0
    for i in range(k):
      for j in range(k):
        window = pad[:, i:i + h, j:j + w]
        if groups == c:  # depthwise
          y = y + window * kernel[i, j, 0]
        else:
          y = y + np.einsum("bhwc,cd->bhwd", window, kernel[i, j])
  return y if bias is None else y + bias


def _sparse_convnext(params, images, active, widths, depths, stem):
  """The official sparse ConvNeXt (`pretrain/models/convnext.py` with every
  conv a `SparseConv2d` and every LayerNorm a `SparseConvNeXtLayerNorm`,
  `pretrain/encoder.py`; `SparseConvNeXtBlock.forward`): the input zeroed
  in masked cells, every conv's output re-masked, LayerNorms on active
  positions only, each block's branch masked before the residual."""
  mask = lambda x: _spark_upsample(active, x.shape[1])[..., None]
  ln = lambda x, p: _sparse_layer_norm(x, active, p["scale"], p["bias"])
  x = images * mask(images)
  features = []
  for s, depth in enumerate(depths):
    if s:
      x = ln(x, params[f"down_norm_{s}"])
    conv = params[f"down_{s}"]
    x = _conv(x, conv["kernel"], conv["bias"], stride=stem if s == 0 else 2)
    x = x * mask(x)
    if s == 0:
      x = ln(x, params["stem_norm"])
    for i in range(depth):
      p = params[f"stage_{s}_block_{i}"]
      y = _conv(x, p["dwconv"]["kernel"], p["dwconv"]["bias"], groups=widths[s])
      y = ln(y * mask(y), p["norm"])
      y = y @ p["pwconv1"]["kernel"] + p["pwconv1"]["bias"]
      y = 0.5 * y * (1 + special.erf(y / math.sqrt(2)))
      y = y @ p["pwconv2"]["kernel"] + p["pwconv2"]["bias"]
      x = x + p["gamma"] * y * mask(y)
    features.append(x)
  return features


def _spark_loss(images, rec, active, p):
  """`pretrain/spark.py`, `SparK.forward` step 4: patchify to the coarsest
  cells, normalize each target patch by its mean and sqrt(var + 1e-6) with
  torch's default *unbiased* `Tensor.var`, per-patch MSE, summed over
  non-active cells over their count (+1e-8)."""
  def patchify(x):
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)
  inp, rec = patchify(images), patchify(rec)
  mean = inp.mean(-1, keepdims=True)
  std = np.sqrt(inp.var(-1, ddof=1, keepdims=True) + 1e-6)
  l2 = ((rec - (inp - mean) / std) ** 2).mean(-1)
  non_active = (~active.reshape(active.shape[0], -1)).astype(np.float64)
  return (l2 * non_active).sum() / (non_active.sum() + 1e-8)


def _params(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _spark_setup(seed=0):
  config = load_config(SPARK)
  config.task.decoder_width = 32  # a projection at every scale (none where widths agree)
  task = get_task(config)
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(3, 28, 28, 1)), jnp.float32)
  # Random values of the shapes `init` gives (tracing it is cheap, compiling
  # it is not): non-trivial norms, layer scales and mask tokens, so each
  # step shows.
  shapes, stats = jax.eval_shape(task.init, jax.random.PRNGKey(seed), {"image": images})
  params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.normal(size=a.shape), a.dtype), shapes)
  state = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.full(a.shape, float(path[-1].key == "var"), a.dtype), stats)
  return config, task, images, params, state


def test_spark_mask_is_the_official_mask_and_upsampling():
  config, task, images, _, _ = _spark_setup()
  n = task.grid[0] * task.grid[1]
  # len_keep = round(h w (1 - ratio)): 20 of 49, where int() would give 19.
  assert task.keep == round(n * (1 - config.task.mask_ratio)) == 20
  key = jax.random.PRNGKey(7)
  noise = np.asarray(jax.random.uniform(key, (5, n)))
  want = _spark_mask(noise, task.keep).reshape(5, *task.grid)
  got = np.asarray(task.mask_policy(key, 5)).reshape(5, *task.grid) == 0
  np.testing.assert_array_equal(got, want)
  for size in (7, 14, 28):
    np.testing.assert_array_equal(np.asarray(upsample_mask(jnp.asarray(want), size))[..., 0],
                                  _spark_upsample(want, size).astype(np.float32))


def test_spark_sparse_encoder_matches_the_official_sparse_convnext():
  config, task, images, params, _ = _spark_setup()
  m = config.model
  active = _spark_mask(np.random.default_rng(1).random((3, 49)), task.keep).reshape(3, 7, 7)
  got = jax.jit(task.encoder.apply)({"params": params["encoder"]}, images,
                                    jnp.asarray(active))
  want = _sparse_convnext(_params(params["encoder"]), np.asarray(images, np.float64),
                          active, m.widths, m.depths, m.stem)
  for g, w in zip(got["features"], want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-5)
    # Exact zeros off the active cells, as the official masking leaves.
    assert (np.asarray(g)[~_spark_upsample(active, g.shape[1])] == 0).all()


def test_spark_densify_matches_the_official_densify():
  """`SparK.forward` step 3 with densify_norm='ln' (the official choice for
  ConvNeXt, `utils/arg_util.py`): sparse LayerNorm, the per-scale mask token
  where inactive, then the projection conv (1x1 at the coarsest scale)."""
  _, task, images, params, state = _spark_setup()
  active = _spark_mask(np.random.default_rng(2).random((3, 49)), task.keep).reshape(3, 7, 7)
  _, inter = jax.jit(lambda v, x, a: task.model.apply(
      v, x, a, False,
      capture_intermediates=lambda mdl, _: (mdl.name or "").startswith("densify_proj"),
      mutable=["intermediates"]))({"params": params, **state}, images,
                                  jnp.asarray(active))
  feats = jax.jit(task.encoder.apply)({"params": params["encoder"]}, images,
                                      jnp.asarray(active))["features"][::-1]
  p = _params(params)
  checked = 0
  for i, f in enumerate(feats):
    x = _sparse_layer_norm(np.asarray(f, np.float64), active,
                           p[f"densify_norm_{i}"]["scale"], p[f"densify_norm_{i}"]["bias"])
    x = np.where(_spark_upsample(active, x.shape[1])[..., None], x, p[f"mask_token_{i}"])
    proj = p[f"densify_proj_{i}"]
    assert proj["kernel"].shape[0] == (1 if i == 0 else 3)
    want = _conv(x, proj["kernel"], proj["bias"])
    got = inter["intermediates"][f"densify_proj_{i}"]["__call__"][0]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    checked += 1
  assert checked == 2


def test_spark_loss_is_the_official_loss():
  _, task, images, params, state = _spark_setup()
  key = jax.random.PRNGKey(3)
  loss, _ = jax.jit(task.loss, static_argnums=4)(
      params, state, {"image": images}, key, 0)
  pred, mask, _ = jax.jit(task.predict, static_argnums=4)(
      params, state, images, key, True)
  rec = np.asarray(pred, np.float64)
  # Back to an image, so the port patchifies it the official way.
  p = task.downsample
  b = rec.shape[0]
  rec = rec.reshape(b, 7, 7, p, p, 1).transpose(0, 1, 3, 2, 4, 5).reshape(b, 28, 28, 1)
  active = np.asarray(mask).reshape(b, 7, 7) == 0
  want = _spark_loss(np.asarray(images, np.float64), rec, active, p)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  # The biased variance would be a different loss: the test can tell.
  assert abs(want - _spark_loss_biased(np.asarray(images, np.float64), rec, active, p)) > 1e-4


def _spark_loss_biased(images, rec, active, p):
  def patchify(x):
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)
  inp, rec = patchify(images), patchify(rec)
  t = (inp - inp.mean(-1, keepdims=True)) / np.sqrt(inp.var(-1, keepdims=True) + 1e-6)
  l2 = ((rec - t) ** 2).mean(-1)
  na = ~active.reshape(active.shape[0], -1)
  return (l2 * na).sum() / na.sum()


def test_sparse_batch_norm_port_uses_active_positions_only():
  """The official ResNet setting's sparse BatchNorm (`sp_bn_forward`), which
  maskmodel's ConvNeXt encoder does not use (the official ConvNeXt uses the
  sparse LayerNorm tested above): its statistics are the masked mean and
  biased variance, and differ from dense statistics over the zeroed map."""
  rng = np.random.default_rng(4)
  active = _spark_mask(rng.random((2, 16)), 6).reshape(2, 4, 4)
  x = rng.normal(size=(2, 8, 8, 3)) * _spark_upsample(active, 8)[..., None] + 1.0
  out, mu, var = _sparse_batch_norm(x, active)
  w = _spark_upsample(active, 8)[..., None].astype(float)
  np.testing.assert_allclose(mu, (x * w).sum((0, 1, 2)) / w.sum())
  np.testing.assert_allclose(var, (((x - mu) * w) ** 2).sum((0, 1, 2)) / w.sum())
  assert not np.allclose(mu, x.mean((0, 1, 2)))
  assert (out[~_spark_upsample(active, 8)] == 0).all()


# ------------------------------------------------------------- ColorMAE -----

def _color_masking(fields, batch_size, grid, offsets, flips, len_keep):
  """carlosh93/ColorMAE `models/utils/masking_generator.py`, `ColorMasking`:
  `extract_windows` applies one RandomCrop (offset y, x) and horizontal /
  vertical flips to the whole [L, M, M] stack per chunk of L samples (the
  last chunk truncated), `NormalizeBySliceMax` divides each window by its
  maximum, and `color_noise_mask` keeps the `len_keep` highest values.
  Returns the kept sets."""
  num_fields = fields.shape[0]
  windows = []
  for chunk in range(-(-batch_size // num_fields)):
    (y, x), (h_flip, v_flip) = offsets[chunk], flips[chunk]
    w = fields[:, y:y + grid[0], x:x + grid[1]]
    if h_flip:
      w = w[:, :, ::-1]
    if v_flip:
      w = w[:, ::-1, :]
    windows.append(w / w.max(axis=(1, 2), keepdims=True))
  windows = np.concatenate(windows)[:batch_size].reshape(batch_size, -1)
  ids_shuffle = np.argsort(-windows, axis=1, kind="stable")   # descending
  return [set(row[:len_keep]) for row in ids_shuffle]


def test_color_noise_mask_keeps_the_official_set():
  rng = np.random.default_rng(5)
  # Some fields entirely negative: their windows' order flips on division.
  fields = rng.normal(size=(4, 20, 20)).astype(np.float32)
  fields[1] = -np.abs(fields[1])
  grid, batch, keep = (7, 7), 10, int(49 * (1 - 0.75))
  key = jax.random.PRNGKey(11)
  got = color_noise_mask(key, batch, grid, fields=jnp.asarray(fields), keep=keep)
  # The offsets and flips color_noise_mask draws from `key`, drawn again.
  chunks = -(-batch // 4)
  k_y, k_x, k_flip = jax.random.split(key, 3)
  ys = np.asarray(jax.random.randint(k_y, (chunks,), 0, 20 - 7 + 1))
  xs = np.asarray(jax.random.randint(k_x, (chunks,), 0, 20 - 7 + 1))
  flips = np.asarray(jax.random.bernoulli(k_flip, 0.5, (chunks, 2)))
  want = _color_masking(fields, batch, grid, list(zip(ys, xs)), flips, keep)
  assert [set(np.asarray(r).tolist()) for r in got.ids_keep] == want
  np.testing.assert_array_equal(
      np.asarray(got.mask),
      [[0.0 if j in s else 1.0 for j in range(49)] for s in want])


# ------------------------------------------------------------------ HPM -----

def _generate_mask(loss_pred, noise, mask_ratio, epoch, total_epoch):
  """Haochen-Wang409/HPM `models_mae_learn_loss.py`, `generate_mask` with
  guide=True: the int((L - len_keep) keep_ratio) patches last in an ascending
  argsort of the predicted losses are put at the end of the shuffle; the
  others, in the order of a random shuffle (here: the order of `noise` over
  them, which a uniform noise makes a uniform shuffle), fill the front; the
  first len_keep of the shuffle stay visible. Returns the hidden sets."""
  n, length = loss_pred.shape
  len_keep = int(length * (1 - mask_ratio))
  keep_ratio = float((epoch + 1) / total_epoch) * 0.5
  len_loss = int((length - len_keep) * keep_ratio)
  hidden = []
  for i in range(n):
    if len_loss <= 0:
      shuffle = np.argsort(noise[i], kind="stable")
    else:
      hard = np.argsort(loss_pred[i], kind="stable")[-len_loss:]
      rest = np.delete(np.arange(length), hard)
      rest = rest[np.argsort(noise[i][rest], kind="stable")]
      shuffle = np.concatenate([rest, hard])
    hidden.append(set(shuffle[len_keep:].tolist()))
  return hidden


def _hpm_inputs(seed, b=4, n=49):
  rng = np.random.default_rng(seed)
  # Coarse values, so the boundary of the hard set falls in ties.
  return np.round(rng.random((b, n)) * 8).astype(np.float32)


def test_hard_patch_mask_hides_the_official_set():
  keep = int(49 * (1 - 0.75))
  for seed, (epoch, epochs) in enumerate([(0, 1), (1, 49), (24, 49), (48, 49), (0, 200)]):
    predicted = _hpm_inputs(seed)
    key = jax.random.PRNGKey(seed)
    steps_per_epoch = 3
    num_hard = num_hard_patches(epoch * steps_per_epoch + 1, steps_per_epoch, epochs, 49 - keep)
    got = hard_patch_mask(key, jnp.asarray(predicted), keep, num_hard)
    noise = np.asarray(jax.random.uniform(key, predicted.shape))
    want = _generate_mask(predicted, noise, 0.75, epoch, epochs)
    assert [set(np.flatnonzero(r).tolist()) for r in np.asarray(got.mask)] == want, (epoch, epochs)
  # The count is the official float64 one: epoch 1 of 49 mines 2 of 37,
  # where a float32 alpha would round to 3 at 147 hidden patches.
  assert int(num_hard_patches(3, 3, 49, 147)) == int(147 * (2 / 49 * 0.5)) == 2


def _forward_learning_loss(loss_pred, loss_target):
  """`models_mae_learn_loss.py`, `forward_learning_loss(relative=True)` on
  the masked patches' [N, n_mask] predictions and detached losses."""
  positive = loss_target[:, None, :] > loss_target[:, :, None]
  negative = loss_target[:, None, :] < loss_target[:, :, None]
  diff = loss_pred[:, None, :] - loss_pred[:, :, None]
  sig = 1 / (1 + np.exp(-diff))
  loss = -positive.astype(int) * np.log(sig + 1e-6) - negative.astype(int) * np.log(1 - sig + 1e-6)
  return loss.sum() / (positive | negative).sum()


def test_relative_loss_is_the_official_learning_loss():
  rng = np.random.default_rng(9)
  b, n, hidden = 3, 49, 37
  pred = rng.normal(size=(b, n)).astype(np.float32)
  target = np.round(rng.random((b, n)) * 20).astype(np.float32)  # with ties
  mask = np.zeros((b, n), np.float32)
  for i in range(b):
    mask[i, rng.permutation(n)[:hidden]] = 1
  rows = [np.flatnonzero(m) for m in mask]  # the official x[mask] order
  want = _forward_learning_loss(np.stack([pred[i, r] for i, r in enumerate(rows)]).astype(np.float64),
                                np.stack([target[i, r] for i, r in enumerate(rows)]))
  got = relative_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-5)
