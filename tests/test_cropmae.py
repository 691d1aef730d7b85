"""CropMAE (Eymaël et al. 2024): its views, the post-norm decoder block
against a port of the official layer, and training through the loop."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel import data
from maskmodel.config import ConfigError
from maskmodel.models.cross_decoder import CrossDecoderBlock
from maskmodel.tasks import get_task

SMOKE = os.path.join(ROOT, "configs", "cropmae", "mnist_vit_tiny.py") + ":smoke"


def _views(views, seed=0, n=4):
  config = load_config(SMOKE)
  config.task.views = views
  task = get_task(config)
  src = data.get_source("mnist5k", "train")
  ds = data.train_dataset(src, batch_size=n, seed=seed,
                          preprocess=functools.partial(task.preprocess, train=True))
  return ds[0]


def test_views():
  same = _views("same")
  np.testing.assert_array_equal(same["image"], same["masked_view"])
  crop = _views("global_to_local")
  assert crop["image"].shape == crop["masked_view"].shape == (4, 28, 28, 1)
  assert not np.allclose(crop["image"], crop["masked_view"])
  # The local view zooms into the global one: at scale 0.3-0.6 of its area,
  # a digit stroke covers more of it, so it has fewer background pixels.
  background = lambda x: (x <= x.min() + 1e-6).mean()
  more = [background(crop["image"][i]) >= background(crop["masked_view"][i]) - 0.05
          for i in range(4)]
  assert sum(more) >= 3
  np.testing.assert_array_equal(_views("global_to_local")["masked_view"],
                                crop["masked_view"])  # seeded
  with pytest.raises(ConfigError, match="task.views"):
    config = load_config(SMOKE)
    config.task.views = "global"
    get_task(config)


def _layer_norm(x, p, eps=1e-6):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _mha(x, mem, p, heads):
  """torch.nn.MultiheadAttention (batch_first, no dropout) in numpy."""
  b, nq, d = x.shape
  proj = lambda t, name: t @ p[name]["kernel"] + p[name]["bias"]
  split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(0, 2, 1, 3)
  q, k, v = split(proj(x, "query")), split(proj(mem, "key")), split(proj(mem, "value"))
  s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
  a = np.exp(s - s.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  o = (a @ v).transpose(0, 2, 1, 3).reshape(b, nq, d)
  return proj(o, "out")


def official_block(tgt, memory, p, heads):
  """`DecoderBlock.forward` of alexandre-eymael/CropMAE
  `models/components/DecoderBlock.py` with norm_first=False, in eval mode."""
  from scipy.special import erf  # pylint: disable=g-import-not-at-top
  gelu = lambda t: 0.5 * t * (1 + erf(t / np.sqrt(2)))
  x = _layer_norm(tgt + _mha(tgt, memory, p["cross_attn"], heads), p["norm_cross"])
  ff = gelu(x @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"])
  x = _layer_norm(x + ff @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"], p["norm_mlp"])
  return _layer_norm(x + _mha(x, x, p["self_attn"], heads), p["norm_self"])


def test_decoder_block_matches_the_official_post_norm_layer():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 10, 32)).astype(np.float32)
  mem = rng.normal(size=(2, 7, 32)).astype(np.float32)
  block = CrossDecoderBlock(num_heads=4, mlp_dim=64, dropout=0.1, attn_impl="xla")
  params = jax.jit(block.init, static_argnums=3)(
      jax.random.PRNGKey(0), x, mem, False)["params"]
  # Random norms and biases, so that every parameter matters.
  params = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(a.dtype),
                        params)
  got = jax.jit(lambda p: block.apply({"params": p}, x, mem, False))(params)
  want = official_block(x.astype(np.float64), mem.astype(np.float64),
                        jax.tree.map(lambda a: np.asarray(a, np.float64), params), 4)
  np.testing.assert_allclose(got, want, atol=1e-4)
  # Training mode drops activations.
  dropped = jax.jit(lambda p: block.apply(
      {"params": p}, x, mem, True, rngs={"dropout": jax.random.PRNGKey(1)}))(params)
  assert not np.allclose(dropped, got)


def test_trains_and_resumes_bit_exactly_on_8_devices(tmp_path):
  final = assert_resumes_bit_exactly(SMOKE, tmp_path / "w")
  assert 0.1 < final["knn_accuracy"] <= 1.0
