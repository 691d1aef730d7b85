"""Token reduction inside SeqModel: r = 0 changes nothing, the schedule is
followed, pads stay out of real tokens, and ToMe's merging matches a numpy
port of the official code."""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from maskmodel import config as config_lib
from maskmodel import tokens
from maskmodel.config import ConfigError
from maskmodel.models import seq

VOCAB, N, DEPTH = 40, 16, 2
WIDTH, HEADS = 32, 4


def _model(plan=None, **kw):
  base = dict(vocab_size=VOCAB, max_len=N, width=WIDTH, depth=DEPTH,
              num_heads=HEADS, mlp_dim=64, attn_impl="xla",
              token_reduction=plan, **seq.BERT_OPTIONS)
  return seq.SeqModel(**dict(base, **kw))


def _plan(method="tome", r=3, n=N, depth=DEPTH, prop_attn=True, **extra):
  m = ml_collections.ConfigDict(dict(depth=depth))
  m.token_reduction = config_lib.token_reduction(method, ("r", r),
                                                 prop_attn=prop_attn)
  if extra:
    m.token_reduction.update(extra)
  return seq.seq_token_reduction(m, n)


@pytest.fixture(scope="module")
def batch():
  """Ids of 3 rows with 16, 11 and 5 real tokens; a BERT-like init with
  larger embeddings, so tokens differ enough to give untied matches."""
  ids = jax.random.randint(jax.random.key(1), (3, N), 1, VOCAB)
  lengths = np.array([16, 11, 5])
  mask = np.arange(N)[None] < lengths[:, None]
  ids = jnp.where(mask, ids, 0)
  params = jax.jit(_model().init)(jax.random.key(0), ids)["params"]
  params = jax.tree_util.tree_map(lambda p: p * 10.0 if p.ndim == 2 else p,
                                  params)
  return ids, jnp.asarray(mask), params


@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "return_source", "causal", "capture_intermediates"))
def _apply(model, params, ids, mask=None, **kw):
  return model.apply({"params": params}, ids, mask, **kw)


@pytest.mark.parametrize("padded", [False, True])
def test_r0_is_bit_identical_to_no_reduction(batch, padded):
  ids, mask, params = batch
  mask = mask if padded else None
  plain = _apply(_model(), params, ids, mask)
  zero = _apply(_model(_plan(r=0)), params, ids, mask)
  assert zero["tokens"].shape == plain["tokens"].shape
  np.testing.assert_array_equal(zero["tokens"], plain["tokens"])
  np.testing.assert_array_equal(zero["pooled"], plain["pooled"])


def _reduce(model, params, ids, mask):
  """One compiled call per model, shared by the tests below."""
  return _apply(model, params, ids, mask, return_source=True,
                capture_intermediates=True)


@pytest.mark.parametrize("method", seq.SEQ_REDUCERS)
def test_schedule_sizes_and_pads_stay_pads(batch, method):
  ids, mask, params = batch
  plan = _plan(method, r=3)
  assert plan.keep == (13, 10)
  out, state = _reduce(_model(plan), params, ids, mask)
  for i, keep in enumerate(plan.keep):   # tokens per block, as scheduled
    x, size, _, block_mask = state["intermediates"][f"block_{i}"]["__call__"][0]
    assert x.shape[1] == size.shape[1] == block_mask.shape[1] == keep
  size, real, mask = (np.asarray(out["size"]), np.asarray(out["mask"]),
                      np.asarray(mask))
  assert out["tokens"].shape[1] == 10 and np.all(size[~real] == 0)
  assert np.all(size[real] >= 1)
  if tokens.REDUCERS[method].conserves_size:   # merging keeps every token
    np.testing.assert_array_equal(size.sum(1), mask.sum(1))
  else:
    assert np.all(size.sum(1) <= mask.sum(1))
  assert np.isfinite(np.asarray(out["pooled"])).all()
  # No output token holds both a pad and a real token, and the mask says
  # which kind it holds.
  source = np.asarray(out["source"])
  for row in range(len(ids)):
    for k in range(out["tokens"].shape[1]):
      held = mask[row][source[row] == k]
      if tokens.REDUCERS[method].conserves_size:
        assert held.size, (row, k)
      assert held.all() or not held.any(), (row, k, held)
      if held.size:
        assert real[row, k] == held.all()
  if method in ("tome", "atc"):   # pads merge first: the 5-token row keeps 5
    assert real[2].sum() == 5


