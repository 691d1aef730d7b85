"""CAE (Chen et al. 2022): the regressor and decoder against a numpy port of
the official neck, the alignment target's missing gradient, the regressor's
blindness to masked pixels, and training through the loop."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel import tasks
from maskmodel.config import ConfigError
from maskmodel.models.patches import patchify, sincos_2d_posemb
from maskmodel.tasks.cae import alignment_loss, masked_ids

CONFIG = os.path.join(ROOT, "configs", "cae", "mnist_vit_tiny.py")
SMOKE = CONFIG + ":smoke"


class _Setup:
  """The smoke config's task, a batch, perturbed params, and its functions
  jitted once for the whole module."""

  def __init__(self):
    c = load_config(SMOKE)
    # The current encoder as the teacher (the paper's form), so the target
    # is a function of the params these tests perturb.
    c.task.teacher_momentum = None
    task = self.task = tasks.get_task(c)
    self.images = jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 1))
    params, self.state = jax.jit(task.init)(jax.random.PRNGKey(1),
                                            {"image": self.images})
    # Layer scales and biases away from their init, so no term hides.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    self.params = jax.tree.unflatten(tree, [
        l + 0.1 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
    self.mask = jax.jit(task.mask_policy, static_argnums=1)
    self.encode = jax.jit(task.encode)
    self.predict = jax.jit(task.predict)
    self.loss_and_grad = jax.jit(jax.value_and_grad(
        lambda p, rng: task.loss(p, self.state, {"image": self.images}, rng, 0),
        has_aux=True))


@pytest.fixture(scope="module")
def setup():
  return _Setup()


# --- A numpy port of the official neck: `VisionTransformerNeck.forward`,
# `RegressorBlock`, `CrossAttention`, `Block`, `Attention` in lxtGH/CAE's
# `models/modeling_cae_helper.py` (eval mode, no dropout or drop path).

def _ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _linear(x, p, bias=True):
  y = x @ np.asarray(p["kernel"], np.float64)
  return y + np.asarray(p["bias"], np.float64) if bias else y


def _mlp(x, p):
  h = _linear(x, p["Dense_0"])
  return _linear(0.5 * h * (1 + erf(h / np.sqrt(2))), p["Dense_1"])


def _heads_attend(q, k, v, num_heads):
  b, nq, d = q.shape
  split = lambda t: t.reshape(b, t.shape[1], num_heads, -1).transpose(0, 2, 1, 3)
  q, k, v = split(q), split(k), split(v)
  logits = (q * (d // num_heads) ** -0.5) @ k.transpose(0, 1, 3, 2)
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  return (attn @ v).transpose(0, 2, 1, 3).reshape(b, nq, d)


def official_cross_attention(x, k, v, p, num_heads):
  """`CrossAttention.forward`: q and v have biases, k has none."""
  q = _linear(x, p["query"])
  k = _linear(k, p["key"], bias=False)
  v = _linear(v, p["value"])
  return _linear(_heads_attend(q, k, v, num_heads), p["out"])


def official_regressor_block(x_q, x_kv, pos_q, pos_k, p, num_heads):
  x = x_q + p["gamma_1"] * official_cross_attention(
      _ln(x_q + pos_q, p["norm_q"]), _ln(x_kv + pos_k, p["norm_k"]),
      _ln(x_kv, p["norm_v"]), p["cross_attn"], num_heads)
  x = _ln(x, p["norm2"])
  return x + p["gamma_2"] * _mlp(x, p["mlp"])


def official_block(x, p, num_heads):
  """`Block.forward` with `Attention`: fused qkv whose bias is
  (q_bias, 0, v_bias)."""
  d = x.shape[-1]
  bias = np.concatenate([p["attn"]["qkv"]["bias"][:d], np.zeros(d),
                         p["attn"]["qkv"]["bias"][2 * d:]])
  qkv = _linear(_ln(x, p["norm1"]), {"kernel": p["attn"]["qkv"]["kernel"],
                                     "bias": bias})
  q, k, v = np.split(qkv, 3, axis=-1)
  x = x + p["gamma_1"] * _linear(_heads_attend(q, k, v, num_heads),
                                 p["attn"]["proj"])
  return x + p["gamma_2"] * _mlp(_ln(x, p["norm2"]), p["mlp"])


def official_neck(x_masked, x_unmasked, pos_masked, pos_unmasked, p,
                  num_heads, regressor_depth, decoder_depth):
  """`VisionTransformerNeck.forward`: (logits, latent_pred)."""
  for i in range(regressor_depth):
    x_masked = official_regressor_block(
        x_masked, np.concatenate([x_unmasked, x_masked], 1), pos_masked,
        np.concatenate([pos_unmasked, pos_masked], 1), p[f"regressor_{i}"],
        num_heads)
  x_masked = _ln(x_masked, p["regressor_norm"])
  latent_pred = x_masked
  x_masked = x_masked + pos_masked
  for i in range(decoder_depth):
    x_masked = official_block(x_masked, p[f"decoder_{i}"], num_heads)
  return _linear(_ln(x_masked, p["decoder_norm"]), p["head"]), latent_pred


def test_neck_matches_the_official_regressor_and_decoder(setup):
  task, params, images = setup.task, setup.params, setup.images
  mask = setup.mask(jax.random.PRNGKey(5), images.shape[0])
  ids_keep, ids_masked = np.asarray(mask.ids_keep), np.asarray(masked_ids(mask))
  visible = np.asarray(setup.encode(params, images, mask.ids_keep), np.float64)
  latent, out = setup.predict(params, images, mask)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["regressor"])
  # The official key projection has no bias; ours has one (nonzero here),
  # which the softmax cancels.
  assert np.abs(p["regressor_0"]["cross_attn"]["key"]["bias"]).max() > 0.1
  for i in range(task.neck.decoder_depth):   # torch's [D, 3D] qkv layout
    qkv = p[f"decoder_{i}"]["attn"]["qkv"]
    qkv["kernel"] = qkv["kernel"].reshape(qkv["kernel"].shape[0], -1)
    qkv["bias"] = qkv["bias"].reshape(-1)
  b, m, d = ids_masked.shape + (visible.shape[-1],)
  pos = sincos_2d_posemb(d, task.grid).astype(np.float64)
  want_logits, want_latent = official_neck(
      np.broadcast_to(p["mask_token"], (b, m, d)), visible, pos[ids_masked],
      pos[ids_keep], p, task.neck.num_heads, task.neck.regressor_depth,
      task.neck.decoder_depth)
  np.testing.assert_allclose(latent, want_latent, atol=2e-5)
  np.testing.assert_allclose(out, want_logits, atol=2e-5)


def test_alignment_target_carries_no_gradient(setup):
  task, params, images, state = setup.task, setup.params, setup.images, setup.state
  rng = jax.random.PRNGKey(7)
  _, grads = setup.loss_and_grad(params, rng)
  # The same loss with the target frozen to a constant array.
  mask = setup.mask(rng, images.shape[0])
  target = setup.encode(params, images, masked_ids(mask))

  def frozen_target_loss(p):
    latent, out = task.predict(p, images, mask)
    main, _ = task.main_loss(out, images, masked_ids(mask), state)
    return main + task.align_weight * jnp.mean((latent - target) ** 2)

  want = jax.jit(jax.grad(frozen_target_loss))(params)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-6),
               grads, want)
  # Through the target path the encoder would get a gradient, so the check
  # above can fail.
  through = jax.jit(jax.grad(lambda p: jnp.mean(
      task.encode(p, images, masked_ids(mask)) ** 2)))(params)
  assert max(float(jnp.abs(g).max())
             for g in jax.tree.leaves(through["encoder"])) > 1e-4
  assert float(alignment_loss(target + 1.0, target)) == pytest.approx(1.0)


def test_regressor_sees_masked_pixels_only_through_positions(setup):
  params, images = setup.params, setup.images
  mask = setup.mask(jax.random.PRNGKey(9), images.shape[0])
  hidden = np.asarray(mask.mask).reshape(-1, 7, 7).repeat(4, 1).repeat(4, 2)
  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(10), images.shape))
  changed = np.where(hidden[..., None] > 0, noise, np.asarray(images))
  latent, out = setup.predict(params, images, mask)
  latent2, out2 = setup.predict(params, jnp.asarray(changed), mask)
  np.testing.assert_array_equal(latent, latent2)
  np.testing.assert_array_equal(out, out2)
  # A visible pixel does reach them.
  moved = np.where(hidden[..., None] > 0, np.asarray(images), noise)
  latent3, _ = setup.predict(params, jnp.asarray(moved), mask)
  assert float(jnp.abs(latent3 - latent).max()) > 1e-3


def test_loss_is_main_plus_weighted_alignment(setup):
  params, images = setup.params, setup.images
  rng = jax.random.PRNGKey(11)
  (loss, (metrics, _)), _ = setup.loss_and_grad(params, rng)
  mask = setup.mask(rng, images.shape[0])
  ids = np.asarray(masked_ids(mask))
  latent, out = setup.predict(params, images, mask)
  target = np.asarray(setup.encode(params, images, masked_ids(mask)))
  # The official loss (`train_one_epoch` in `furnace/engine_for_pretraining.py`
  # of lxtGH/CAE): loss_main + align_loss_weight * F.mse_loss(latent,
  # latent_target); the main term here is the per-patch normalized pixels'
  # MSE at the hidden patches.
  px = np.asarray(patchify(images, 4), np.float64)
  px = (px - px.mean(-1, keepdims=True)) / np.sqrt(
      px.var(-1, ddof=1, keepdims=True) + 1e-6)
  main = ((np.asarray(out) - np.take_along_axis(px, ids[..., None], 1)) ** 2).mean()
  align = ((np.asarray(latent) - target) ** 2).mean()
  np.testing.assert_allclose(metrics["loss_main"], main, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_align"], align, rtol=1e-5)
  np.testing.assert_allclose(loss, main + 2.0 * align, rtol=1e-5)
  # Hidden and visible patches are disjoint and cover the grid.
  both = np.concatenate([np.asarray(mask.ids_keep), ids], 1)
  assert (np.sort(both, 1) == np.arange(49)).all()
  assert ids.shape[1] == 24


def test_align_weight_zero_and_bad_options(setup):
  task = tasks.get_task(load_config(CONFIG + ":smoke,no_align"))
  loss, (metrics, _) = jax.jit(
      lambda p: task.loss(p, setup.state, {"image": setup.images},
                          jax.random.PRNGKey(0), 0))(setup.params)
  assert "loss_align" not in metrics
  np.testing.assert_allclose(loss, metrics["loss_main"])
  for key, value, text in [("target", "dalle", "task.target='dalle'"),
                           ("align_weight", -1.0, "task.align_weight"),
                           ("min_block_patches", 99, "task.min_block_patches"),
                           ("num_heads", 5, "task.num_heads=5"),
                           ("tokenizer", None, "needs task.tokenizer"),
                           ("teacher_momentum", 1.0, "task.teacher_momentum")]:
    c = load_config(SMOKE + ",tokens")
    c.task[key] = value
    with pytest.raises(ConfigError, match=text):
      tasks.get_task(c)


def test_official_teacher_is_one_step_old(setup):
  """`task.teacher_momentum=0`: the target comes from the encoder copied at
  the previous step (`momentum_update(0)` after the teacher's forward in
  `VisionTransformerForMaskedImageModeling.forward`)."""
  c = load_config(SMOKE)
  c.task.teacher_momentum = 0.0
  task = tasks.get_task(c)
  images, new = setup.images, setup.params
  assert set(jax.eval_shape(task.init, jax.random.PRNGKey(1),
                            {"image": images})[1]) == {"teacher"}
  # The encoder of the step before, the step's teacher.
  old = jax.tree.map(lambda x: 0.5 * x, new["encoder"])
  state = {"teacher": old}
  rng = jax.random.PRNGKey(17)
  _, (metrics, state) = jax.jit(lambda p, s: task.loss(
      p, s, {"image": images}, rng, 0))(new, state)
  mask = setup.mask(rng, images.shape[0])
  latent, _ = setup.predict(new, images, mask)
  target = setup.encode({"encoder": old}, images, masked_ids(mask))
  np.testing.assert_allclose(metrics["loss_align"],
                             np.mean((np.asarray(latent) - target) ** 2),
                             rtol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, state["teacher"], new["encoder"])


def test_token_target_is_cross_entropy_on_kmeans_ids(setup):
  task = tasks.get_task(load_config(CONFIG + ":smoke,tokens"))
  images = setup.images
  params, state = jax.jit(task.init)(jax.random.PRNGKey(1), {"image": images})
  _, state = task.load_pretrained(params, state)
  codebook = np.asarray(state["frozen"]["codebook"], np.float64)
  assert codebook.shape == (32, 16) and np.abs(codebook).max() > 0
  mask = setup.mask(jax.random.PRNGKey(13), images.shape[0])
  _, logits = jax.jit(task.predict)(params, images, mask)
  _, metrics = jax.jit(task.main_loss)(logits, images, masked_ids(mask), state)
  # Each hidden patch's id is its nearest centroid, in [0, 1] pixels.
  px = np.asarray(patchify(images * 0.3081 + 0.1307, 4), np.float64)
  ids = ((px[:, :, None] - codebook[None, None]) ** 2).sum(-1).argmin(-1)
  labels = np.take_along_axis(ids, np.asarray(masked_ids(mask)), 1)
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  want = -np.take_along_axis(logp, labels[..., None], -1).mean()
  np.testing.assert_allclose(metrics["loss_main"], want, rtol=1e-5)
  np.testing.assert_allclose(metrics["token_accuracy"],
                             (logits.argmax(-1) == labels).mean())


def test_trains_and_resumes_bit_exactly_on_8_devices(tmp_path):
  # The token target: its fitted codebook must come back on resume.
  final = assert_resumes_bit_exactly(CONFIG + ":smoke,tokens", tmp_path / "w")
  assert 0.1 < final["knn_accuracy"] <= 1.0
