"""Properties of the token-reduction library (maskmodel.tokens)."""
import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_experiment, xla_env

from maskmodel import config as config_lib
from maskmodel import tokens as T
from maskmodel.kernels import attention
from maskmodel.models import build
from maskmodel.tokens import flops as F
from maskmodel.tokens import visualize as V

METHODS = sorted(T.REDUCERS)
# Methods whose output is a size-weighted sum of inputs (total mass kept).
MASS_CONSERVING = ["atc", "pitome", "tome"]


def _inputs(seed=0, b=2, n=17, d=8):
  """Random tokens and the attention statistics a ViT layer would give."""
  kx, kq = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.normal(kx, (b, n, d))
  attn = jax.nn.softmax(2.0 * jax.random.normal(kq, (b, n, n)), axis=-1)
  return dict(x=x, metric=x + 0.1, keys=(x + 0.1)[:, :, None],
              cls_attn=attn[:, 0], key_mass=attn.sum(1), attn=attn)


def _call(method, inp, keep, size=None, source=None, **kw):
  """`reduce` as block 1 of 4 (pitome and zero_tprune follow the depth)."""
  return T.reduce(method, inp["x"], size, keep=keep, metric=inp["metric"],
                  keys=inp.get("keys"), cls_attn=inp["cls_attn"],
                  key_mass=inp["key_mass"],
                  attn=inp["attn"], source=source, layer=1, depth=4, **kw)


@functools.partial(jax.jit, static_argnums=(0, 2, 5))
def _reduce_jit(method, inp, keep, size, source, options):
  return _call(method, inp, keep, size, source, **dict(options))


def _reduce(method, inp, keep, size=None, source=None, **kw):
  """`reduce` on a dict of inputs, jitted (one compile per configuration)."""
  return _reduce_jit(method, inp, keep, size, source, tuple(sorted(kw.items())))


def _dense(out):
  """The one-hot `[B, K, N0]` source map of a `Reduced`'s index map."""
  return np.asarray(T.dense_source(out.source, out.x.shape[1]))


def _kept_index(out):
  """Input index held by each output token of a pruning method, `[B, K]`."""
  return _dense(out).argmax(-1)


# ----------------------------------------------------------------- ToMe ----

def _tome_numpy(metric, x, size, r, class_token):
  """Plain-numpy port of the reference ToMe bipartite_soft_matching."""
  metric = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
  a, b = metric[:, ::2], metric[:, 1::2]
  scores = a @ b.transpose(0, 2, 1)
  if class_token:
    scores[:, 0, :] = -np.inf
  node_max, node_idx = scores.max(-1), scores.argmax(-1)
  edge_idx = np.argsort(-node_max, axis=-1, kind="stable")
  unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
  dst_idx = np.take_along_axis(node_idx, src_idx, axis=1)
  if class_token:
    unm_idx = np.sort(unm_idx, axis=-1)

  def merge(v, mode):
    src, dst = v[:, ::2], v[:, 1::2].copy()
    unm = np.take_along_axis(src, unm_idx[..., None], axis=1)
    src = np.take_along_axis(src, src_idx[..., None], axis=1)
    for bi in range(v.shape[0]):
      for i in range(r):
        j = dst_idx[bi, i]
        if mode == "sum":
          dst[bi, j] += src[bi, i]
        else:
          dst[bi, j] = np.maximum(dst[bi, j], src[bi, i])
    return np.concatenate([unm, dst], axis=1)

  n = x.shape[1]
  source = merge(np.broadcast_to(np.eye(n), (x.shape[0], n, n)), "amax")
  new_size = merge(size, "sum")
  return merge(x * size, "sum") / new_size, new_size, source


@functools.partial(jax.jit, static_argnums=(3, 4))
def _tome_step(metric, x, size, r, class_token=False):
  """Jitted merge_wavg, merge_source and unmerge of one ToMe step."""
  merge, unmerge = T.bipartite_soft_matching(metric, r,
                                             class_token=class_token)
  merged, new_size = T.merge_wavg(merge, x, size)
  source = T.merge_source(unmerge, T.init_source(x), merged.shape[1])
  return (merged, new_size, T.dense_source(source, merged.shape[1]),
          unmerge(merged))


@pytest.mark.parametrize("class_token", [False, True])
@pytest.mark.parametrize("n,r", [(16, 5), (17, 8), (9, 1)])
def test_tome_matches_numpy_reference(class_token, n, r):
  rng = np.random.default_rng(n + r + class_token)
  metric = rng.normal(size=(3, n, 6)).astype(np.float32)
  x = rng.normal(size=(3, n, 5)).astype(np.float32)
  size = rng.integers(1, 4, size=(3, n, 1)).astype(np.float32)
  want_x, want_size, want_source = _tome_numpy(metric, x, size, r, class_token)
  got_x, got_size, got_source, _ = _tome_step(metric, x, size, r,
                                              class_token)
  np.testing.assert_allclose(got_x, want_x, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got_size, want_size)
  np.testing.assert_array_equal(got_source, want_source)


def test_tome_matching_goes_through_the_kernel_entry_point():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 17, 8))
  source = T.init_source(x)
  ref = T.reduce("tome", x, keep=10, source=source, impl="xla")
  pallas = T.reduce("tome", x, keep=10, source=source, impl="interpret")
  for got, want in zip(pallas, ref):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="impl"):
    T.reduce("tome", x, keep=10, impl="cuda")


