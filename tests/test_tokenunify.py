"""TokenUnify stage 2: the prefix/noise input and the next-patch target,
the loss against a numpy port of the official construction and loss,
loading the stage-1 MAE params, the one-line errors, and training +
resuming on 8 devices."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel import checkpoint, train
from maskmodel.config import ConfigError
from maskmodel.tasks import get_task, tokenunify

STAGE1 = os.path.join(ROOT, "configs", "tokenunify", "mnist_vit_tiny_mae.py")
STAGE2 = os.path.join(ROOT, "configs", "tokenunify", "mnist_vit_tiny.py")
B, P, GRID = 8, 4, 7   # the smoke configs' 28x28 digits, 4x4 patches


def stage2_config(init_from="", **model):
  config = load_config(f"{STAGE2}:smoke")
  config.task.init_from = str(init_from)
  config.model.update(model)
  return config


@pytest.fixture(scope="module")
def tu(tmp_path_factory):
  """A stage-1 checkpoint written in-process (the smoke MAE's params, drawn
  with another seed than stage 2's init), the stage-2 task, its fresh
  train state before and after `load_pretrained`, and a batch."""
  mae_dir = tmp_path_factory.mktemp("mae")
  images = jax.random.normal(jax.random.PRNGKey(0), (B, 28, 28, 1))
  batch = {"image": images, "label": jnp.zeros((B,), jnp.int32)}
  mae = get_task(load_config(f"{STAGE1}:smoke"))
  assert mae.config.task.mask_ratio == 0.4
  stage1, _ = jax.jit(mae.init)(jax.random.PRNGKey(42), batch)
  ckpt = checkpoint.Checkpointer(mae_dir / "checkpoints")
  ckpt.save(10, {"step": jnp.int32(10), "params": stage1}, {})
  ckpt.wait()
  config = stage2_config(mae_dir)
  task = get_task(config)
  fresh, tx, schedule = train.initial_state(config, task, batch)
  params, task_state = task.load_pretrained(fresh["params"], fresh["task_state"])
  state = dict(fresh, params=params, task_state=task_state)
  return task, batch, stage1, fresh, state


def _patches(images):
  """[B, H, W, C] -> [B, N, p*p*C] in raster order, in numpy."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // P, P, w // P, P, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // P) * (w // P), P * P * c)


def test_prefix_keeps_the_image_before_k_noise_after_and_targets_patch_k():
  rng = np.random.default_rng(0)
  patches = jnp.asarray(rng.uniform(size=(B, 49, 16)), jnp.float32)
  k = jnp.asarray([1, 2, 7, 20, 30, 47, 48, 13])
  key = jax.random.PRNGKey(3)
  got, zeros = jax.jit(lambda p, k: (
      tokenunify.prefix_input(p, k, key, "noise"),
      tokenunify.prefix_input(p, k, key, "zeros")))(patches, k)
  got, zeros = np.asarray(got), np.asarray(zeros)
  noise = np.asarray(jax.random.normal(key, patches.shape))
  for b, kb in enumerate(np.asarray(k)):
    np.testing.assert_array_equal(got[b, :kb], patches[b, :kb])
    np.testing.assert_array_equal(got[b, kb:], noise[b, kb:])
    np.testing.assert_array_equal(zeros[b, :kb], patches[b, :kb])
    assert not zeros[b, kb:].any()
  np.testing.assert_array_equal(
      tokenunify.next_patch(patches, k), np.asarray(patches)[np.arange(B), np.asarray(k)])
  # k is uniform on 1..N-1 (the official randint(1, total_patches)).
  ks = np.asarray(tokenunify.prefix_lengths(jax.random.PRNGKey(0), 20000, 49))
  assert ks.min() == 1 and ks.max() == 48
  assert np.all(np.abs(np.bincount(ks, minlength=49)[1:] / 20000 - 1 / 48) < 0.006)
  with pytest.raises(ConfigError, match="task.fill='ones' is unknown"):
    tokenunify.prefix_input(patches, k, key, "ones")


def test_network_input_is_the_prefix_in_pixels_then_noise(tu):
  """`inputs`: undone normalization, the prefix carries the [0, 1] pixels
  exactly, the suffix N(0, 1) noise in pixel units, normalized again."""
  task, batch = tu[0], tu[1]
  x, patches, k = jax.jit(task.inputs)(batch["image"], jax.random.PRNGKey(7))
  mean, std = 0.1307, 0.3081
  pixels = _patches(np.asarray(batch["image"]) * std + mean)
  np.testing.assert_allclose(patches, pixels, rtol=1e-6, atol=1e-6)
  seen = _patches(np.asarray(x) * std + mean)
  k = np.asarray(k)
  assert 1 <= k.min() and k.max() <= 48 and len(set(k)) > 1
  suffix = []
  for b in range(B):
    np.testing.assert_allclose(seen[b, :k[b]], pixels[b, :k[b]], atol=1e-5)
    assert np.abs(seen[b, k[b]:] - pixels[b, k[b]:]).min() > 0
    suffix.append(seen[b, k[b]:].ravel())
  suffix = np.concatenate(suffix)
  assert abs(suffix.mean()) < 0.05 and abs(suffix.std() - 1) < 0.05


def _official_fill(image, k, noise):
  """`preserve_patches_and_fill_rest` (ydchen0806/TokenUnify
  `dataloader/data_provider_pretraining_autoregress.py`) in numpy, in 2-D
  ((h p1) (w p2) -> (h w) p1 p2) for one [H, W] image, with its
  `np.random.randint(1, total_patches)` and `np.random.normal` given as k
  and noise [N-k, p, p]: (the generated image, the next token)."""
  h, w = image.shape
  tokens = image.reshape(h // P, P, w // P, P).transpose(0, 2, 1, 3).reshape(-1, P, P)
  next_token = tokens[k]
  generated = np.zeros_like(tokens)
  generated[:k] = tokens[:k]
  generated[k:] = noise
  generated = generated.reshape(h // P, w // P, P, P).transpose(0, 2, 1, 3)
  return generated.reshape(h, w), next_token


def _official_loss(out, x_gt, next_token_pred, next_token_gt):
  """`SegMamba.forward` with `auto_mode=1` (TokenUnify `src/segmamba_ar.py`):
  F.mse_loss(sigmoid(out), x_gt) + F.mse_loss(sigmoid(next), next_gt)."""
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  return (np.mean((sigmoid(out) - x_gt) ** 2)
          + np.mean((sigmoid(next_token_pred) - next_token_gt) ** 2))


def test_loss_is_the_official_construction_and_loss(tu):
  """The task's loss on a batch equals the port: the official input and
  next token built from the same image, k and noise, and the official
  loss of the network's outputs on that input, in image layout."""
  task, batch, _, _, state = tu
  params, rng = state["params"], jax.random.PRNGKey(11)

  @jax.jit
  def run(params):
    x, patches, k = task.inputs(batch["image"], rng)
    whole, nxt = task.model.apply({"params": params}, x)
    return x, k, whole, nxt, task.loss(params, {}, batch, rng, 0)

  x, k, whole, nxt, (loss, (metrics, _)) = run(params)
  mean, std = 0.1307, 0.3081
  gt = np.asarray(batch["image"], np.float64)[..., 0] * std + mean
  seen = np.asarray(x, np.float64)[..., 0] * std + mean
  nexts = []
  for b, kb in enumerate(np.asarray(k)):
    noise = _patches(seen[b][None, ..., None])[0, kb:].reshape(-1, P, P)
    generated, next_token = _official_fill(gt[b], kb, noise)
    np.testing.assert_allclose(seen[b], generated, atol=1e-5)
    nexts.append(next_token)
  # The network's outputs in the official layout: the whole image
  # [B, H, W] and the next token [B, p, p].
  w = np.asarray(whole, np.float64).reshape(B, GRID, GRID, P, P)
  out = w.transpose(0, 1, 3, 2, 4).reshape(B, 28, 28)
  want = _official_loss(out, gt, np.asarray(nxt, np.float64).reshape(B, P, P),
                        np.stack(nexts))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["whole_mse"] + metrics["next_mse"]),
                             want, rtol=1e-5)


def test_load_pretrained_sets_the_stage1_encoder_and_decoder(tu):
  _, _, stage1, fresh, state = tu
  params = state["params"]
  assert set(params) == {"encoder", "decoder", "next_head"}
  for part in ("encoder", "decoder"):
    pairs = zip(jax.tree.leaves(params[part]), jax.tree.leaves(stage1[part]),
                jax.tree.leaves(fresh["params"][part]))
    for got, want, init in pairs:
      np.testing.assert_array_equal(got, want)
      if init.size > 1 and np.asarray(init).std() > 0:
        assert not np.array_equal(got, init)   # the init was replaced
  for got, init in zip(jax.tree.leaves(params["next_head"]),
                       jax.tree.leaves(fresh["params"]["next_head"])):
    np.testing.assert_array_equal(got, init)   # the new head stays new
  # The evals read the loaded encoder.
  task, images = tu[0], tu[1]["image"]
  got, want = jax.jit(lambda p, e: (
      task.features(p, {}, images),
      task.encoder.apply({"params": e}, images)["pooled"]))(params, stage1["encoder"])
  np.testing.assert_array_equal(got, want)


def test_stage1_errors_are_one_line(tu, tmp_path):
  task, batch, _, fresh, state = tu
  mae_dir = task.config.task.init_from
  cases = ((stage2_config(""), ConfigError,
            r"^task.init_from is not set; .*--config.task.init_from=DIR"),
           (stage2_config(tmp_path / "nowhere"), checkpoint.CheckpointError,
            r"no checkpoint folder .*set task.init_from"),
           (stage2_config(tmp_path), checkpoint.CheckpointError,
            r"no readable checkpoint .*point task.init_from"))
  for config, error, match in cases:
    with pytest.raises(error, match=match) as e:
      get_task(config).load_pretrained(fresh["params"], {})
    assert "\n" not in str(e.value)
  wide = get_task(stage2_config(mae_dir, width=48))
  params, _ = jax.eval_shape(wide.init, jax.random.PRNGKey(0), batch)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"do not fit this config's encoder and decoder: .*"
                     r"has shape .*set model and task.decoder") as e:
    wide.load_pretrained(params, {})
  assert "\n" not in str(e.value)