def test_pad_content_never_reaches_real_tokens(batch):
  ids, mask, params = batch
  model = _model(_plan("tome", r=3))
  out, _ = _reduce(model, params, ids, mask)
  other = jnp.where(mask, ids, 7)   # other pad ids: other pad activations
  out2, _ = _reduce(model, params, other, mask)
  np.testing.assert_array_equal(out["pooled"], out2["pooled"])
  np.testing.assert_array_equal(out["mask"], out2["mask"])


def test_pad_separated_metric_scores():
  metric = jax.random.normal(jax.random.key(3), (2, 6, 5))
  mask = jnp.array([[True] * 4 + [False] * 2, [True] * 6])
  sep = np.asarray(tokens.common.l2_normalize(
      seq.pad_separated_metric(metric, mask)))
  cos = np.einsum("bic,bjc->bij", sep, sep)
  plain = np.asarray(tokens.common.cosine_similarity(metric))
  np.testing.assert_allclose(cos[0, :4, :4], (1 + plain[0, :4, :4]) / 2,
                             atol=1e-6)
  np.testing.assert_allclose(cos[0, 4:, 4:], 1.0, atol=1e-6)
  np.testing.assert_allclose(cos[0, :4, 4:], -math.sqrt(0.5), atol=1e-6)
  np.testing.assert_allclose(cos[1], plain[1], atol=1e-6)   # unpadded row


# --- numpy port of ToMe (facebookresearch/ToMe, tome/merge.py:
# bipartite_soft_matching and merge_wavg; tome/patch/timm.py: the metric is
# the keys averaged over heads, proportional attention adds log(size)).

def np_bipartite_soft_matching(metric, r):
  """`merge(x, mode)` of ToMe's bipartite_soft_matching, class_token=False."""
  metric = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
  a, b = metric[:, ::2], metric[:, 1::2]
  scores = a @ np.swapaxes(b, 1, 2)
  node_max, node_idx = scores.max(-1), scores.argmax(-1)
  edge_idx = np.argsort(-node_max, axis=-1, kind="stable")
  unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
  dst_idx = np.take_along_axis(node_idx, src_idx, axis=1)

  def merge(x, mode="sum"):
    assert mode == "sum"
    src, dst = x[:, ::2], x[:, 1::2].copy()
    unm = np.take_along_axis(src, unm_idx[..., None], axis=1)
    src = np.take_along_axis(src, src_idx[..., None], axis=1)
    for row in range(x.shape[0]):
      np.add.at(dst[row], dst_idx[row], src[row])
    return np.concatenate([unm, dst], axis=1)
  return merge


def np_merge_wavg(merge, x, size):
  x = merge(x * size)
  size = merge(size)
  return x / size, size


def _ln(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
  return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"],
                                                               np.float64)


