"""SeqModel: exact causal and padding masks, the tied MLM head, RoPE, the
registry entry and its one-line errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskmodel import models
from maskmodel.config import ConfigError
from maskmodel.models import seq

VOCAB, N = 50, 12


def _model(**kw):
  base = dict(vocab_size=VOCAB, max_len=16, width=32, depth=2, num_heads=4,
              mlp_dim=64, attn_impl="xla")
  return seq.SeqModel(**dict(base, **kw))


def _init(model, ids):
  return model.init(jax.random.key(0), ids)


def _ids(seed, b=2, n=N):
  return jax.random.randint(jax.random.key(seed), (b, n), 1, VOCAB)


@pytest.mark.parametrize("options", [
    dict(), dict(positions="rope"), dict(**seq.BERT_OPTIONS)],
    ids=["pre-ln", "rope", "bert"])
def test_causal_mask_is_exact(options):
  """Output at position t is bit-identical when any token after t changes."""
  model = _model(causal=True, **options)
  ids = _ids(0)
  params = _init(model, ids)
  out = model.apply(params, ids)["tokens"]
  for t in (0, 5, N - 2):
    changed = ids.at[:, t + 1:].set(_ids(t + 1)[:, t + 1:])
    other = model.apply(params, changed)["tokens"]
    np.testing.assert_array_equal(np.asarray(out[:, :t + 1]),
                                  np.asarray(other[:, :t + 1]))
    assert not np.allclose(out[:, t + 1:], other[:, t + 1:])
  # The same params without the causal mask: earlier positions see later ones.
  bidir = model.apply(params, ids.at[:, -1].set(0), causal=False)["tokens"]
  assert not np.allclose(model.apply(params, ids, causal=False)["tokens"][:, 0],
                         bidir[:, 0])


@pytest.mark.parametrize("causal", [False, True])
def test_padded_keys_are_ignored(causal):
  model = _model(causal=causal, **seq.BERT_OPTIONS)
  ids = _ids(1)
  lengths = np.array([7, N])
  mask = np.arange(N)[None] < lengths[:, None]
  params = _init(model, ids)
  out = model.apply(params, ids, mask)
  repadded = jnp.where(mask, ids, _ids(2))   # other tokens in the padding
  other = model.apply(params, repadded, mask)
  for row, n in enumerate(lengths):
    np.testing.assert_array_equal(np.asarray(out["tokens"][row, :n]),
                                  np.asarray(other["tokens"][row, :n]))
  np.testing.assert_array_equal(np.asarray(out["pooled"]),
                                np.asarray(other["pooled"]))
  # pooled is the mean over real tokens only
  np.testing.assert_allclose(out["pooled"][0], out["tokens"][0, :7].mean(0),
                             rtol=1e-5, atol=1e-6)


def test_mlm_head_is_tied_to_the_token_embeddings():
  model = _model(mlm_head=True, **seq.BERT_OPTIONS)
  ids = _ids(3)
  params = _init(model, ids)
  p = params["params"]
  # No decoder matrix of its own: the only [V, D] param is the embedding.
  vd = [path for path, x in jax.tree_util.tree_flatten_with_path(p)[0]
        if x.shape == (VOCAB, 32)]
  assert [jax.tree_util.keystr(path) for path in vd] == ["['token_embed']['embedding']"]
  assert p["mlm_bias"].shape == (VOCAB,)
  out = model.apply(params, ids)
  assert out["mlm_logits"].shape == (2, N, VOCAB)
  # BERT's transform (dense, GELU, LayerNorm), then h @ E^T + bias.
  x = out["tokens"]
  h = x @ p["mlm_dense"]["kernel"] + p["mlm_dense"]["bias"]
  h = 0.5 * h * (1 + jax.scipy.special.erf(h / np.sqrt(2)))
  mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
  h = (h - mu) / np.sqrt(var + 1e-12) * p["mlm_norm"]["scale"] + p["mlm_norm"]["bias"]
  want = h @ p["token_embed"]["embedding"].T + p["mlm_bias"]
  np.testing.assert_allclose(out["mlm_logits"], want, rtol=1e-4, atol=1e-4)
  # A token absent from the input still gets gradient through the decoder.
  absent = int(np.setdiff1d(np.arange(VOCAB), np.asarray(ids))[0])
  grad = jax.jit(jax.grad(lambda q: model.apply(
      {"params": q}, ids)["mlm_logits"][..., absent].sum()))(p)
  assert np.abs(grad["token_embed"]["embedding"][absent]).sum() > 0
  # mlm_positions gathers before the head.
  pos = jnp.array([[0, 3], [5, N - 1]])
  picked = model.apply(params, ids, mlm_positions=pos)["mlm_logits"]
  np.testing.assert_allclose(
      picked, jnp.take_along_axis(out["mlm_logits"], pos[..., None], 1),
      rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_the_offset():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
  score = lambda i, j: float((seq.rope(q, jnp.array([i]))
                              * seq.rope(k, jnp.array([j]))).sum())
  assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-5)
  assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)
  # A RoPE model has no position table.
  assert "pos_embed" not in _init(_model(positions="rope"), _ids(0))["params"]


def test_bad_token_id_and_over_long_sequence_are_one_line_errors():
  model = _model()
  ids = _ids(4)
  params = _init(model, ids)
  with pytest.raises(ValueError) as e:
    model.apply(params, ids.at[1, 3].set(VOCAB))
  assert str(e.value) == (f"token id {VOCAB} at index (1, 3) is outside "
                          f"[0, {VOCAB}) for this model's vocab_size={VOCAB}.")
  with pytest.raises(ValueError, match=r"token id -1 at index \(0, 0\)"):
    seq.check_token_ids(np.array([[-1, 2]]), VOCAB)
  with pytest.raises(ValueError) as e:
    model.apply(params, _ids(5, n=17))
  assert str(e.value) == ("sequence of 17 tokens is longer than the model's "
                          "max_len=16 positions; truncate it to 16.")
  assert "\n" not in str(e.value)


def test_seq_is_registered():
  family = models.get_model("seq")
  m = seq.seq_config(vocab_size=VOCAB, max_len=16, width=32, depth=2,
                     num_heads=4, mlp_dim=64, **seq.BERT_OPTIONS)
  model = family.build(m, num_classes=3)
  assert model == seq.SeqModel(vocab_size=VOCAB, max_len=16, width=32,
                               depth=2, num_heads=4, mlp_dim=64, num_classes=3,
                               **seq.BERT_OPTIONS)
  params = _init(model, _ids(0))["params"]
  assert model.apply({"params": params}, _ids(0))["logits"].shape == (2, 3)
  ids, depth = family.layer_ids(params, m)
  assert depth == 3 and ids["token_embed"]["embedding"] == 0
  assert ids["block_1"]["attn"]["qkv"]["kernel"] == 2 and ids["head"]["kernel"] == 3
  bad = seq.seq_config(positions="alibi")
  with pytest.raises(ConfigError, match="model.positions='alibi' is unknown"):
    family.build(bad)
