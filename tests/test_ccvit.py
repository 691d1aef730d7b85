"""CCViT: the centroid replacement, the prediction positions, the loss
against numpy ports of the official code (Cakeyan/CCViT_Public), the frozen
k-means tokenizer, and 8-device training with a bit-exact resume."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel import data, tokenizers
from maskmodel.config import ConfigError
from maskmodel.models.patches import patchify, unpatchify
from maskmodel.tasks import ccvit, get_task

CONFIG = os.path.join(ROOT, "configs", "ccvit", "mnist_vit_tiny.py")
SMOKE = CONFIG + ":smoke"
DUAL_SMOKE = CONFIG + ":dual,smoke"


def _batch(config, n=8):
  """The first `n` MNIST training digits, normalized as the pipeline does."""
  source = data.get_source(config.data.name, "train")
  spec = data.image_spec(config.data)
  return {"image": jnp.asarray(np.stack(
      [data.eval_preprocess(source[i], spec)["image"] for i in range(n)]))}


@pytest.fixture(scope="module")
def dual():
  """The `:dual,smoke` task, its params and its fitted tokenizer state."""
  config = load_config(DUAL_SMOKE)
  task = get_task(config)
  batch = _batch(config)
  params, state = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
  assert not np.any(np.asarray(state["frozen"]["tokenizer"]["codebook"]))
  params, state = task.load_pretrained(params, state)
  return config, task, params, state, batch


def test_tokenizer_is_fitted_on_training_images_and_frozen(dual):
  config, task, params, state, batch = dual
  codebook = np.asarray(state["frozen"]["tokenizer"]["codebook"])
  assert codebook.shape == (64, 16)  # smoke: 64 centroids of 4x4x1 patches
  want = tokenizers.fit_on_training_images(task.tokenizer, config,
                                           config.task.tokenizer)
  np.testing.assert_array_equal(codebook, np.asarray(want["codebook"]))
  # The loss returns the state untouched and no gradient reaches it.
  grads = jax.jit(jax.grad(lambda s: task.loss(
      params, s, batch, jax.random.PRNGKey(1), 0)[0]))(state)
  assert not np.any(np.asarray(grads["frozen"]["tokenizer"]["codebook"]))


def test_replaced_patches_carry_their_centroid_and_are_predicted(dual):
  config, task, params, state, batch = dual
  images = batch["image"]
  patches, hidden, replaced, ids = jax.jit(task.corrupt)(
      state, images, jax.random.PRNGKey(3))
  patches, hidden, replaced, ids = map(np.asarray, (patches, hidden, replaced, ids))
  assert hidden.shape == (8, 49)
  np.testing.assert_array_equal(hidden.sum(1), 19)  # exact, every row
  np.testing.assert_array_equal(replaced.sum(1), 5)
  assert not np.any(replaced & (hidden > 0))  # replaced among the visible
  # The ids are the original patches' nearest centroids (in [0, 1] pixels).
  codebook = np.asarray(state["frozen"]["tokenizer"]["codebook"], np.float64)
  pixels = np.asarray(patchify(images, 4), np.float64) * 0.3081 + 0.1307
  d = ((pixels[:, :, None] - codebook[None, None])**2).sum(-1)
  np.testing.assert_array_equal(ids, d.argmin(-1))
  # Replaced patches show their centroid's pixels, normalized; the rest of
  # the input is the image, bit for bit.
  orig = np.asarray(patchify(images, 4))
  centroid = (codebook[ids] - 0.1307) / 0.3081
  np.testing.assert_allclose(patches[replaced], centroid[replaced], atol=1e-6)
  np.testing.assert_array_equal(patches[~replaced], orig[~replaced])
  assert not np.allclose(patches[replaced], orig[replaced])
  # The prediction positions are exactly the hidden and replaced ones.
  idx = np.asarray(ccvit.prediction_positions(hidden, replaced, 24))
  for b in range(8):
    np.testing.assert_array_equal(idx[b], np.flatnonzero((hidden[b] > 0) | replaced[b]))


def test_no_replace_predicts_at_the_masked_positions_only():
  task = get_task(load_config(CONFIG + ":no_replace,smoke"))
  assert (task.num_replace, task.num_targets) == (0, 19)
  hidden = jnp.zeros((2, 49)).at[:, :19].set(1.0)
  idx = ccvit.prediction_positions(hidden, jnp.zeros((2, 49), bool), 19)
  np.testing.assert_array_equal(np.asarray(idx), np.tile(np.arange(19), (2, 1)))


def test_replacement_positions_are_uniform_over_the_visible():
  """The official draw shuffles the unmasked indices and keeps the first
  20 (`DataAugmentationForCCViT.__call__`, datasets.py): each visible patch
  is replaced with probability replace / visible, a hidden one never."""
  n, rows, k = 16, 4000, 3
  hidden = jnp.broadcast_to((jnp.arange(n) < 6).astype(jnp.float32), (rows, n))
  replaced = np.asarray(ccvit.replacement_mask(jax.random.PRNGKey(0), hidden, k))
  np.testing.assert_array_equal(replaced.sum(1), k)
  freq = replaced.mean(0)
  assert not freq[:6].any()
  np.testing.assert_allclose(freq[6:], k / 10, atol=0.03)


def official_kmeans_mask(bool_replaced_pos, input_ids, centroids, samples, p):
  """numpy port of `kmeans_mask` (Cakeyan/CCViT_Public utils.py), for any
  grid: samples [B, C, H, W] in [0, 1], centroids [K, C*p*p] in the faiss
  layout (c, p, p), bool_replaced_pos [B, h, w], input_ids [B, h*w]."""
  b, c, hh, ww = samples.shape
  h, w = hh // p, ww // p
  rep = bool_replaced_pos.repeat(p, axis=1).repeat(p, axis=2)[:, None]
  replaced = centroids[input_ids].reshape(-1, h, w, c, p, p).transpose(
      0, 3, 1, 4, 2, 5).reshape(-1, c, hh, ww)
  return rep * replaced + (1 - rep) * samples


def test_replacement_matches_the_official_kmeans_mask():
  """RGB, ImageNet mean/std: the official tokenizes the [0, 1] image in the
  faiss layout, replaces with `kmeans_mask` and normalizes after; the task
  does the same from the normalized input."""
  config = load_config(SMOKE)
  config.data.image_size, config.data.channels = 16, 3
  config.data.mean, config.data.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  config.task.num_masked, config.task.min_block, config.task.replace = 6, 2, 4
  task = get_task(config)
  rng = np.random.RandomState(0)
  unit = rng.rand(3, 16, 16, 3).astype(np.float32)
  mean, std = np.asarray(config.data.mean), np.asarray(config.data.std)
  images = jnp.asarray(((unit - mean) / std).astype(np.float32))
  codebook = rng.rand(64, 48).astype(np.float32)  # (p, p, C) layout
  state = {"frozen": {"tokenizer": {"codebook": jnp.asarray(codebook)}}}
  patches, hidden, replaced, ids = jax.jit(task.corrupt)(
      state, images, jax.random.PRNGKey(0))
  # The official: faiss ids of (c, p, p) patches against (c, p, p) centroids.
  faiss_centroids = codebook.reshape(64, 4, 4, 3).transpose(0, 3, 1, 2).reshape(64, 48)
  samples = unit.transpose(0, 3, 1, 2)
  faiss_patches = samples.reshape(3, 3, 4, 4, 4, 4).transpose(0, 2, 4, 1, 3, 5).reshape(3, 16, 48)
  input_ids = ((faiss_patches[:, :, None].astype(np.float64)
                - faiss_centroids[None, None])**2).sum(-1).argmin(-1)
  np.testing.assert_array_equal(np.asarray(ids), input_ids)
  out = official_kmeans_mask(np.asarray(replaced).reshape(3, 4, 4), input_ids,
                             faiss_centroids, samples, 4)
  out = (out - mean[:, None, None]) / std[:, None, None]  # Normalize after
  got = unpatchify(patches, 4, (4, 4), 3)
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), out,
                             atol=1e-5)
  assert np.asarray(replaced).sum() == 12


def official_losses(logits, x_cls_pt_pixels, input_ids, images_unit_patches,
                    bool_masked_pos, bool_replaced_pos):
  """numpy port of the dual-loss branch of `train_one_epoch`
  (Cakeyan/CCViT_Public engine_for_pretraining.py): positions are
  replaced | masked; loss_1 = CrossEntropy(lm_head(x[pos]), input_ids[pos]),
  loss_2 = MSE(cls_pt_lm_head(x_cls_pt[pos]), per-patch normalized pixels
  with torch's unbiased var and eps 1e-6), loss = loss_1 + loss_2."""
  pos = bool_replaced_pos | bool_masked_pos
  out0 = logits[pos].astype(np.float64)
  label1 = input_ids[pos]
  logp = out0 - out0.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  loss_1 = -logp[np.arange(len(label1)), label1].mean()
  label2 = images_unit_patches.astype(np.float64)
  mean = label2.mean(-1, keepdims=True)
  var = label2.var(-1, keepdims=True, ddof=1)
  label2 = ((label2 - mean) / (var + 1e-6)**.5)[pos]
  loss_2 = ((x_cls_pt_pixels[pos] - label2)**2).mean()
  return loss_1, loss_2, loss_1 + loss_2


def test_loss_matches_the_official_dual_loss_at_masked_and_replaced(dual):
  """The task's loss against the official on the same corruption, with the
  heads applied to every token and the positions picked by boolean masks."""
  config, task, params, state, batch = dual
  images = batch["image"]
  rng = jax.random.PRNGKey(5)
  loss, (metrics, _) = jax.jit(task.loss, static_argnums=4)(
      params, state, batch, rng, 0)

  @jax.jit
  def every_token():
    patches, hidden, replaced, ids = task.corrupt(state, images, rng)
    inputs = unpatchify(patches, 4, task.grid, 1)
    out, inter = task.encoder.apply(
        {"params": params["encoder"]}, inputs, mask=hidden,
        capture_intermediates=True, mutable=["intermediates"])
    blocks = inter["intermediates"]["encoder"]
    logits = task.lm_head.apply({"params": params["lm_head"]},
                                out["tokens"][:, 1:])
    early = blocks["block_0"]["__call__"][0].x[:, 1:]  # dual_layer 1 of 2
    last_cls = blocks["block_1"]["__call__"][0].x[:, :1]
    pixels = task.dual_head.apply({"params": params["dual_head"]}, last_cls,
                                  early)
    return hidden, replaced, ids, logits, pixels

  hidden, replaced, ids, logits, pixels = every_token()
  unit = np.asarray(patchify(images, 4)) * 0.3081 + 0.1307
  l1, l2, total = official_losses(
      np.asarray(logits), np.asarray(pixels, np.float64), np.asarray(ids),
      unit, np.asarray(hidden) > 0, np.asarray(replaced))
  np.testing.assert_allclose(float(metrics["ce"]), l1, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["mse"]), l2, rtol=1e-4)
  np.testing.assert_allclose(float(loss), total, rtol=1e-5)
  # Changing the ids outside the predicted positions changes nothing:
  # the loss lives at the masked and replaced positions only.
  pos = (np.asarray(hidden) > 0) | np.asarray(replaced)
  other = np.where(pos, np.asarray(ids), (np.asarray(ids) + 1) % 64)
  l1_other, _, _ = official_losses(np.asarray(logits), np.asarray(pixels, np.float64),
                                   other, unit, np.asarray(hidden) > 0,
                                   np.asarray(replaced))
  assert l1_other == l1


