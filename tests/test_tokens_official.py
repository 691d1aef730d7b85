"""Parity of maskmodel's token reducers with numpy ports of their official code.

Each port below is written from the official function's steps (repository and
path cited in its docstring) in plain numpy, and maskmodel's reducer must
give the same selection, order and values on random clustered tokens
([2, 50, 16], 4 heads). Zero-TPrune has no public code; its port follows the
paper as maskmodel's docstring reads it.
"""
import importlib
import math

import jax
import numpy as np
import pytest

from maskmodel import config as mm
from maskmodel import tokens as T
from maskmodel.models import build

# The package exports functions under the modules' names.
ztp = importlib.import_module("maskmodel.tokens.zero_tprune")

B, N, D, H = 2, 50, 16, 4       # 49 patches (a 7x7 grid) + [CLS]


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _inputs(seed=0, n=N):
  """Clustered tokens, per-head keys and the attention they give."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(B, 6, D))
  x = centers[np.arange(B)[:, None], rng.integers(0, 6, (B, n))]
  x = (x + 0.3 * rng.normal(size=(B, n, D))).astype(np.float32)
  wk, wq = rng.normal(size=(2, D, H, D // H)) / math.sqrt(D)
  keys = np.einsum("bnd,dhc->bnhc", x, wk).astype(np.float32)
  q = np.einsum("bnd,dhc->bnhc", x, wq)
  attn = _softmax(np.einsum("bqhc,bkhc->bhqk", q, keys) * 2.0)
  return x, keys, attn.astype(np.float32)


def _kept(out):
  """`[B, K]` input index held by each output token of a pruning method."""
  return np.asarray(T.dense_source(out.source, out.x.shape[1])).argmax(-1)


def _normalize(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ---------------------------------------------------------------- EViT -----

def _evit_numpy(x, attn, keep_rate):
  """youweiliang/evit `evit.py`, `Attention.forward` + `Block.forward` with
  fuse_token=True: top ceil(rate (N-1)) tokens by head-mean [CLS] attention,
  in topk's (descending) order, then sum_i a_i x_i over the rest."""
  n = x.shape[1]
  left = math.ceil(keep_rate * (n - 1))
  cls_attn = attn[:, :, 0, 1:].mean(1)                         # [B, N-1]
  out = []
  for b in range(x.shape[0]):
    idx = np.argsort(-cls_attn[b], kind="stable")[:left]
    compl = np.setdiff1d(np.arange(n - 1), idx)                # sorted
    extra = (x[b, 1:][compl] * cls_attn[b, compl, None]).sum(0)
    out.append(np.concatenate([x[b, :1], x[b, 1:][idx], extra[None]]))
  return np.stack(out)


def test_evit_matches_official():
  x, _, attn = _inputs(0)
  for rate in (0.7, 0.5):
    want = _evit_numpy(x, attn, rate)
    got = T.reduce("evit", x, keep=want.shape[1], cls_attn=attn[:, :, 0])
    np.testing.assert_allclose(np.asarray(got.x), want, rtol=1e-5, atol=1e-6)
  # The old normalized fusion is an option, and it differs.
  norm = T.reduce("evit", x, keep=want.shape[1], cls_attn=attn[:, :, 0],
                  normalize_fused=True)
  assert not np.allclose(np.asarray(norm.x[:, -1]), want[:, -1], atol=1e-3)


def test_evit_schedule_counts_the_fused_token_like_official():
  """DeiT-S, rate 0.7 at blocks (3, 6, 9): 140/100/72 tokens as in EViT."""
  n, official = 197, []
  for layer in range(12):
    if layer in (3, 6, 9):
      n = 1 + math.ceil(0.7 * (n - 1)) + 1
    official.append(n)
  assert official[9] == 72 and official[3] == 140 and official[6] == 100
  c = mm.base_config().model
  c.depth = 12
  c.token_reduction = mm.token_reduction("evit", ("rate", 0.7))
  plan = build.token_reduction(c, 197)
  assert list(plan.keep) == official
  assert plan.prop_attn is False       # EViT has no proportional attention


# -------------------------------------------------------------- PiToMe -----