def _duplicated_tokens(seed=0, b=2, pairs=4, singles=4, d=8):
  """Tokens 2i and 2i+1 are identical for i < pairs; the rest are distinct."""
  v = jax.random.normal(jax.random.PRNGKey(seed), (b, pairs + singles, d))
  return jnp.concatenate([jnp.repeat(v[:, :pairs], 2, axis=1),
                          v[:, pairs:]], axis=1)


def test_tome_merging_duplicates_loses_nothing():
  x = _duplicated_tokens()
  merged, size, _, restored = _tome_step(x, x, T.init_size(x), 4)
  assert merged.shape[1] == x.shape[1] - 4
  # The four merged tokens have size 2 and equal their (identical) parts.
  assert sorted(np.asarray(size[0, :, 0]).tolist()) == [1.0] * 4 + [2.0] * 4
  np.testing.assert_allclose(restored, x, rtol=1e-6, atol=1e-6)


def test_tome_unmerge_restores_every_source_position():
  inp = _inputs(seed=3, n=20)
  x = inp["x"]
  merged, _, source, restored = _tome_step(inp["metric"], x, T.init_size(x), 7)
  # Each input position gets back the value of the token that holds it.
  np.testing.assert_allclose(
      restored, jnp.einsum("bkj,bkd->bjd", source, merged), rtol=1e-6)
  # Positions that merged with nothing get their own input value back.
  alone = np.asarray(jnp.einsum("bkj,bk->bj", source, source.sum(-1))) == 1
  np.testing.assert_allclose(np.asarray(restored)[alone], np.asarray(x)[alone],
                             rtol=1e-6)
  assert (~alone).sum() >= 7   # and some did merge


def test_proportional_attention_over_merged_duplicates():
  x = _duplicated_tokens(seed=1, pairs=4, singles=4, d=16)
  b, n, d = x.shape
  heads, hd = 2, 8
  wk, wv = jax.random.normal(jax.random.PRNGKey(7), (2, d, heads * hd))
  q = jax.random.normal(jax.random.PRNGKey(8), (b, 5, heads, hd))
  merged, size, _, _ = _tome_step(x, x, T.init_size(x), 4)
  proj = lambda t, w: (t @ w).reshape(t.shape[0], t.shape[1], heads, hd)
  attend = jax.jit(lambda t, bias: attention(q, proj(t, wk), proj(t, wv),
                                             bias=bias))
  full = attend(x, None)
  prop = attend(merged, jnp.log(size[..., 0]))
  plain = attend(merged, None)
  np.testing.assert_allclose(prop, full, rtol=1e-5, atol=1e-5)
  assert not np.allclose(plain, full, atol=1e-3)   # the bias is what fixes it


def test_tome_r_too_large_warns_and_clips():
  inp = _inputs(n=11)
  with pytest.warns(UserWarning, match="clipping r=9 to 5"):
    merge, _ = T.bipartite_soft_matching(inp["metric"], 9, class_token=True)
  assert merge(inp["x"]).shape[1] == 11 - 5
  with pytest.warns(UserWarning, match="clipping"):
    out = T.reduce("tome", inp["x"], keep=2, metric=inp["metric"])
  assert out.x.shape[1] == 6
  with pytest.warns(UserWarning, match="PiToMe.*clipping r=7 to 5"):
    out = T.pitome(inp["x"], None, T.Stats(metric=inp["metric"]), keep=11 - 7,
                   margin=0.5, variant="pitome")
  assert out.x.shape[1] == 11 - 5


# ------------------------------------------------------------- all methods --

@pytest.mark.parametrize("method", METHODS)
def test_class_token_is_never_reduced(method):
  inp = _inputs(seed=2)
  x = inp["x"].at[:, 0].set(inp["x"][:, 1])          # tempt a merge with 1
  x = x.astype(jnp.bfloat16)                         # and low precision
  inp = dict(inp, x=x, metric=x, keys=x[:, :, None],
             cls_attn=inp["cls_attn"].at[:, 0].set(0.0),
             key_mass=inp["key_mass"].at[:, 0].set(0.0),
             attn=inp["attn"].at[:, :, 0].set(0.0))
  out = _reduce(method, inp, keep=9, source=T.init_source(x))
  assert out.x.dtype == jnp.bfloat16 and out.size.dtype == jnp.float32
  np.testing.assert_array_equal(out.x[:, 0], x[:, 0])
  np.testing.assert_array_equal(out.size[:, 0, 0], 1.0)
  assert out.source.dtype == jnp.int32 and out.source.shape == (2, 17)
  np.testing.assert_array_equal(out.source[:, 0], 0)   # [CLS] holds itself
  src = _dense(out)
  np.testing.assert_array_equal(
      src[:, 0], np.broadcast_to(np.eye(x.shape[1])[0], (2, x.shape[1])))
  assert float(np.abs(src[:, 1:, 0]).max()) == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_sizes_and_sources_stay_consistent(method):
  inp = _inputs(seed=4, n=17)   # 16 patches: gtp's grid graph needs a square
  size = jnp.asarray(np.random.default_rng(0).integers(1, 5, (2, 17, 1)),
                     jnp.float32)
  out = _reduce(method, inp, keep=9, size=size,
                source=T.init_source(inp["x"]))
  assert out.x.shape == (2, 9, 8) and out.size.shape == (2, 9, 1)
  assert out.source.shape == (2, 17)
  assert ((-1 <= out.source) & (out.source < 9)).all()
  src = _dense(out)
  assert set(np.unique(src)) <= {0.0, 1.0}
  assert (src.sum(1) <= 1).all()           # an input is held at most once
  held = np.einsum("bkj,bjo->bko", src, np.asarray(size))
  if T.REDUCERS[method].conserves_size:
    np.testing.assert_allclose(out.size.sum((1, 2)), size.sum((1, 2)),
                               rtol=1e-6)
  if method != "gtp":                       # gtp spreads sizes fractionally
    np.testing.assert_allclose(out.size, held, rtol=1e-6)
  if method in MASS_CONSERVING:
    np.testing.assert_allclose((out.size * out.x).sum(1),
                               (size * inp["x"]).sum(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_runs_under_jit_and_vmap(method):
  inp = _inputs(seed=5)
  source = T.init_source(inp["x"])
  fn = jax.jit(lambda i, s: _call(method, i, keep=9, source=s))
  jitted = fn(inp, source)
  assert jitted.x.shape == (2, 9, 8) and jitted.source.shape == (2, 17)
  other = _inputs(seed=6)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), inp, other)
  mapped = jax.vmap(fn, in_axes=(0, None))(stacked, source)
  for i, single in enumerate((inp, other)):
    want = fn(single, source)
    for got, w in zip(mapped, want):
      if w is not None:     # graph: only gtp carries one
        np.testing.assert_allclose(got[i], w, rtol=1e-5, atol=1e-6)
  # Differentiable in the tokens (selection itself carries no gradient).
  grad = jax.jit(jax.grad(
      lambda x: (fn(dict(inp, x=x), source).x ** 2).sum()))(inp["x"])
  assert np.isfinite(grad).all() and float(jnp.abs(grad).sum()) > 0


