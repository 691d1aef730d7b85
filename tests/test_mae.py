"""MAE task: masked-only loss, normalized-pixel target, model shapes."""
import jax
import jax.numpy as jnp
import numpy as np

from maskmodel.models.patches import patchify
from maskmodel.tasks import get_task
from maskmodel.tasks.mae import masked_mse, normalized_pixel_target


def test_masked_mse_ignores_visible_patches():
  rng = np.random.RandomState(0)
  pred, target = rng.rand(2, 6, 5), rng.rand(2, 6, 5)
  mask = np.array([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], np.float32)
  loss = float(masked_mse(pred, target, mask))
  manual = np.mean([((pred[b, i] - target[b, i]) ** 2).mean()
                    for b in range(2) for i in range(6) if mask[b, i]])
  np.testing.assert_allclose(loss, manual, rtol=1e-6)
  # Changing predictions at visible patches changes nothing.
  pred2 = np.where(mask[..., None] == 0, pred + 10.0, pred)
  np.testing.assert_allclose(float(masked_mse(pred2, target, mask)), loss, rtol=1e-6)
  # Changing a masked one does.
  pred3 = pred.copy()
  pred3[0, 0] += 1.0
  assert float(masked_mse(pred3, target, mask)) > loss


def test_normalized_pixel_target():
  x = np.random.RandomState(1).rand(3, 4, 48).astype(np.float32) * 5 + 2
  t = np.asarray(normalized_pixel_target(x))
  # facebookresearch/mae `models_mae.py` `forward_loss`: torch's var is the
  # unbiased one.
  want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(t, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(t.std(-1, ddof=1), 1, atol=1e-3)


def test_mae_task_loss_and_grads(smoke_config):
  task = get_task(smoke_config)
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 1))
  params, state = jax.jit(task.init)(jax.random.PRNGKey(1), {"image": images})
  pred, mask = jax.jit(task.predict)(params, images, jax.random.PRNGKey(2))
  assert pred.shape == (4, 49, 16)
  assert float(mask.mask.sum()) == 4 * (49 - task.keep)
  loss, _ = jax.jit(task.loss, static_argnums=4)(
      params, state, {"image": images}, jax.random.PRNGKey(2), 0)
  np.testing.assert_allclose(
      float(loss), float(masked_mse(pred, task.target(images), mask.mask)), rtol=1e-6)
  # Gradients reach both the decoder's mask token and the encoder.
  grads = jax.jit(jax.grad(lambda p: task.loss(p, state, {"image": images},
                                               jax.random.PRNGKey(2), 0)[0]))(params)
  norms = jax.tree.map(lambda g: float(jnp.abs(g).sum()), grads)
  assert norms["decoder"]["mask_token"] > 0
  assert norms["encoder"]["patch_embed"]["kernel"] > 0


def test_encoder_sees_only_visible_patches(smoke_config):
  """Changing hidden patches leaves the encoder output unchanged (MAE Sec. 3)."""
  task = get_task(smoke_config)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
  params, _ = task.init(jax.random.PRNGKey(1), {"image": images})
  m = task.mask_policy(jax.random.PRNGKey(3), 2)
  enc = lambda im: task.encoder.apply({"params": params["encoder"]}, im,
                                      ids_keep=m.ids_keep)["tokens"]
  hidden = np.asarray(m.mask).reshape(2, 7, 7)
  pixel_mask = np.kron(hidden, np.ones((4, 4)))[..., None]
  noisy = images + 5.0 * pixel_mask  # perturb hidden patches only
  np.testing.assert_allclose(np.asarray(enc(images)), np.asarray(enc(noisy)), atol=1e-5)
  assert np.asarray(patchify(noisy - images, 4)).any()