def np_bert_tome(params, ids, keep, heads, eps, prop_attn=True):
  """Post-LN BERT forward with ToMe after LN1; size-weighted mean pooling."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  b, n = ids.shape
  x = (p["token_embed"]["embedding"][ids] + p["pos_embed"][None, :n]
       + p["type_embed"]["embedding"][0])
  x = _ln(x, p["embed_norm"], eps)
  size = np.ones((b, n, 1))
  erf = np.vectorize(math.erf)
  for i, k_out in enumerate(keep):
    blk = p[f"block_{i}"]
    t, d = x.shape[1], x.shape[2]
    hd = d // heads
    fused = blk["attn"]["qkv"]   # kernel [D, 3, H, Dh], bias [3, H, Dh]
    qkv = _dense(x, {"kernel": fused["kernel"].reshape(d, -1),
                     "bias": fused["bias"].reshape(-1)}).reshape(b, t, 3 * heads, hd)
    q, k, v = qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    if prop_attn and t < n:
      logits = logits + np.log(size[..., 0])[:, None, None, :]
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, d)
    x = _ln(x + _dense(y, blk["attn"]["proj"]), blk["norm1"], eps)
    if k_out < t:
      merge = np_bipartite_soft_matching(k.mean(2), t - k_out)
      x, size = np_merge_wavg(merge, x, size)
    h = _dense(x, blk["mlp"]["Dense_0"])
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
    x = _ln(x + _dense(h, blk["mlp"]["Dense_1"]), blk["norm2"], eps)
  return (x * size).sum(1) / size.sum(1), size[..., 0]


@pytest.mark.parametrize("prop_attn", [True, False])
def test_pooled_tome_matches_numpy_port_of_official_tome(batch, prop_attn):
  ids, _, params = batch
  plan = _plan("tome", r=4, prop_attn=prop_attn)
  out = _apply(_model(plan), params, ids)   # no padding: plain ToMe
  want, want_size = np_bert_tome(params, np.asarray(ids), plan.keep, HEADS,
                                 seq.BERT_OPTIONS["layer_norm_eps"], prop_attn)
  np.testing.assert_array_equal(np.asarray(out["size"]), want_size)
  np.testing.assert_allclose(np.asarray(out["pooled"]), want, atol=2e-5)
  plain = np.asarray(_apply(_model(), params, ids)["pooled"])
  assert np.abs(plain - want).max() > 1e-2   # the merging made a difference


def test_plan_and_call_errors_are_one_line(batch):
  ids, mask, params = batch
  plan = _plan("tome", r=2)
  with pytest.raises(ValueError, match="plan is for 16 input tokens; this call has 8"):
    _apply(_model(plan), params, ids[:, :8], mask[:, :8])
  with pytest.raises(ValueError, match="breaks causal attention"):
    _apply(_model(plan), params, ids, mask, causal=True)
  with pytest.raises(ValueError, match="positions='learned'"):
    _model(plan, positions="rope").init(jax.random.key(0), ids)
  for method, needle in (("topk", "not applicable"), ("nope", "unknown")):
    with pytest.raises(ConfigError, match=needle) as e:
      _plan(method)
    assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="merges at most half"):
    m = ml_collections.ConfigDict(dict(depth=2))
    m.token_reduction = config_lib.token_reduction("tome", ("keep", [6, 4]))
    seq.seq_token_reduction(m, N)


def test_model_registry_builds_the_plan():
  c = seq.seq_config(vocab_size=VOCAB, max_len=N, width=WIDTH, depth=DEPTH,
                     num_heads=HEADS, **seq.BERT_OPTIONS)
  c.token_reduction = config_lib.token_reduction("tome", 4, off_the_shelf=True)
  model = seq.seq(c, num_tokens=12)
  assert model.token_reduction.keep == (8, 4)
  assert model.token_reduction.prop_attn     # ToMe's off-the-shelf default
  assert not model.token_reduction.class_token
  c.token_reduction.class_token = True
  assert seq.seq(c, num_tokens=12).token_reduction.keep == (8, 5)


def test_minilm_embeds_with_tome():
  """The real model: r = 0 is bit-identical, merging stays close."""
  minilm = pytest.importorskip("maskmodel.models.minilm")
  try:
    minilm.minilm_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  texts = ["Token merging combines similar tokens inside the transformer.",
           "A list is a mutable sequence type."]
  plain = minilm.embed_sentences(texts)
  zero = minilm.embed_sentences(texts, token_reduction=config_lib.token_reduction(
      "tome", 0, off_the_shelf=True))
  np.testing.assert_array_equal(zero, plain)
  merged = minilm.embed_sentences(texts, token_reduction=config_lib.token_reduction(
      "tome", 1, off_the_shelf=True))
  cos = (merged * plain).sum(1)
  assert np.all(cos > 0.95) and np.all(cos < 1.0), cos


def _runner():
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = (pathlib.Path(__file__).resolve().parents[1] / "experiments" /
          "sequences" / "run.py")
  spec = importlib.util.spec_from_file_location("sequences_run", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_experiment_texts():
  """experiments/sequences/run.py's texts are real prose, deterministic, in
  the framing its docstring states (the runner itself is the recorded run;
  a smoke of it, `--smoke`, takes minutes)."""
  run = _runner()
  paragraphs = run.prose_paragraphs()
  assert len(paragraphs) > 500 and paragraphs == run.prose_paragraphs()
  assert not any(text[:1].isspace() for _, text in paragraphs)
  try:
    tok = run.raw_tokenizer()
  except FileNotFoundError:
    tok = None
  if tok is not None:
    ids, texts = run.passages(tok, paragraphs, 32, 6)
    assert ids.shape == (6, 32) and len(set(texts)) == 6
    assert (ids[:, 0] == tok.token_to_id("[CLS]")).all()
    assert (ids[:, -1] == tok.token_to_id("[SEP]")).all()