def test_every_method_on_eight_simulated_devices():
  script = textwrap.dedent("""
      import numpy as np, jax, jax.numpy as jnp
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from maskmodel import tokens as T
      assert jax.device_count() == 8, jax.devices()
      mesh = Mesh(np.array(jax.devices()), ("data",))
      kx, kq = jax.random.split(jax.random.PRNGKey(0))
      x = jax.random.normal(kx, (8, 17, 8))
      attn = jax.nn.softmax(2.0 * jax.random.normal(kq, (8, 17, 17)), -1)
      inp = dict(x=x, metric=x + 0.1, keys=(x + 0.1)[:, :, None],
                 cls_attn=attn[:, 0],
                 key_mass=attn.sum(1), attn=attn, source=T.init_source(x))
      shard = lambda a: jax.device_put(a, NamedSharding(
          mesh, P("data", *([None] * (a.ndim - 1)))))
      sharded = jax.tree.map(shard, inp)
      for method in sorted(T.REDUCERS):
        f = lambda i: T.reduce(method, i["x"], keep=9, metric=i["metric"],
                               keys=i["keys"], cls_attn=i["cls_attn"],
                               key_mass=i["key_mass"],
                               attn=i["attn"], source=i["source"],
                               layer=1, depth=4)
        out = jax.jit(f)(sharded)
        assert out.x.sharding.is_equivalent_to(
            NamedSharding(mesh, P("data", None, None)), 3), out.x.sharding
        # Same computation on one device, one example at a time.
        one = jax.jit(jax.vmap(lambda i: f(jax.tree.map(lambda a: a[None], i)),
                               out_axes=1))
        want = one(jax.device_put(inp, jax.devices()[0]))
        for got, w in zip(out, want):
          if w is None:         # graph: only gtp carries one
            continue
          np.testing.assert_allclose(got, np.asarray(w)[0], rtol=1e-5,
                                     atol=1e-6)
        print("ok", method)
      """)
  env = xla_env(8, JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=root,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == [w for m in METHODS for w in ("ok", m)]


# ----------------------------------------------------------- bad inputs ----

def test_bad_inputs_raise_clear_errors():
  inp = _inputs(n=9)
  with pytest.raises(ValueError, match="valid choices are .*'tome'"):
    _reduce("tomee", inp, keep=4)
  with pytest.raises(ValueError, match="valid choices"):
    T.get_reducer("nope")
  for bad in (0, -3):
    with pytest.raises(ValueError, match="positive int"):
      _reduce("topk", inp, keep=bad)
  with pytest.raises(ValueError, match="exceeds the 9 tokens"):
    _reduce("atc", inp, keep=10)
  with pytest.raises(ValueError, match="keep >= 2"):
    _reduce("divprune", inp, keep=1)
  with pytest.raises(TypeError, match="static Python int"):
    _reduce("dart", inp, keep=4.0)
  with pytest.raises(TypeError, match="static Python int"):
    jax.jit(lambda k: _call("dart", inp, keep=k))(4)
  with pytest.raises(ValueError, match="needs cls_attn"):
    T.reduce("topk", inp["x"], keep=4)
  with pytest.raises(ValueError, match="needs attn"):
    T.reduce("zero_tprune", inp["x"], keep=4)
  with pytest.raises(TypeError, match="accepts \\['linkage'\\]"):
    _reduce("atc", inp, keep=4, linkag="single")
  with pytest.raises(ValueError, match="linkage='ward' is unknown"):
    _reduce("atc", inp, keep=4, linkage="ward")
  with pytest.raises(ValueError, match="mode='max' is unknown"):
    T.bipartite_soft_matching(inp["metric"], 2)[0](inp["x"], mode="max")
  # keep == N is the identity; get_reducer binds the method.
  same = T.get_reducer("tome")(inp["x"], keep=9)
  np.testing.assert_array_equal(same.x, inp["x"])


# ----------------------------------------------------------- schedules -----

def test_schedules():
  # ToMe's decreasing schedule, parse_r((16, -1)): 2r down to 0.
  assert T.decreasing_r(16, 12) == [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2,
                                    0]
  assert T.inflected_r(16, -0.5, 12) == [24, 22, 21, 19, 18, 16, 15, 13, 12,
                                         10, 9, 8]
  # Constant r=16 on ViT-B/16: the cap binds only in the last layer.
  assert T.tokens_per_layer(16, 12, 197) == [197 - 16 * (i + 1)
                                             for i in range(11)] + [11]
  assert T.tokens_per_layer("decreasing:16", 3, 197) == [165, 149, 149]
  assert T.tokens_per_layer(("decreasing", 16), 3, 197) == [165, 149, 149]
  assert T.tokens_per_layer(("inflect", 16, -0.5), 3, 197) == [173, 157, 149]
  assert T.tokens_per_layer("inflect:16,-0.5", 3, 197) == [173, 157, 149]
  # ToMe's r-list: missing layers remove nothing.
  assert T.tokens_per_layer(("r", [10, 5]), 3, 197) == [187, 182, 182]
  assert T.tokens_per_layer("r:10,5", 3, 197) == [187, 182, 182]
  assert T.tokens_per_layer(("r", 16), 2, 197) == T.tokens_per_layer(16, 2,
                                                                     197)
  assert T.tokens_per_layer("keep:150,100,100", 3, 197) == [150, 100, 100]
  # Bipartite cap: at most half of the non-class tokens per layer.
  assert T.tokens_per_layer(("constant", 40), 3, 65) == [33, 17, 9]
  assert T.tokens_per_layer(40, 2, 65, bipartite=False) == [25, 2]
  assert T.tokens_per_layer(("rate", 0.7, (1, 2)), 4, 197) == [197, 139, 98,
                                                               98]
  assert T.tokens_per_layer(("keep", [150, 100, 100]), 3, 197) == [150, 100,
                                                                    100]
  with pytest.raises(ValueError, match="non-increasing"):
    T.tokens_per_layer(("keep", [150, 160, 100]), 3, 197)
  with pytest.raises(ValueError, match="one per layer"):
    T.tokens_per_layer(("keep", [150]), 3, 197)
  with pytest.raises(ValueError, match="unknown"):
    T.tokens_per_layer("fast:3", 3, 197)
  # A bare sequence is refused: (11, 7) could be a keep-list, (r, inflect)
  # or ToMe's r-list.
  for bare in ((11, 7), [150, 100, 100], (16, -0.5)):
    with pytest.raises(ValueError, match="ambiguous.*'keep'"):
      T.tokens_per_layer(bare, 3, 197)
  with pytest.raises(ValueError, match=r"inflect=2.0 must be in \[-1, 1\]"):
    T.tokens_per_layer(("inflect", 8, 2), 3, 197)
  with pytest.raises(ValueError, match="at most one per layer"):
    T.tokens_per_layer(("r", [1, 1, 1, 1]), 3, 197)


# ---------------------------------------------------------- Top-k / EViT ---

def test_topk_keeps_exactly_the_top_k():
  inp = _inputs(seed=9, n=25)
  scores = np.asarray(inp["cls_attn"])
  src = T.init_source(inp["x"])
  out = _reduce("topk", inp, keep=10, source=src)
  for b in range(2):
    want = {0} | set((np.argsort(-scores[b, 1:])[:9] + 1).tolist())
    assert set(_kept_index(out)[b].tolist()) == want
  # EViT: keep - 2 attentive tokens plus one fused token of all the rest,
  # weighted by the raw [CLS] attention as in the official code.
  fused = _reduce("evit", inp, keep=10, source=src)
  for b in range(2):
    top = np.argsort(-scores[b, 1:])[:8] + 1
    rest = np.setdiff1d(np.arange(1, 25), top)
    assert set(_kept_index(fused)[b, :9].tolist()) == {0} | set(
        top.tolist())
    assert np.flatnonzero(_dense(fused)[b, 9]).tolist() == rest.tolist()
    w = scores[b, rest]
    np.testing.assert_allclose(fused.x[b, 9], w @ np.asarray(inp["x"][b, rest]),
                               rtol=1e-5, atol=1e-6)
    assert float(fused.size[b, 9, 0]) == len(rest)


# -------------------------------------------------------------- PiToMe -----

def _pitome_numpy(metric, x, r, margin, class_token):
  p = int(class_token)
  m = metric[:, p:] / np.linalg.norm(metric[:, p:], axis=-1, keepdims=True)
  sim = m @ m.transpose(0, 2, 1)
  f = np.where(sim >= margin, sim, np.exp(np.minimum(sim - margin, 0)) - 1)
  order = np.argsort(-f.mean(-1), axis=-1, kind="stable")
  outs = []
  for b in range(x.shape[0]):
    xb = x[b, p:]
    a_idx, b_idx = order[b, :2 * r:2], order[b, 1:2 * r:2]
    dst = sim[b][np.ix_(a_idx, b_idx)].argmax(-1)
    merged = [[xb[j]] for j in b_idx]
    for i, t in zip(a_idx, dst):
      merged[t].append(xb[i])
    tokens = ([x[b, 0]] if class_token else []) + [
        xb[j] for j in order[b, 2 * r:]] + [np.mean(g, 0) for g in merged]
    outs.append(np.stack(tokens))
  return np.stack(outs)


@pytest.mark.parametrize("class_token", [False, True])
def test_pitome_matches_numpy_and_protects_low_energy_tokens(class_token):
  rng = np.random.default_rng(11)
  center = rng.normal(size=8)
  cluster = center + 0.05 * rng.normal(size=(2, 10, 8))     # high energy
  distinct = rng.normal(size=(2, 7, 8))                     # low energy
  x = np.concatenate([distinct[:, :1], cluster, distinct[:, 1:]], 1)
  x = x.astype(np.float32)
  r = 4
  # Restricted merging with the paper's Eq. 4 energy (the port below).
  out = T.pitome(jnp.asarray(x), None, T.Stats(metric=jnp.asarray(x)),
                 keep=x.shape[1] - r, margin=0.5,
                 variant="pitome", energy="paper", class_token=class_token,
                 source=T.init_source(jnp.asarray(x)))
  np.testing.assert_allclose(out.x, _pitome_numpy(x, x, r, 0.5, class_token),
                             rtol=1e-5, atol=1e-6)
  for b in range(2):
    src, size = _dense(out)[b], np.asarray(out.size[b, :, 0])
    # Merged tokens hold only inputs of the high-energy cluster (1..10) ...
    assert set(np.flatnonzero(src[size > 1].sum(0)).tolist()) <= set(
        range(1, 11))
    # ... and every low-energy input survives alone and unchanged.
    for j in [0] + list(range(11, 17)):
      row = np.flatnonzero(src[:, j])
      assert len(row) == 1 and size[row[0]] == 1
      np.testing.assert_array_equal(out.x[b, row[0]], x[b, j])


# ------------------------------------------------------------ DivPrune -----

def _min_pairwise_distance(v, idx):
  u = v[idx] / np.linalg.norm(v[idx], axis=-1, keepdims=True)
  d = 1.0 - u @ u.T
  return d[~np.eye(len(idx), dtype=bool)].min()


def _divprune_numpy(v, k):
  """The official greedy, ported from `DivPrune` in vbdi/divprune's LLaVA
  `llava_arch.py`: cosine distance d = 1 - cos; the first pick is the
  argmax of each column's second-smallest distance (its nearest other
  token), then each pick the argmax over tokens of the minimum distance to
  the picked rows (the paper's Eq. 3)."""
  u = v / np.linalg.norm(v, axis=-1, keepdims=True)
  d = 1.0 - u @ u.T
  picked = [int(np.argmax(np.sort(d, axis=0)[1]))]
  for _ in range(k - 1):
    picked.append(int(np.argmax(d[picked].min(axis=0))))
  return picked


def test_divprune_is_more_diverse_than_random_subsets():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(3, 48, 6)).astype(np.float32)
  idx = np.asarray(T.max_min_select(jnp.asarray(v), 10))
  for b in range(3):
    assert idx[b].tolist() == _divprune_numpy(v[b].astype(np.float64), 10)
    ours = _min_pairwise_distance(v[b], idx[b])
    rand = [_min_pairwise_distance(v[b], rng.choice(48, 10, replace=False))
            for _ in range(200)]
    assert ours >= max(rand), (ours, max(rand))
  # Exact duplicates are never selected twice.
  dup = np.repeat(v[:, :4], 6, axis=1)
  idx = np.asarray(T.max_min_select(jnp.asarray(dup), 6))
  for b in range(3):
    assert len({tuple(dup[b, i]) for i in idx[b][:4]}) == 4
    assert len(set(idx[b].tolist())) == 6