def _pitome_numpy(x, metric, r, margin, use_bsm_pitome):
  """hchautran/PiToMe `algo/pitome/merge.py`: `pitome_vision` (energy
  ELU(sim - m) averaged with self, argsort descending) then `pitome` or
  `pitome_bsm`, applied with `merge_wavg` (unit sizes), class token kept."""
  out = []
  for b in range(x.shape[0]):
    m = _normalize(metric[b, 1:].astype(np.float64))
    sim = m @ m.T
    e = sim - margin
    energy = np.where(e > 0, e, np.exp(np.minimum(e, 0)) - 1).mean(-1)
    indices = np.argsort(-energy, kind="stable")
    v = x[b, 1:].astype(np.float64)
    if use_bsm_pitome:
      a_idx, b_idx = indices[::2], indices[1::2]
      scores = sim[a_idx][:, b_idx]
      node_max, node_idx = scores.max(-1), scores.argmax(-1)
      edge = np.argsort(-node_max, kind="stable")
      unm, src = edge[r:], edge[:r]
      dst, size = v[b_idx].copy(), np.ones(len(b_idx))
      for i in src:
        dst[node_idx[i]] += v[a_idx[i]]
        size[node_idx[i]] += 1
      keep = [v[a_idx[unm]], dst / size[:, None]]
    else:
      a_idx, b_idx = indices[:2 * r:2], indices[1:2 * r:2]
      dst_idx = sim[a_idx][:, b_idx].argmax(-1)
      dst, size = v[b_idx].copy(), np.ones(r)
      for i, j in enumerate(dst_idx):
        dst[j] += v[a_idx[i]]
        size[j] += 1
      keep = [v[indices[2 * r:]], dst / size[:, None]]
    out.append(np.concatenate([x[b, :1]] + keep))
  return np.stack(out)


@pytest.mark.parametrize("layer,variant,bsm", [(0, "deit", True),
                                               (9, "deit", False),
                                               (2, "mae", False),
                                               (11, "mae", True)])
def test_pitome_matches_official(layer, variant, bsm):
  x, keys, _ = _inputs(1)
  metric = keys.mean(2)
  margin = 0.75 - 0.75 * layer / 12
  r = 12
  want = _pitome_numpy(x, metric, r, margin, bsm)
  got = T.reduce("pitome", x, keep=N - r, metric=metric, layer=layer,
                 depth=12, variant=variant)
  np.testing.assert_allclose(np.asarray(got.x), want, rtol=1e-5, atol=1e-5)
  assert float(got.size.sum()) == B * N
  # The paper's printed energy, or the other merge kind, changes the output.
  other = T.reduce("pitome", x, keep=N - r, metric=metric, margin=margin,
                   variant="pitome" if bsm else "bsm")
  assert not np.allclose(np.asarray(other.x), want, atol=1e-4)


def test_pitome_needs_the_block_index_for_official_defaults():
  x, keys, _ = _inputs(1)
  with pytest.raises(ValueError, match="layer= and depth="):
    T.reduce("pitome", x, keep=40, metric=keys.mean(2))
  # A per-block margin list is indexed by the block.
  a = T.reduce("pitome", x, keep=40, metric=keys.mean(2), layer=1, depth=4,
               margin=[0.1, 0.3, 0.5, 0.7])
  b = T.reduce("pitome", x, keep=40, metric=keys.mean(2), layer=1, depth=4,
               margin=0.3)
  np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))


# ---------------------------------------------------------------- DART -----

def _dart_numpy(keys, states, num_pivots, token_topk):
  """ZichenWen1/DART `llava/model/language_model/modeling_llama_self.py`,
  `get_retained_image_token` (as stored in the xqy1111111/DART fork): pivots
  by the L1 norm of the keys with heads concatenated, then each pivot claims
  the TOKEN_TOPK remaining tokens of lowest cosine similarity on the
  normalized states. The image tokens are tokens 1.. (the ViT's [CLS] is
  kept, like the official code's text tokens). The official loop visits the
  pivots in Python-set order; maskmodel fixes increasing index order."""
  out = []
  for b in range(keys.shape[0]):
    flat = keys[b, 1:].reshape(keys.shape[1] - 1, -1)
    l1 = np.abs(flat).sum(-1)
    pivots = np.argsort(-l1, kind="stable")[:num_pivots]
    kept, valid = set(pivots.tolist()), set(range(len(l1))) - set(
        pivots.tolist())
    s = _normalize(states[b, 1:].astype(np.float64))
    for item in sorted(pivots.tolist()):
      valid_list = sorted(valid)
      neg_cos = -(s[valid_list] @ s[item])
      top = [valid_list[i] for i in
             np.argsort(-neg_cos, kind="stable")[:token_topk]]
      kept.update(top)
      valid.difference_update(top)
    out.append([0] + [i + 1 for i in sorted(kept)])
  return np.array(out)


