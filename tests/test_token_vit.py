"""Token reduction inside maskmodel's ViT (config.model.token_reduction)."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config
from maskmodel import config as mm
from maskmodel import tokens
from maskmodel.config import ConfigError
from maskmodel.models import build
from maskmodel.models.vit import ViT
from maskmodel.tasks import get_task
from maskmodel.train import initial_state, train_step

METHODS = sorted(tokens.REDUCERS)
IMAGE = 16       # 4x4 patches of 4 pixels: 16 patches + [CLS] = 17 tokens
N0 = (IMAGE // 4) ** 2 + 1
KEEP = [11, 7]
DEPTH = len(KEEP)


def _model_config(method="none", schedule=0, depth=DEPTH, pool="cls",
                  attn_impl="auto", **kw):
  c = mm.base_config().model
  c.width, c.num_heads, c.depth, c.pool = 16, 2, depth, pool
  c.attn_impl = attn_impl
  c.token_reduction.method = method
  c.token_reduction.schedule = schedule
  for k, v in kw.items():
    c.token_reduction[k] = v
  return c


def _vit(method="none", schedule=0, **kw):
  return build.vit(_model_config(method, schedule, **kw), num_classes=10,
                   num_tokens=N0)


@functools.lru_cache(maxsize=None)
def _images_and_params():
  images = jax.random.normal(jax.random.PRNGKey(0), (2, IMAGE, IMAGE, 1))
  params = jax.jit(_vit().init)(jax.random.PRNGKey(1), images)["params"]
  # Random (not zero) head weights, so logits depend on the tokens.
  params = dict(params, head={"kernel": jax.random.normal(
      jax.random.PRNGKey(2), params["head"]["kernel"].shape), "bias":
      params["head"]["bias"]})
  return images, params


def _apply(model, **kw):
  images, params = _images_and_params()
  fn = jax.jit(lambda p, x: model.apply({"params": p}, x, **kw))
  return fn(params, images)


def test_none_is_the_plain_vit_bit_for_bit():
  images, params = _images_and_params()
  plain = ViT(patch_size=4, width=16, depth=DEPTH, num_heads=2,
              num_classes=10)
  none, r0 = _vit("none"), _vit("tome", 0)
  assert none.token_reduction is None

  @jax.jit
  def outputs(p, x):
    return [m.apply({"params": p}, x) for m in (plain, none, r0)]

  out_plain, out_none, out_r0 = outputs(params, images)
  for key in ("tokens", "pooled", "logits"):
    np.testing.assert_array_equal(out_none[key], out_plain[key])
  # A reducer that removes nothing (r = 0) leaves the model unchanged too.
  for key in ("tokens", "pooled", "logits"):
    np.testing.assert_array_equal(out_r0[key], out_plain[key])
  np.testing.assert_array_equal(out_none["size"], np.ones((2, N0, 1)))
  # Same params tree with and without reduction: eval-time use needs no
  # retraining.
  shapes = jax.eval_shape(lambda: _vit("tome", 2).init(jax.random.PRNGKey(1),
                                                       images)["params"])
  assert (jax.tree.structure(shapes) == jax.tree.structure(params))


def test_proportional_attention_is_the_same_with_every_impl():
  outs = {impl: _apply(_vit("tome", ("keep", KEEP), attn_impl=impl,
                            prop_attn=True))
          for impl in ("xla", "interpret")}
  for key in ("tokens", "logits", "size"):
    np.testing.assert_allclose(outs["interpret"][key], outs["xla"][key],
                               rtol=1e-5, atol=1e-5)
  # The size bias is live: switching it off changes the output.
  off = _apply(_vit("tome", ("keep", KEEP), prop_attn=False, attn_impl="xla"))
  assert not np.allclose(off["logits"], outs["xla"]["logits"], atol=1e-6)


def _block_token_counts(model):
  """Tokens each block outputs (shapes only: traced, not run)."""
  images, params = _images_and_params()
  _, inter = jax.eval_shape(functools.partial(
      model.apply, capture_intermediates=True, mutable=["intermediates"]),
                            {"params": params}, images)
  enc = inter["intermediates"]["encoder"]
  counts = []
  for i in range(len([k for k in enc if k.startswith("block_")])):
    out = enc[f"block_{i}"]["__call__"][0]
    counts.append(out[0].shape[1])
  return counts


@pytest.mark.parametrize("schedule,expected", [
    (("keep", KEEP), KEEP),
    (3, tokens.tokens_per_layer(3, DEPTH, N0)),
    ("decreasing:4", tokens.tokens_per_layer("decreasing:4", DEPTH, N0)),
    (("rate", 0.5, (1,)), [N0, 9]),
])
def test_token_count_per_block_follows_the_schedule(schedule, expected):
  model = _vit("tome", schedule)
  assert model.token_reduction.keep == tuple(expected)
  assert _block_token_counts(model) == list(expected)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_in_the_vit_under_jit(method):
  model = _vit(method, ("keep", KEEP), pool="gap")
  out = _apply(model, return_source=True)
  b, k = 2, KEEP[-1]
  assert out["tokens"].shape == (b, k, 16)
  assert out["size"].shape == (b, k, 1) and out["source"].shape == (b, N0)
  assert out["source"].dtype == jnp.int32
  assert np.isfinite(out["logits"]).all()
  size = np.asarray(out["size"])
  source = np.asarray(tokens.dense_source(out["source"], k))
  # The class token stays first and alone.
  np.testing.assert_array_equal(source[:, 0], np.eye(N0)[0][None].repeat(b, 0))
  np.testing.assert_array_equal(size[:, 0, 0], 1.0)
  if tokens.REDUCERS[method].conserves_size:
    np.testing.assert_allclose(size.sum(axis=(1, 2)), N0, rtol=1e-5)
  elif method == "gtp":   # kept scales grow by alpha * the propagated ones
    assert (size.sum(axis=(1, 2)) > k).all() and (size.sum(axis=(1, 2)) < N0).all()
  else:
    np.testing.assert_allclose(size.sum(axis=(1, 2)), k, rtol=1e-5)
  # Every input token is held by at most one output token.
  assert (source.sum(axis=1) <= 1.0 + 1e-6).all()


def test_sizes_sum_to_the_patch_count_plus_one_and_restore_to_sources():
  model = _vit("tome", "decreasing:4")
  images, params = _images_and_params()

  @jax.jit
  def both(p, x):
    merged = model.apply({"params": p}, x, return_source=True)
    restored = model.apply({"params": p}, x, restore_tokens=True)
    return merged, restored

  merged, restored = both(params, images)
  size = np.asarray(merged["size"])
  source = np.asarray(tokens.dense_source(merged["source"], size.shape[1]))
  assert size.shape[1] == model.token_reduction.keep[-1] < N0
  np.testing.assert_allclose(size.sum(axis=(1, 2)), N0)
  np.testing.assert_allclose(size[..., 0], source.sum(-1))
  # restore_tokens puts each output token back at every position it holds.
  assert restored["tokens"].shape == (2, N0, 16)
  holder = source.argmax(axis=1)
  expect = np.take_along_axis(np.asarray(merged["tokens"]),
                              holder[..., None], axis=1)
  np.testing.assert_array_equal(restored["tokens"], expect)
  np.testing.assert_array_equal(restored["pooled"], merged["pooled"])


def test_bad_token_reduction_configs_raise_clear_errors():
  with pytest.raises(ConfigError, match=r"unknown; use 'none' or one of .*tome"):
    _vit("tomee", 2)
  with pytest.raises(ConfigError, match="schedule.*>= 2"):
    _vit("topk", ("keep", [10, 0]))
  with pytest.raises(ConfigError, match="schedule.*non-increasing"):
    _vit("topk", ("keep", [10, 12]))
  with pytest.raises(ConfigError, match="schedule.*one per layer"):
    _vit("topk", ("keep", [10, 8, 6]))
  with pytest.raises(ConfigError, match="at most half"):
    _vit("tome", ("keep", [5, 4]))
  # A bare pair is ambiguous (keep-list? ToMe's (r, inflect)?): one line
  # naming the explicit forms.
  with pytest.raises(ConfigError, match=r"^[^\n]*ambiguous[^\n]*'keep'[^\n]*$"):
    _vit("topk", (11, 7))
  with pytest.raises(ConfigError, match="accepts"):
    _vit("atc", 2, options={"linkeage": "single"})
  with pytest.raises(ConfigError, match="num_tokens"):
    build.vit(_model_config("tome", 2), num_classes=10)
  # Options reach the reducer.
  model = _vit("atc", 2, options={"linkage": "single"})
  assert model.token_reduction.options == (("linkage", "single"),)


def _classify_config():
  c = load_config(os.path.join(ROOT, "configs", "classify",
                               "mnist_vit_tiny.py") + ":smoke")
  c.batch_size = 8
  c.optimizer.layer_decay = 1.0
  c.model.token_reduction.method = "tome"
  c.model.token_reduction.schedule = 8      # 50 tokens -> 42 (one block)
  return c


def _step(config, images, labels=None):
  """One jitted train step of the loop; returns (task, params before, after,
  metrics)."""
  task = get_task(config)
  task.init = jax.jit(task.init)   # eager init would dominate the runtime
  batch = {"image": images}
  if labels is not None:
    batch["label"] = labels
  config.optimizer.warmup_steps = 0     # a non-zero lr on the first step
  state, tx, schedule = initial_state(config, task, batch)
  step = jax.jit(functools.partial(train_step, task, tx, schedule))
  before = jax.tree.map(jnp.copy, state["params"])
  state, metrics = step(state, batch)
  return task, before, state["params"], jax.device_get(metrics)


def _changed(before, after):
  return jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)


def test_classify_training_step_with_tome():
  config = _classify_config()
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 28, 28, 1))
  labels = jnp.arange(8) % 10
  task, before, after, metrics = _step(config, images, labels)
  assert task.model.token_reduction.keep == (42,)
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  changed = _changed(before, after)
  assert changed["encoder"]["block_0"]["mlp"]["Dense_0"]["kernel"]


def test_mae_pretraining_step_with_merging(smoke_config):
  c = smoke_config
  c.batch_size = 8
  c.model.depth = 2
  c.model.token_reduction.method = "tome"
  c.model.token_reduction.schedule = 3      # 13 visible tokens -> 10 -> 7
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 28, 28, 1))
  task, before, after, metrics = _step(c, images)
  assert task.model.encoder.token_reduction.keep == (10, 7)
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  # Gradients reach the encoder through the merged tokens.
  changed = _changed(before, after)
  assert changed["encoder"]["encoder"]["block_1"]["mlp"]["Dense_0"]["kernel"]
  # The decoder still predicts every patch; feature evals see full images
  # through the unreduced encoder (shapes only).
  pred, _ = jax.eval_shape(task.predict, after, images, jax.random.PRNGKey(3))
  assert pred.shape == (8, 49, 16)
  feats = jax.eval_shape(task.features, after, {}, images)
  assert feats.shape == (8, 32)


def _dense_restore(source, *arrays):
  """The restore of the one-hot `[B, K, N0]` map (ToMe's form, the ViT's
  path before index maps): argmax over the holders, zeros where none."""
  holder = source.argmax(axis=1)
  held = source.max(axis=1) > 0
  out = []
  for a in arrays:
    idx = holder.reshape(holder.shape + (1,) * (a.ndim - 2))
    picked = jnp.take_along_axis(a, idx, axis=1)
    out.append(jnp.where(held.reshape(idx.shape), picked,
                         jnp.zeros((), a.dtype)))
  return tuple(out)


def test_restore_from_the_index_map_equals_the_dense_path():
  from maskmodel.models.vit import restore
  rng = np.random.default_rng(0)
  b, k, n0 = 3, 7, 40
  source = rng.integers(-1, k, (b, n0)).astype(np.int32)   # -1: pruned
  source[:, :k] = np.arange(k)        # every output token holds an input
  x = rng.normal(size=(b, k, 5)).astype(np.float32)
  size = rng.integers(1, 5, (b, k, 1)).astype(np.float32)
  ids = rng.integers(0, 100, (b, k)).astype(np.int32)
  got = jax.jit(restore)(source, x, jnp.asarray(x, jnp.bfloat16), size, ids)
  dense = tokens.dense_source(source, k)
  want = jax.jit(_dense_restore)(dense, x, jnp.asarray(x, jnp.bfloat16), size,
                                 ids)
  for g, w in zip(got, want):
    assert g.dtype == w.dtype
    np.testing.assert_array_equal(np.asarray(g, np.float32),
                                  np.asarray(w, np.float32))
  # A plain loop over the inputs.
  plain = np.zeros((b, n0, 5), np.float32)
  for i in range(b):
    for j in range(n0):
      if source[i, j] >= 0:
        plain[i, j] = x[i, source[i, j]]
  np.testing.assert_array_equal(got[0], plain)


@pytest.mark.parametrize("method", ["tome", "topk"])
def test_restore_tokens_matches_the_dense_path_in_the_vit(method):
  """MAE's path: every output token copied back to the inputs it holds,
  what the one-hot map gives. (The two applies are separate fusions, which
  XLA may round differently in the last bit; a wrong copy is off by O(1).)"""
  model = _vit(method, ("keep", KEEP))
  images, params = _images_and_params()

  @jax.jit
  def both(p, x):
    merged = model.apply({"params": p}, x, return_source=True)
    restored = model.apply({"params": p}, x, restore_tokens=True)
    return merged, restored

  merged, restored = both(params, images)
  dense = tokens.dense_source(merged["source"], KEEP[-1])
  want_x, want_size = _dense_restore(dense, merged["tokens"], merged["size"])
  np.testing.assert_allclose(restored["tokens"], want_x, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(restored["size"], want_size)


def _token_maps_in(jaxpr, n0, counts):
  """Shapes anywhere in `jaxpr` (kernels included) that span the N0 input
  tokens and another token axis: a dense source map, or any N0 x N0."""
  found = []
  for eqn in jaxpr.eqns:
    for var in list(eqn.invars) + list(eqn.outvars):
      shape = tuple(getattr(var.aval, "shape", ()))
      if n0 in shape and sum(d in counts for d in shape) >= 2:
        found.append(shape)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found += _token_maps_in(sub.jaxpr, n0, counts)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found += _token_maps_in(sub, n0, counts)
  return found


@pytest.mark.parametrize("method", ["tome", "topk"])
def test_no_dense_source_map_for_a_long_sequence(method):
  """4,096 patches of 1 pixel: source tracing and restore_tokens keep an
  O(N0) index map; no [B, K, N0] (nor N0 x N0) buffer exists."""
  side, n0 = 64, 64 * 64 + 1
  keep = (3073, 2049)
  c = _model_config(method, ("keep", keep), attn_impl="interpret")
  c.patch_size = 1
  model = build.vit(c, num_tokens=n0)
  images = jnp.zeros((2, side, side, 1))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  counts = {n0, *keep}

  def fwd(p, x):
    out = model.apply(p, x, return_source=True)
    restored = model.apply(p, x, restore_tokens=True)
    return out["source"], restored["tokens"]

  jaxpr = jax.make_jaxpr(fwd)(params, images)
  assert _token_maps_in(jaxpr.jaxpr, n0, counts) == []
  source_shape = jax.eval_shape(fwd, params, images)[0]
  assert source_shape.shape == (2, n0) and source_shape.dtype == jnp.int32
  # The check bites: the one-hot map of the same run is such a buffer.
  dense = jax.make_jaxpr(lambda p, x: tokens.dense_source(
      fwd(p, x)[0], keep[-1]))(params, images)
  assert (2, keep[-1], n0) in _token_maps_in(dense.jaxpr, n0, counts)


def test_proportional_attention_defaults_follow_the_official_code():
  """ToMe's apply_patch: on off the shelf, off for training and MAE models;
  ATC on; the others off. An explicit prop_attn wins."""
  def plan(method, **kw):
    m = build.with_token_reduction(_model_config(), method, 2, **kw)
    return build.token_reduction(m, N0).prop_attn
  assert plan("tome") is False
  assert plan("tome", off_the_shelf=True) is True
  assert plan("tome", prop_attn=True) is True
  assert plan("atc") is True and plan("atc", off_the_shelf=True) is True
  for method in ("pitome", "topk", "evit", "dart", "gtp"):
    assert plan(method, off_the_shelf=True) is False, method


def _official_attention_numpy(x, params, num_heads, sparsity):
  """Ackesnal/GTP-ViT `models_v3.py`, `Attention.forward` (eval, no token
  scales): fused qkv, softmax(q k^T / sqrt(hd)), with sparsity < 1 each
  head's entries below its k-th smallest, k = int(N*N*(1 - sparsity)), set
  to 0 (no renormalization), then attn @ v and the output projection."""
  x = np.asarray(x, np.float64)
  b, n, c = x.shape
  hd = c // num_heads
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  qkv = (x @ p["qkv"]["kernel"].reshape(c, -1) + p["qkv"]["bias"].reshape(-1)).reshape(
      b, n, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv
  attn = (q * hd ** -0.5) @ k.transpose(0, 1, 3, 2)
  attn = np.exp(attn - attn.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  if sparsity < 1:
    kth = int(n * n * (1 - sparsity))
    threshold = np.sort(attn.reshape(b, num_heads, -1), -1)[..., kth - 1]
    attn[attn < threshold[..., None, None]] = 0.0
  out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
  return out @ p["proj"]["kernel"] + p["proj"]["bias"], attn


def test_gtp_sparsity_edits_the_attention_as_the_official_code():
  from maskmodel.models.vit import MultiHeadAttention
  plan = build.token_reduction(
      _model_config("gtp", ("keep", KEEP), options={"sparsity": 0.6}), N0)
  assert plan.needs == ("attn",)
  assert build.token_reduction(_model_config("gtp", ("keep", KEEP)),
                               N0).edit_attn is None
  x = jax.random.normal(jax.random.PRNGKey(3), (2, N0, 16))
  mha = MultiHeadAttention(num_heads=2)
  params = jax.jit(mha.init)(jax.random.PRNGKey(4), x)["params"]
  params = jax.tree.map(   # non-zero biases, so they are checked too
      lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(5), a.shape),
      params)
  out, _, probs = jax.jit(lambda p, x: mha.apply(
      {"params": p}, x, with_probs=True, edit_probs=plan.edit_attn))(params, x)
  want, want_attn = _official_attention_numpy(x, params, 2, 0.6)
  np.testing.assert_allclose(np.asarray(probs), want_attn, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)
  assert (np.asarray(probs) == 0).mean() > 0.3


def test_gtp_sparsity_reaches_every_block_and_is_off_by_default():
  # Block 0 keeps all tokens: its attention is sparsified all the same.
  keep = [N0, 11]
  dense = _vit("gtp", ("keep", keep))
  off = _vit("gtp", ("keep", keep), options={"sparsity": 1.0})
  sparse = _vit("gtp", ("keep", keep), options={"sparsity": 0.6})
  images, params = _images_and_params()

  @jax.jit
  def block0(p, x):
    return [m.apply({"params": p}, x, capture_intermediates=True,
                    mutable=["intermediates"])
            for m in (dense, off, sparse)]

  (o_dense, i_dense), (o_off, _), (o_sparse, i_sparse) = block0(params,
                                                                images)
  np.testing.assert_array_equal(o_off["logits"], o_dense["logits"])
  first = [i["intermediates"]["encoder"]["block_0"]["__call__"][0][0]
           for i in (i_dense, i_sparse)]
  assert first[0].shape == first[1].shape == (2, N0, 16)
  assert not np.allclose(first[0], first[1], atol=1e-6)
  assert o_sparse["tokens"].shape == (2, 11, 16)
  assert np.isfinite(o_sparse["logits"]).all()