# ---------------------------------------------------------------- DART -----

def test_dart_keeps_pivots_and_drops_their_duplicates():
  d = 12
  eye = np.eye(d, dtype=np.float32)
  pivots = 10.0 * eye[:2]                       # largest key norms
  dups = np.stack([eye[0], eye[0], eye[1], eye[1] + 0.01 * eye[9]])
  distinct = eye[2:8] - 0.1 * (eye[0] + eye[1])  # anti-aligned with pivots
  x = np.concatenate([np.ones((1, d), np.float32), pivots, dups, distinct])
  x = jnp.asarray(x[None])
  for selection in ("per_pivot", "max"):
    out = T.dart(x, None, T.Stats(keys=x), keep=9, num_pivots=2,
                 selection=selection,
                 class_token=True, source=T.init_source(x))
    kept = set(_kept_index(out)[0].tolist())
    assert kept == {0, 1, 2} | set(range(7, 13)), (selection, kept)


# ----------------------------------------------------------------- ATC -----

def _angles_to_tokens(deg):
  t = np.deg2rad(np.asarray(deg, np.float32))
  return jnp.asarray(np.stack([np.cos(t), np.sin(t)], -1)[None])


def test_atc_matches_hand_computed_clusters():
  # Unit vectors at these angles; cosine distance grows with the angle gap.
  # Gaps: ab 14, bc 38, cd 12, de 8, ef 5, df 13, ce 20, cf 25 degrees.
  # All linkages first join e-f (5), then:
  #  single:   d-{ef} = min(8, 13) = 8 joins; c-{def} = min(12, ..) = 12 beats
  #            a-b = 14  -> {a} {b} {c d e f}
  #  complete: d-{ef} = max(8, 13) = 13 loses to c-d = 12; then a-b = 14
  #            beats {cd}-{ef} = 25 -> {a b} {c d} {e f}
  #  average:  d-{ef} = mean(1-cos 8, 1-cos 13) = 0.0177 < 1-cos 12 = 0.0219
  #            joins; c-{def} = mean(1-cos 12, 20, 25) = 0.0586 > 1-cos 14 =
  #            0.0297 so a-b joins -> {a b} {c} {d e f}
  metric = _angles_to_tokens([0, 14, 52, 64, 72, 77])
  want = {"single": [0, 1, 2, 2, 2, 2], "complete": [0, 0, 1, 1, 2, 2],
          "average": [0, 0, 1, 2, 2, 2]}
  for linkage, labels in want.items():
    got = T.agglomerative_labels(metric, 3, linkage)
    assert np.asarray(got[0]).tolist() == labels, linkage
  # Through atc with a class token: features are size-weighted cluster means.
  x = jnp.concatenate([jnp.full((1, 1, 2), 9.0), metric], axis=1)
  size = jnp.asarray([[1, 1, 1, 2, 1, 1, 3]], jnp.float32)[..., None]
  out = T.atc(x, size, T.Stats(metric=x), keep=4, linkage="complete")
  np.testing.assert_allclose(out.size[0, :, 0], [1, 2, 3, 4])
  np.testing.assert_allclose(out.x[0, 3],
                             (x[0, 5] * 1 + x[0, 6] * 3) / 4, rtol=1e-6)