def _standardize(x):
  x = x - x.mean(-1, keepdims=True)
  return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)


def test_dart_matches_official():
  x, keys, _ = _inputs(2)
  pivots, topk = 4, 5
  keep = 1 + pivots + pivots * topk
  want = _dart_numpy(keys, _standardize(x), pivots, topk)
  src = T.init_source(x)
  got = T.reduce("dart", x, keep=keep, keys=keys, num_pivots=pivots,
                 source=src)
  np.testing.assert_array_equal(_kept(got), want)
  np.testing.assert_allclose(np.asarray(got.x),
                             np.take_along_axis(x, want[..., None], 1))
  # Explicit duplication features (e.g. the normalized layer output).
  states = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
  got = T.dart(x, None, T.Stats(keys=keys), keep=keep, num_pivots=pivots,
                      features=states, source=src)
  np.testing.assert_array_equal(_kept(got),
                                _dart_numpy(keys, states, pivots, topk))
  # Head-averaged keys (the old metric) pick other pivots.
  old = T.reduce("dart", x, keep=keep, keys=keys.mean(2, keepdims=True),
                 num_pivots=pivots, source=src)
  assert not np.array_equal(_kept(old), want)


# ------------------------------------------------------------- GTP-ViT -----

def _gtp_graph_numpy(x0, num_neighbours=8):
  """Ackesnal/GTP-ViT `models_v3.py`, `GraphPropagationTransformer`: the
  "Mixed" graph (grid 8-neighbourhood OR binary kNN cosine graph from the
  embedded tokens), normalized D^-1/2 A D^-1/2."""
  n = x0.shape[1] - 1
  side = int(math.sqrt(n))
  idx = np.arange(n)
  r, c = idx // side, idx % side
  spatial = ((abs(r[:, None] - r[None]) <= 1)
             & (abs(c[:, None] - c[None]) <= 1)).astype(float) - np.eye(n)
  graphs = []
  for b in range(x0.shape[0]):
    v = _normalize(x0[b, 1:].astype(np.float64))
    sim = v @ v.T
    thr = np.sort(sim, axis=-1)[:, n - num_neighbours - 1][:, None]
    semantic = (sim >= thr).astype(float) - np.eye(n)
    g = np.logical_or(semantic.astype(int), spatial.astype(int)).astype(float)
    d = np.diag(g.sum(-1) ** -0.5)
    graphs.append(d @ g @ d)
  return np.stack(graphs)


def _gtp_layer_numpy(x, scales, graph, attn, num_prop, selection, alpha=0.1):
  """`select` (IMGAttnMean / MixedAttnMax) then `propagate` with
  "GraphProp" and token scales, from Ackesnal/GTP-ViT `models_v3.py`."""
  received = attn[:, :, :, 1:].sum(-2)                         # [B, H, N-1]
  if selection == "img_attn_mean":
    rank = received.mean(1)
  else:
    diag = np.diagonal(attn, axis1=-2, axis2=-1)[:, :, 1:]
    rank = diag.max(1) * received.max(1)
  xs, ss, gs = [], [], []
  for b in range(x.shape[0]):
    order = np.argsort(-rank[b], kind="stable")
    kept, prop = order[:-num_prop], order[-num_prop:]
    w = graph[b][kept]
    w_prop, g = w[:, prop], w[:, kept]
    xs.append(np.concatenate(
        [x[b, :1], x[b, 1:][kept] + alpha * w_prop @ x[b, 1:][prop]]))
    ss.append(np.concatenate(
        [scales[b, :1], scales[b, 1:][kept] + alpha * w_prop
         @ scales[b, 1:][prop]]))
    gs.append(g)
  return np.stack(xs), np.stack(ss), np.stack(gs)