def test_stage2_trains_and_resumes_bit_exactly_on_8_devices(tu, tmp_path):
  """Stage 2 reads the fixture's stage-1 workdir (the config argument
  `mae=DIR`), trains on 8 devices and resumes bit-exactly from its step-3
  checkpoint without it."""
  mae_dir = tu[0].config.task.init_from
  final = assert_resumes_bit_exactly(f"{STAGE2}:smoke,mae={mae_dir}",
                                     tmp_path / "stage2")
  assert 0.1 < final["knn_accuracy"] <= 1.0


def test_imagenet_stages_fit_each_other():
  """The ImageNet config's two commands work together: stage 1 is MAE at
  40% masking and its params have the shapes of the encoder and decoder
  that stage 2 loads."""
  batch = {"image": jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)}
  def shapes(path):
    task = get_task(load_config(path))
    return task, jax.eval_shape(lambda b: task.init(jax.random.PRNGKey(0), b), batch)
  tu = os.path.join(ROOT, "configs", "tokenunify", "imagenet_vit_b16.py")
  mae, (stage1, _) = shapes(f"{tu}:stage=1")
  assert mae.config.task.name == "mae" and mae.config.task.mask_ratio == 0.4
  _, (stage2, _) = shapes(tu)
  assert not checkpoint.shape_mismatch(
      stage1, {k: stage2[k] for k in ("encoder", "decoder")})