@pytest.mark.parametrize("key, value, match", [
    ("replace", 31, r"task.replace=31 must be in \[0, 30\]"),
    ("num_masked", 49, r"task.num_masked=49 must be in \[1, 48\]"),
    ("min_block", 0, r"task.min_block=0"),
    ("dual_layer", 3, r"task.dual_layer=3 must be in \[1, model.depth=2\]"),
])
def test_bad_options_are_one_line(key, value, match):
  config = load_config(DUAL_SMOKE)
  config.task[key] = value
  with pytest.raises(ConfigError, match=match) as e:
    get_task(config)
  assert "\n" not in str(e.value)


def test_trains_and_resumes_bit_exactly_on_8_devices(tmp_path):
  final = assert_resumes_bit_exactly(SMOKE, tmp_path / "w")
  assert 0.0 < final["knn_accuracy"] <= 1.0
  # The tokenizer was checkpointed once, with the frozen state.
  assert os.path.isdir(tmp_path / "w" / "checkpoints" / "frozen")


def test_imagenet_config_is_the_official_recipe():
  """The README command of Cakeyan/CCViT_Public at ViT-B/16."""
  c = load_config(os.path.join(ROOT, "configs", "ccvit", "imagenet_vit_b16.py"))
  task = get_task(c)
  assert (task.num_masked, task.min_block, task.num_replace) == (75, 16, 20)
  assert task.num_targets == 95 and task.tokenizer.vocab_size == 8192
  assert (task.tokenizer.iterations, c.task.tokenizer.images) == (20, 50_000)
  assert task.dual and (task.dual_layer, c.task.dual_depth) == (9, 2)
  o = c.optimizer
  assert (o.lr, o.min_lr, o.b2, o.weight_decay, o.grad_clip) == (1.5e-3, 1e-5, 0.98, 0.05, 3.0)
  assert o.warmup_steps == 10 * (1_281_167 // 2048)
  assert tuple(c.data.crop_scale) == (0.2, 1.0) and c.data.flip