@pytest.mark.parametrize("selection", ["img_attn_mean", "mixed_attn_max"])
def test_gtp_matches_official_over_two_layers(selection):
  x0, _, attn = _inputs(3)
  rng = np.random.default_rng(4)
  graph = _gtp_graph_numpy(x0)
  np.testing.assert_allclose(np.asarray(T.gtp_graph(x0)), graph, atol=1e-6)
  x1 = x0 + 0.1 * rng.normal(size=x0.shape).astype(np.float32)
  want_x, want_s, want_g = _gtp_layer_numpy(x1, np.ones((B, N)), graph, attn,
                                            8, selection)
  got = T.reduce("gtp", x1, keep=N - 8, attn=attn, key_mass=attn.sum(2),
                 graph=T.gtp_graph(x0), selection=selection)
  np.testing.assert_allclose(np.asarray(got.x), want_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got.size[..., 0]), want_s, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got.graph), want_g, atol=1e-6)
  # A second layer sub-indexes the carried graph.
  attn2 = _softmax(rng.normal(size=(B, H, N - 8, N - 8)) * 2).astype(
      np.float32)
  want2 = _gtp_layer_numpy(want_x, want_s, want_g, attn2, 6, selection)
  got2 = T.reduce("gtp", got.x, got.size, keep=N - 14, attn=attn2,
                  key_mass=attn2.sum(2), graph=got.graph, selection=selection)
  np.testing.assert_allclose(np.asarray(got2.x), want2[0], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(got2.size[..., 0]), want2[1],
                             atol=1e-5)


# Half of each head's attention entries zeroed: enough to change the ranking
# of these inputs (0.8 keeps their peaked maps' order).
SPARSITY = 0.5


def _sparsify_numpy(attn, sparsity):
  """Ackesnal/GTP-ViT `models_v3.py`, `Attention.forward` with sparsity < 1
  (eval branch): k = int(N*N*(1 - sparsity)), the threshold is each head's
  k-th smallest probability (`torch.kthvalue` over the flattened N*N map),
  and the entries below it are set to 0, without renormalizing."""
  b, h, n, _ = attn.shape
  k = int(n * n * (1 - sparsity))
  flat = attn.reshape(b, h, n * n)
  threshold = np.sort(flat, axis=-1)[..., k - 1][..., None, None]
  out = attn.copy()
  out[attn < threshold] = 0.0
  return out


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.97])
def test_gtp_attention_sparsity_matches_official(sparsity):
  rng = np.random.default_rng(5)
  attn = _softmax(rng.normal(size=(B, H, N, N)) * 2).astype(np.float32)
  attn[0, 1, :3, :3] = attn[0, 1, 0, 0]      # ties at some threshold
  want = _sparsify_numpy(attn, sparsity)
  got = np.asarray(jax.jit(T.sparsify_attention, static_argnums=1)(
      attn, sparsity))
  np.testing.assert_array_equal(got, want)
  k = int(N * N * (1 - sparsity))
  assert ((got == 0).reshape(B, H, -1).sum(-1) <= k - 1).all()
  # Idempotent: a reducer may re-sparsify what a block already sparsified.
  np.testing.assert_array_equal(
      np.asarray(T.sparsify_attention(got, sparsity)), got)
  # Off (the official default) is the identity.
  assert T.sparsify_attention(attn, 1.0) is attn


@pytest.mark.parametrize("selection", ["img_attn_mean", "mixed_attn_max"])
def test_gtp_with_sparsity_ranks_by_the_sparsified_attention(selection):
  """`select` reads the attention map `Attention.forward` returns, which is
  the sparsified one (official `GraphPropagationBlock.forward`)."""
  x0, _, attn = _inputs(3)
  rng = np.random.default_rng(6)
  x1 = x0 + 0.1 * rng.normal(size=x0.shape).astype(np.float32)
  graph = _gtp_graph_numpy(x0)
  sparse = _sparsify_numpy(attn, SPARSITY)
  want_x, want_s, want_g = _gtp_layer_numpy(x1, np.ones((B, N)), graph,
                                            sparse, 8, selection)
  got = T.reduce("gtp", x1, keep=N - 8, attn=attn, key_mass=attn.sum(2),
                 graph=T.gtp_graph(x0), selection=selection,
                 sparsity=SPARSITY)
  np.testing.assert_allclose(np.asarray(got.x), want_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got.size[..., 0]), want_s, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got.graph), want_g, atol=1e-6)
  # The dense attention ranks differently here, so the option is live.
  dense = _gtp_layer_numpy(x1, np.ones((B, N)), graph, attn, 8, selection)
  assert not np.allclose(dense[0], want_x, atol=1e-5)