def test_atc_agrees_with_scipy_on_random_data():
  hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
  from scipy.spatial.distance import squareform
  rng = np.random.default_rng(5)
  v = rng.normal(size=(4, 14, 5)).astype(np.float64)
  u = v / np.linalg.norm(v, axis=-1, keepdims=True)
  for linkage in T.LINKAGES:
    got = np.asarray(T.agglomerative_labels(jnp.asarray(v, jnp.float32), 5,
                                            linkage))
    for b in range(4):
      dist = np.clip(1.0 - u[b] @ u[b].T, 0, None)
      z = hierarchy.linkage(squareform(dist, checks=False), linkage)
      want = hierarchy.fcluster(z, 5, "maxclust")
      same_got = got[b][:, None] == got[b][None, :]
      same_want = want[:, None] == want[None, :]
      assert (same_got == same_want).all(), (linkage, b, got[b], want)


# --------------------------------------------------------- Zero-TPrune -----

def test_weighted_pagerank_is_the_stationary_distribution():
  rng = np.random.default_rng(2)
  a = rng.random((2, 12, 12)) ** 3
  a = a / a.sum(-1, keepdims=True)
  s = np.asarray(T.weighted_pagerank(jnp.asarray(a, jnp.float32), 100))
  for b in range(2):
    w, vecs = np.linalg.eig(a[b].T)
    stat = np.real(vecs[:, np.argmax(np.real(w))])
    np.testing.assert_allclose(s[b], stat / stat.sum(), rtol=1e-4, atol=1e-6)
  # One graph per head.
  heads = jnp.stack([jnp.asarray(a, jnp.float32)] * 3, axis=1)
  np.testing.assert_allclose(T.weighted_pagerank(heads, 100),
                             np.stack([s] * 3, axis=1), rtol=1e-6)


