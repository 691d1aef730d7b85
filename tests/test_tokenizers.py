"""Patch tokenizers: k-means fitting and assignment, encode/decode, config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskmodel import tokenizers
from maskmodel.config import ConfigError
from maskmodel.models.patches import patchify
from maskmodel.tokenizers import kmeans
from tests.conftest import load_config


def _mnist_patches(n_images=100, patch=4):
  """Real patches: the first MNIST training digits in [0, 1] units."""
  config = load_config("configs/mae/mnist_vit_tiny.py")
  pixels = tokenizers.training_pixels(config, n_images)
  assert pixels.shape == (n_images, 28, 28, 1)
  assert 0.0 <= pixels.min() and pixels.max() <= 1.0 + 1e-6
  return np.asarray(patchify(jnp.asarray(pixels), patch)).reshape(-1, patch * patch)


@pytest.fixture(scope="module")
def patches():
  return _mnist_patches()


def test_assignment_is_the_brute_force_nearest_centroid():
  rng = np.random.RandomState(0)
  x = rng.randn(3000, 12).astype(np.float32)
  c = rng.randn(37, 12).astype(np.float32)
  d = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64))**2).sum(-1)
  want = d.argmin(1)
  for chunk in (kmeans.CHUNK, 512):  # one piece, and pieces with a padded tail
    ids, dist = kmeans.assign(jnp.asarray(x), jnp.asarray(c), chunk=chunk)
    np.testing.assert_array_equal(np.asarray(ids), want)
    np.testing.assert_allclose(np.asarray(dist), d.min(1), rtol=1e-4, atol=1e-4)


K, STEPS = 32, 6


@pytest.fixture(scope="module")
def fitted(patches):
  """The tokenizer and its state, fitted once for the tests below."""
  tok = tokenizers.get_patch_tokenizer(dict(name="kmeans", vocab_size=K,
                                            iterations=STEPS))
  return tok, kmeans.fit(jax.random.PRNGKey(0), jnp.asarray(patches), K, STEPS)


def test_lloyd_objective_never_increases_and_uses_every_cluster(patches, fitted):
  k, steps = K, STEPS
  result = fitted[1]
  obj = np.asarray(result.inertia)
  assert obj.shape == (steps,)
  assert np.all(np.diff(obj) <= 1e-6 * obj[:-1]), obj
  assert obj[-1] < 0.8 * obj[0]  # it really clusters
  final = float(kmeans.inertia(jnp.asarray(patches), result.centroids))
  assert final <= obj[-1] * (1 + 1e-6)
  # MNIST patches are mostly blank, so the random seeds repeat; relocation
  # leaves no centroid without points.
  ids, _ = kmeans.assign(jnp.asarray(patches), result.centroids)
  assert len(np.unique(np.asarray(ids))) == k
  # A Lloyd step is the numpy mean of each cluster's points.
  c1, _ = kmeans.lloyd_step(result.centroids, jnp.asarray(patches))
  ids = np.asarray(ids)
  want = np.stack([patches[ids == j].mean(0) for j in range(k)])
  np.testing.assert_allclose(np.asarray(c1), want, rtol=1e-5, atol=1e-5)


def test_minibatch_fit_lowers_the_objective(patches):
  x = jnp.asarray(patches)
  start = float(kmeans.inertia(x, kmeans.init_centroids(
      jax.random.split(jax.random.PRNGKey(1))[0], x, 32)))
  result = kmeans.fit(jax.random.PRNGKey(1), x, 32, steps=10, batch_size=256)
  assert float(kmeans.inertia(x, result.centroids)) < 0.8 * start


def test_minibatch_step_is_a_running_mean():
  c = jnp.asarray([[0.0, 0.0], [10.0, 10.0]])
  counts = jnp.asarray([2.0, 0.0])
  x = jnp.asarray([[1.0, 1.0], [9.0, 9.0], [11.0, 11.0], [2.0, 0.0]])
  new, n, _ = kmeans.minibatch_step(c, counts, x)
  # centroid 0 had 2 points at the origin, wins (1,1) and (2,0): mean of 4.
  np.testing.assert_allclose(np.asarray(new[0]), [0.75, 0.25])
  np.testing.assert_allclose(np.asarray(new[1]), [10.0, 10.0])
  np.testing.assert_array_equal(np.asarray(n), [4.0, 2.0])


def test_empty_cluster_moves_onto_the_farthest_point():
  x = jnp.asarray([[0.0], [0.1], [0.2], [5.0]])
  c = jnp.asarray([[0.0], [100.0]])  # the second centroid wins nothing
  new, _ = kmeans.lloyd_step(c, x)
  np.testing.assert_allclose(np.asarray(new), [[1.325], [5.0]])


def test_tokenizer_encode_decode_round_trip(patches, fitted):
  tok, result = fitted
  assert tok.vocab_size == 32
  assert jax.tree.map(jnp.shape, tok.placeholder(16)) == {"codebook": (32, 16)}
  frozen = tok.fit(jax.random.PRNGKey(0), jnp.asarray(patches))
  np.testing.assert_array_equal(np.asarray(frozen["codebook"]),
                                np.asarray(result.centroids))
  batch = jnp.asarray(patches[:2 * 49]).reshape(2, 49, 16)
  ids = tok.encode(frozen, batch)
  assert ids.shape == (2, 49) and ids.dtype == jnp.int32
  assert int(ids.min()) >= 0 and int(ids.max()) < 32
  back = tok.decode(frozen, ids)
  assert back.shape == batch.shape
  np.testing.assert_array_equal(np.asarray(back),
                                np.asarray(frozen["codebook"])[np.asarray(ids)])
  # A centroid is its own token.
  np.testing.assert_array_equal(
      np.asarray(tok.encode(frozen, frozen["codebook"][None])), np.arange(32)[None])


def test_fit_on_training_images_is_deterministic():
  config = load_config("configs/mae/mnist_vit_tiny.py")
  cfg = dict(name="kmeans", vocab_size=16, iterations=2, images=20)
  tok = tokenizers.get_patch_tokenizer(cfg)
  a = tokenizers.fit_on_training_images(tok, config, cfg)
  b = tokenizers.fit_on_training_images(tok, config, cfg)
  assert a["codebook"].shape == (16, 16)
  np.testing.assert_array_equal(np.asarray(a["codebook"]), np.asarray(b["codebook"]))


@pytest.mark.parametrize("cfg, match", [
    (dict(name="vq", vocab_size=8), r"task.tokenizer.name='vq' is unknown"),
    (dict(name="kmeans", vocab_size=1), r"vocab_size=1 must be >= 2"),
    (dict(name="kmeans", vocab_size=8, iterations=0), r"iterations=0"),
    (dict(name="kmeans", vocab_size=8, batch_size=4), r"batch_size=4 is below"),
    (dict(name="kmeans", vocab_size=8, bins=3), r"does not take"),
])
def test_bad_config_is_one_line(cfg, match):
  with pytest.raises(ConfigError, match=match) as e:
    tokenizers.get_patch_tokenizer(cfg)
  assert "\n" not in str(e.value)


def test_too_many_images_is_one_line():
  config = load_config("configs/mae/mnist_vit_tiny.py")
  with pytest.raises(ConfigError, match=r"images=99999 must be in \[1, 4000\]") as e:
    tokenizers.training_pixels(config, 99999)
  assert "\n" not in str(e.value)