def test_gtp_sparsity_needs_attn_and_a_valid_value():
  x0, _, attn = _inputs(3)
  assert T.needs("gtp", {}) == ("key_mass",)
  assert T.needs("gtp", {"sparsity": 0.8}) == ("attn",)
  with pytest.raises(ValueError, match=r"needs attn=.*fused"):
    T.reduce("gtp", x0, keep=N - 8, key_mass=attn.sum(2), sparsity=0.8)
  with pytest.raises(ValueError, match=r"sparsity=1.5 is outside \[0, 1\]"):
    T.reduce("gtp", x0, keep=N - 8, attn=attn, sparsity=1.5)
  with pytest.raises(ValueError, match=r"zeroes no attention entry"):
    T.sparsify_attention(attn[..., :2, :2], 0.9)


# --------------------------------------------------------- Zero-TPrune -----

def _wpr_numpy(attn, iters):
  s = np.full(attn.shape[:-1], 1.0 / attn.shape[-1])
  for _ in range(iters):
    s = np.einsum("...ij,...i->...j", attn, s)
  return s


def _heads_numpy(s, lo=0.01, hi=0.7):
  var = (s * s.shape[-1]).var(-1)
  ok = (var >= lo) & (var <= hi)
  if not ok.any():
    ok[:] = True
  return np.sqrt((s[ok] ** 2).mean(0))