def test_zero_tprune_importance_then_similarity():
  inp = _inputs(seed=12, n=21)
  importance = np.asarray(T.weighted_pagerank(inp["attn"], 30))
  src = T.init_source(inp["x"])
  only_importance = _reduce("zero_tprune", inp, keep=9, source=src,
                            similarity_fraction=0.0)
  for b in range(2):
    want = {0} | set((np.argsort(-importance[b, 1:])[:8] + 1).tolist())
    assert set(_kept_index(only_importance)[b].tolist()) == want
  # S-stage: a less important token that duplicates an important one goes,
  # although a lower-importance distinct token would go in the I-stage.
  n = 9
  attn = np.full((1, n, n), 1e-3, np.float32)
  attn[:, :, 1:5] = 1.0                          # tokens 1-4 matter most
  attn[:, :, 5:] = np.array([0.5, 0.4, 0.3, 0.2])
  attn /= attn.sum(-1, keepdims=True)
  x = np.eye(n, dtype=np.float32)[None]
  x[0, 5] = x[0, 2]                              # 5 duplicates important 2
  x = jnp.asarray(x)
  stats = T.Stats(metric=x, attn=jnp.asarray(attn))
  out = T.zero_tprune(x, None, stats, keep=8,
                      similarity_fraction=1.0, source=T.init_source(x))
  assert set(_kept_index(out)[0].tolist()) == {0, 1, 2, 3, 4, 6, 7, 8}
  out = T.zero_tprune(x, None, stats, keep=8,
                      similarity_fraction=0.0, source=T.init_source(x))
  assert set(_kept_index(out)[0].tolist()) == {0, 1, 2, 3, 4, 5, 6, 7}


# ----------------------------------------------------------------- GTP -----

def test_gtp_propagates_removed_tokens_to_their_neighbours():
  inp = _inputs(seed=13, n=17)
  importance = np.asarray(inp["key_mass"])
  out = _reduce("gtp", inp, keep=6, source=T.init_source(inp["x"]))
  for b in range(2):
    # The most important tokens, in rank order after [CLS] (official).
    want = [0] + (np.argsort(-importance[b, 1:])[:5] + 1).tolist()
    held = _dense(out)[b][:, want]
    np.testing.assert_array_equal(held, np.eye(6))
  # A removed token adds alpha times its graph weight to its neighbours.
  x = jnp.asarray(np.eye(7, dtype=np.float32)[None])
  graph = np.zeros((1, 6, 6), np.float32)
  graph[0, 1, 5] = graph[0, 5, 1] = 1.0          # token 6 links to token 2
  imp = jnp.asarray([[9, 6, 5, 4, 3, 2, 0]], jnp.float32)
  out = T.propagate(x, None, imp, jnp.asarray(graph), keep=6, alpha=0.1)
  sub = out.graph
  np.testing.assert_allclose(out.size[0, :, 0], [1, 1, 1.1, 1, 1, 1])
  np.testing.assert_allclose(out.x[0, 2], np.eye(7)[2] + 0.1 * np.eye(7)[6],
                             atol=1e-6)
  np.testing.assert_array_equal(sub[0], graph[0, :5, :5])


# --------------------------------------------------------------- FLOPs -----

def _plain_vit(params, images, kept, *, patch, heads):
  """A plain-jnp ViT forward that drops tokens between attention and MLP."""
  b, h, w, c = images.shape
  gh, gw = h // patch, w // patch
  p = images.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  x = p.reshape(b, gh * gw, patch * patch * c) @ params["embed"]
  x = jnp.concatenate([jnp.broadcast_to(params["cls"], (b, 1, x.shape[-1])),
                       x], axis=1)
  ln = lambda t: (t - t.mean(-1, keepdims=True)) * jax.lax.rsqrt(
      t.var(-1, keepdims=True) + 1e-6)
  width = x.shape[-1]
  for layer, n_out in zip(params["layers"], kept):
    n = x.shape[1]
    q, k, v = jnp.split(ln(x) @ layer["qkv"], 3, axis=-1)
    split = lambda t: t.reshape(b, n, heads, width // heads)
    y = attention(split(q), split(k), split(v)).reshape(b, n, width)
    x = x + y @ layer["proj"]
    # Reduce by averaging the tail into one token, so that no computed token
    # is dead code XLA could drop.
    x = jnp.concatenate([x[:, :n_out - 1],
                         x[:, n_out - 1:].mean(1, keepdims=True)], axis=1)
    x = x + jax.nn.gelu(ln(x) @ layer["fc1"]) @ layer["fc2"]
  return ln(x.mean(1)) @ params["head"]


def test_flops_match_xla_cost_analysis():
  image, patch, depth, width, mlp, heads, classes = 32, 4, 4, 192, 4.0, 3, 10
  kept = [57, 49, 41, 33]
  key = iter(jax.random.split(jax.random.PRNGKey(0), 32))
  normal = lambda *s: jax.random.normal(next(key), s) * 0.02
  hidden = int(width * mlp)
  params = {"embed": normal(patch * patch * 3, width),
            "cls": normal(1, 1, width), "head": normal(width, classes),
            "layers": [{"qkv": normal(width, 3 * width),
                        "proj": normal(width, width),
                        "fc1": normal(width, hidden),
                        "fc2": normal(hidden, width)} for _ in range(depth)]}
  images = jnp.zeros((1, image, image, 3))
  for schedule in (kept, None):
    fwd = functools.partial(_plain_vit, kept=schedule or [65] * depth,
                            patch=patch, heads=heads)
    cost = jax.jit(fwd).lower(params, images).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    ours = F.vit_flops(image, patch, depth, width, mlp, heads, schedule,
                       num_classes=classes)
    assert abs(ours - cost["flops"]) / cost["flops"] < 0.03, (ours, cost)
  full = F.vit_flops(image, patch, depth, width, mlp, heads, None)
  assert F.vit_flops(image, patch, depth, width, mlp, heads, kept) < full
  with pytest.raises(ValueError, match="non-increasing"):
    F.vit_flops(image, patch, depth, width, mlp, heads, [57, 60, 41, 33])


@pytest.mark.parametrize("method,schedule", [("none", 0), ("tome", 8),
                                             ("topk", ("keep", [60, 50, 40, 30]))])
def test_flops_match_xla_for_maskmodel_vit_with_schedule(method, schedule):
  """The counter against XLA on the real model: XLA also counts the
  elementwise ops and the reducer's own work (ToMe's similarity scores), so
  it may be a little higher, never lower."""
  m = config_lib.base_config().model
  m.patch_size, m.width, m.depth, m.num_heads = 4, 96, 4, 3
  model = build.vit(build.with_token_reduction(m, method, schedule),
                    num_classes=10, num_tokens=65)
  images = jnp.zeros((1, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
  cost = jax.jit(lambda p, x: model.apply({"params": p}, x)["logits"]).lower(
      params, images).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  keep = list(model.token_reduction.keep) if method != "none" else None
  ours = F.vit_flops(32, 4, 4, 96, 4.0, 3, keep, num_classes=10)
  assert 0.95 < ours / cost["flops"] <= 1.0, (ours, cost["flops"])


# ------------------------------------------------------------ token maps ---

def test_token_map_colours_groups_and_draws_borders(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.random((8, 8, 3)).astype(np.float32)
  # 4x4 grid of 2x2 patches; token 1 holds the left half (8 patches), the
  # other 8 patches stay alone. Column 0 is the class token.
  source = np.zeros((10, 17), np.float32)
  source[0, 0] = 1
  grid = np.arange(16).reshape(4, 4)
  source[1, 1 + grid[:, :2].ravel()] = 1
  for t, patch_id in enumerate(grid[:, 2:].ravel()):
    source[2 + t, 1 + patch_id] = 1
  out = V.token_map(image, source, 2)
  left_mean = image[:, :4].mean((0, 1))
  interior = [(1, 1), (3, 1), (4, 2), (6, 1)]    # inside the left group
  for yx in interior:
    np.testing.assert_allclose(out[yx], left_mean, rtol=1e-5)
  np.testing.assert_array_equal(out[:, 3], 0.0)   # border left|right half
  np.testing.assert_allclose(out[0, 4], image[:2, 4:6].mean((0, 1)),
                             rtol=1e-5)           # a patch left alone
  np.testing.assert_array_equal(out[1, 4], 0.0)   # border between singles
  assert (out[1:3, 1] != 0).all()                 # no border inside a group
  big = V.token_map(image, source, 2, upscale=3)
  assert big.shape == (24, 24, 3)
  np.testing.assert_allclose(big[3:6, 3:6], np.broadcast_to(out[1, 1],
                                                            (3, 3, 3)),
                             rtol=1e-5)
  path = V.save_token_map(str(tmp_path / "map.png"), image, source, 2)
  with open(path, "rb") as fh:
    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  import matplotlib.image
  assert matplotlib.image.imread(path).shape[:2] == (64, 64)   # upscale 8
  # A real ToMe source map covers every patch exactly once.
  x = jnp.asarray(rng.normal(size=(1, 17, 4)), jnp.float32)
  red = T.reduce("tome", x, keep=9, source=T.init_source(x))
  groups = V.patch_groups(red.source[0], (4, 4))
  assert (groups >= 1).all() and len(np.unique(groups)) == 8
  # The one-hot map (ToMe's form) gives the same groups.
  np.testing.assert_array_equal(
      V.patch_groups(_dense(red)[0], (4, 4)), groups)
  V.save_token_maps(str(tmp_path / "maps.png"), [image], [red.source[0]], 2)
  assert (tmp_path / "maps.png").stat().st_size > 0


def _token_reduction_runner():
  return load_experiment("token_reduction")


def test_token_reduction_experiment_fashion_mnist_data_settings():
  """`--dataset fashion_mnist` takes the data settings of
  configs/mae/fashion_mnist_vit_tiny.py and the first 10,000 / 2,000
  records; mnist5k stays as the classifier config has it."""
  run = _token_reduction_runner()
  c = run.classifier_config(3, "fashion_mnist")
  assert c.data.name == "fashion_mnist"
  assert tuple(c.data.mean) == (0.2860,) and tuple(c.data.std) == (0.3530,)
  assert c.data.flip is True and tuple(c.data.crop_scale) == (0.5, 1.0)
  assert (c.data.train_examples, c.data.test_examples) == (10_000, 2_000)
  c = run.classifier_config(3, "fashion_mnist", 500, 0)
  assert (c.data.train_examples, c.data.test_examples) == (500, 0)
  m = run.classifier_config(3)
  assert m.data.name == "mnist5k" and m.data.flip is False
  assert (m.data.train_examples, m.data.test_examples) == (0, 0)
  with pytest.raises(ValueError, match="dataset 'cifar' is unknown"):
    run.classifier_config(3, "cifar")
  for bad in (["--dataset", "cifar"], ["--train-examples", "-1"]):
    with pytest.raises(SystemExit):
      run.main(["--workdir", "unused", *bad])


def test_token_reduction_experiment_runs(tmp_path):
  """`experiments/token_reduction/run.py` end to end at toy size: one seed,
  two methods (one with the proportional-attention ablation), one r."""
  run = _token_reduction_runner()
  out = tmp_path / "out"
  run.main(["--workdir", str(tmp_path / "wd"), "--out", str(out),
            "--steps", "3", "--seeds", "0", "--methods", "tome,topk",
            "--flip-prop-attn", "topk", "--r", "8", "--batch", "100",
            "--repeats", "1", "--trained-with", "tome:8",
            "--train-examples", "512", "--test-examples", "200"])
  results = json.loads((out / "results.json").read_text())
  rows = results["rows"]
  assert [(r["method"], r["r"], r["prop_attn"]) for r in rows] == [
      ("none", 0, False), ("tome", 8, True), ("topk", 8, False),
      ("topk", 8, True)]
  for row in rows:
    assert len(row["accuracy_per_seed"]) == 1
    assert row["accuracy"] == row["accuracy_per_seed"][0]
    assert row["img_per_s"] > 0
  # Every method at r = 8 keeps the same tokens, so the FLOPs match.
  assert rows[1]["keep"] == rows[2]["keep"] == rows[3]["keep"]
  assert rows[1]["keep"][-1] < rows[0]["keep"][-1]
  assert rows[1]["gflops"] == rows[3]["gflops"] < rows[0]["gflops"]
  assert (out / "results.md").exists() and (out / "tradeoff.png").exists()
  # --trained-with: classifiers trained with ToMe r = 8 in their blocks, one
  # per seed in their own workdirs, next to the off-the-shelf ToMe row.
  [tw] = results["trained_with"]
  assert (tw["method"], tw["r"], tw["keep"]) == ("tome", 8, rows[1]["keep"])
  assert len(tw["accuracy_per_seed"]) == 1
  assert tw["off_the_shelf"] == rows[1]["accuracy"]
  assert sorted(os.listdir(tmp_path / "wd" / "tome_r8")) == ["seed0"]
  assert "| tome | 8 |" in (out / "trained_with.md").read_text()
  for bad in (["--methods", "nope"], ["--trained-with", "tome"]):
    with pytest.raises(SystemExit):
      run.main(["--workdir", str(tmp_path / "wd"), *bad])