def _zero_tprune_numpy(x, metric, attn, keep, iters, fraction=0.5):
  """Zero-TPrune (Wang et al., CVPR 2024; no public code), Sec. 3: I' (one
  WPR iteration splits the tokens into halves), S (prune the less important
  tokens most similar to the important half), I (WPR on the survivors'
  renormalized attention), per head with the variance filter and RMS."""
  n, k = x.shape[1] - 1, keep - 1
  r_s = min(round((n - k) * fraction), n // 2)
  out = []
  for b in range(x.shape[0]):
    pre = _heads_numpy(_wpr_numpy(attn[b].astype(np.float64), 1))[1:]
    ranked = np.argsort(-pre, kind="stable")
    imp, rest = ranked[:(n + 1) // 2], ranked[(n + 1) // 2:]
    m = _normalize(metric[b, 1:].astype(np.float64))
    dup = (m[rest] @ m[imp].T).max(-1)
    rest = rest[np.argsort(dup, kind="stable")[:len(rest) - r_s]]
    surv = np.sort(np.concatenate([imp, rest]))
    nodes = np.concatenate([[0], surv + 1])
    sub = attn[b][:, nodes][:, :, nodes].astype(np.float64)
    sub = sub / sub.sum(-1, keepdims=True)
    score = _heads_numpy(_wpr_numpy(sub, iters))[1:]
    best = surv[np.argsort(-score, kind="stable")[:k]]
    out.append([0] + sorted((best + 1).tolist()))
  return np.array(out)


@pytest.mark.parametrize("layer", [0, 5, 11])
def test_zero_tprune_matches_paper_port(layer):
  x, keys, attn = _inputs(6)
  metric = keys.mean(2)
  iters = {0: 30, 5: 10, 11: 1}[layer]
  assert ztp.default_iterations(layer, 12) == iters
  want = _zero_tprune_numpy(x, metric, attn, 30, iters)
  got = T.reduce("zero_tprune", x, keep=30, metric=metric, attn=attn,
                 source=T.init_source(x), layer=layer, depth=12)
  np.testing.assert_array_equal(_kept(got), want)
  if layer == 0:   # the I -> S order the paper rejects keeps other tokens
    old = T.reduce("zero_tprune", x, keep=30, metric=metric, attn=attn,
                   source=T.init_source(x), layer=layer, depth=12, order="is")
    assert not np.array_equal(_kept(old), want)


# ---------------------------------------------------------------- ToMe -----

def _parse_r_numpy(num_layers, r):
  """facebookresearch/ToMe `tome/utils.py`, `parse_r`."""
  inflect = 0
  if isinstance(r, list):
    return r + [0] * (num_layers - len(r))
  if isinstance(r, tuple):
    r, inflect = r
  min_val = int(r * (1.0 - inflect))
  max_val = 2 * r - min_val
  step = (max_val - min_val) / (num_layers - 1)
  return [int(min_val + step * i) for i in range(num_layers)]


def _removed(spec, depth, n=10_000):
  """r per layer that a schedule spec gives (no cap binds at this n)."""
  kept = T.tokens_per_layer(spec, depth, n, bipartite=False)
  return [a - b for a, b in zip([n] + kept[:-1], kept)]


def test_tome_schedules_match_parse_r():
  for depth in (2, 4, 12, 24):
    for r in (1, 8, 16):
      assert _removed(("decreasing", r), depth) == _parse_r_numpy(
          depth, (r, -1.0))
      assert _removed(f"decreasing:{r}", depth) == _parse_r_numpy(
          depth, (r, -1.0))
      assert _removed(r, depth) == _parse_r_numpy(depth, r)
      for inflect in (-0.5, 0.3, 1.0):
        assert _removed(("inflect", r, inflect), depth) == _parse_r_numpy(
            depth, (r, inflect))
    assert _removed(("r", [5, 3]), depth) == _parse_r_numpy(depth, [5, 3])


def _tome_merge_numpy(metric, x, r, class_token, distill_token):
  """facebookresearch/ToMe `tome/merge.py`, `bipartite_soft_matching` with
  `merge_wavg` (unit sizes) and `merge_source` (one-hot maps merged with
  amax): [CLS] row and distillation column at -inf, r capped at half of the
  unprotected tokens, and with a distillation token `merge` returns
  `[unm[:1], dst[:1], unm[1:], dst[1:]]`. Returns `(x, source)`, source the
  `[B, N - r, N]` one-hot map."""
  protected = int(class_token) + int(distill_token)
  r = min(r, (x.shape[1] - protected) // 2)
  m = _normalize(metric.astype(np.float64))
  a, b = m[:, ::2], m[:, 1::2]
  scores = a @ b.transpose(0, 2, 1)
  if class_token:
    scores[:, 0, :] = -np.inf
  if distill_token:
    scores[:, :, 0] = -np.inf
  node_max, node_idx = scores.max(-1), scores.argmax(-1)

  def merge(i, v, reduce_op):
    edge = np.argsort(-node_max[i], kind="stable")
    unm, src = edge[r:], edge[:r]
    if class_token:
      unm = np.sort(unm)
    vs, vd = v[::2], v[1::2].copy()
    for j in src:
      vd[node_idx[i, j]] = reduce_op(vd[node_idx[i, j]], vs[j])
    vu = vs[unm]
    if distill_token:
      return np.concatenate([vu[:1], vd[:1], vu[1:], vd[1:]])
    return np.concatenate([vu, vd])

  xs, srcs = [], []
  n = x.shape[1]
  for i in range(x.shape[0]):
    # merge_wavg: sum of x * size and of size, then divide
    v = np.concatenate([x[i].astype(np.float64), np.ones((n, 1))], axis=1)
    v = merge(i, v, np.add)
    xs.append(v[:, :-1] / v[:, -1:])
    srcs.append(merge(i, np.eye(n), np.maximum))
  return np.stack(xs), np.stack(srcs)


@pytest.mark.parametrize("distill_token", [False, True])
def test_tome_matches_official_with_distillation_token(distill_token):
  x, keys, _ = _inputs(7)
  # Make token 1 (DeiT's distillation token) the best match of every token,
  # so protecting it changes the merge.
  x = x.copy()
  x[:, 1] = x[:, 2:].mean(1)
  metric = x
  for r in (12, 30):   # 30 > (50 - 2) // 2: the cap, with one more protected
    want, want_source = _tome_merge_numpy(metric, x, r, True, distill_token)
    with pytest.warns(UserWarning) if r == 30 else _no_warning():
      got = T.reduce("tome", x, keep=N - r, metric=metric,
                     distill_token=distill_token, source=T.init_source(x))
    np.testing.assert_allclose(np.asarray(got.x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(T.dense_source(got.source, got.x.shape[1])), want_source)
    if distill_token:   # right after [CLS], alone: nothing merged into it
      np.testing.assert_array_equal(np.asarray(got.x[:, :2]), x[:, :2])
      np.testing.assert_array_equal(np.asarray(got.size[:, :2, 0]), 1.0)


class _no_warning:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False
