"""MLM and n-gram masking: BERT's counts and 80/10/10, the n-gram length
distribution and collapse, training on 8 devices with a bit-exact resume,
and one-line errors."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (ROOT, assert_resumes_bit_exactly, load_config,
                      random_byte_windows)
from maskmodel.config import ConfigError
from maskmodel.data.tokenizers import get_tokenizer
from maskmodel.tasks import get_task
from maskmodel.tasks import mlm

GENOME = os.path.join(ROOT, "configs", "mlm", "genome_tiny.py")
PYCODE = os.path.join(ROOT, "configs", "mlm", "pycode_tiny.py")
BYTES = get_tokenizer("bytes")


def bert_num_to_predict(num_tokens, masked_lm_prob, max_predictions_per_seq):
  """google-research/bert, create_pretraining_data.py,
  create_masked_lm_predictions: `num_to_predict` for a sequence of
  `num_tokens` tokens ([CLS] and [SEP] included), ported to numpy."""
  return min(max_predictions_per_seq,
             max(1, int(round(num_tokens * masked_lm_prob))))


_bert_mask = jax.jit(mlm.bert_mask, static_argnames=(
    "special_ids", "rate", "max_predictions", "vocab_size", "mask_id"))


def bert_mask(rng, tokens, mask, rate=0.15, max_predictions=20):
  return jax.device_get(_bert_mask(
      rng, jnp.asarray(tokens), jnp.asarray(mask),
      special_ids=BYTES.special_ids, rate=rate,
      max_predictions=max_predictions, vocab_size=BYTES.vocab_size,
      mask_id=BYTES.mask_id))


def test_bert_counts_match_create_pretraining_data():
  lengths = np.arange(3, 99)
  tokens, mask = random_byte_windows(np.random.RandomState(0), len(lengths), 98,
                                lengths)
  m = bert_mask(jax.random.PRNGKey(1), tokens, mask, 0.4, 40)
  want = [min(bert_num_to_predict(n, 0.4, 40), n - 2) for n in lengths]
  np.testing.assert_array_equal(m.weights.sum(1), want)


def test_bert_80_10_10_and_specials_never_masked():
  rng = np.random.RandomState(0)
  # Half the rows full length, half shorter (padded).
  lengths = np.where(rng.rand(512) < 0.5, 128, rng.randint(3, 128, 512))
  tokens, mask = random_byte_windows(rng, 512, 128, lengths)
  m = bert_mask(jax.random.PRNGKey(0), tokens, mask)
  want = [min(bert_num_to_predict(n, 0.15, 20), n - 2) for n in lengths]
  np.testing.assert_array_equal(m.weights.sum(1), want)
  chosen = m.weights > 0
  rows = np.broadcast_to(np.arange(512)[:, None], m.positions.shape)
  orig = tokens[rows, m.positions]
  new = m.inputs[rows, m.positions]
  # Targets are the original tokens; no special or pad is ever chosen.
  np.testing.assert_array_equal(m.targets[chosen], orig[chosen])
  assert not np.isin(orig[chosen], BYTES.special_ids).any()
  # Unchosen positions are untouched (pads, [CLS], [SEP] among them).
  touched = np.zeros_like(mask)
  touched[rows[chosen], m.positions[chosen]] = True
  np.testing.assert_array_equal(m.inputs[~touched], tokens[~touched])
  n = chosen.sum()
  as_mask = (new[chosen] == BYTES.mask_id).sum() / n
  kept = (new[chosen] == orig[chosen]).sum() / n
  # A uniform random id is the original 1 time in 260.
  assert abs(as_mask - 0.8) < 0.015, as_mask
  assert abs(kept - (0.1 + 0.1 / 260)) < 0.012, kept
  assert abs(1 - as_mask - kept - 0.1 * 259 / 260) < 0.012
  # The chosen positions of full rows are uniform over positions 1..126:
  # a chi-square statistic with 125 degrees of freedom (mean 125, sd 16).
  hits = np.zeros(128)
  for key in range(3):
    m = bert_mask(jax.random.PRNGKey(key), tokens, mask)
    full = (lengths == 128)[:, None] & (m.weights > 0)
    hits += np.bincount(m.positions[full], minlength=128)
  assert hits[0] == hits[127] == 0
  expected = hits.sum() / 126
  assert ((hits[1:127] - expected) ** 2 / expected).sum() < 200


_ngram_mask = jax.jit(mlm.ngram_mask, static_argnames=(
    "special_ids", "rate", "p", "max_n", "max_ngrams", "mask_id", "pad_id"))


def ngram_mask(rng, tokens, mask, rate=0.15, p=0.2, max_n=4, max_ngrams=20):
  return jax.device_get(_ngram_mask(
      rng, jnp.asarray(tokens), jnp.asarray(mask),
      special_ids=BYTES.special_ids, rate=rate, p=p, max_n=max_n,
      max_ngrams=max_ngrams, mask_id=BYTES.mask_id, pad_id=BYTES.pad_id))


def test_ngram_lengths_follow_the_truncated_geometric():
  tokens, mask = random_byte_windows(np.random.RandomState(0), 512, 128)
  m = ngram_mask(jax.random.PRNGKey(0), tokens, mask)
  picked = m.weights[:, :, 0] > 0
  lengths = m.weights.sum(-1)[picked].astype(int)
  freq = np.bincount(lengths, minlength=5)[1:] / len(lengths)
  want = 0.2 * 0.8 ** np.arange(4)
  np.testing.assert_allclose(freq, want / want.sum(), atol=0.02)
  # About `rate` of the tokens are masked.
  assert abs(m.weights.sum() / mask.sum() - 0.15) < 0.02


def test_ngram_collapse_restores_the_sequence():
  rng = np.random.RandomState(1)
  lengths = rng.randint(3, 129, 512)
  tokens, mask = random_byte_windows(rng, 512, 128, lengths)
  m = ngram_mask(jax.random.PRNGKey(3), tokens, mask)
  for b in range(0, 512, 4):
    ids = m.inputs[b][m.mask[b]].tolist()
    spans = {int(pos): m.targets[b, g][m.weights[b, g] > 0].tolist()
             for g, pos in enumerate(m.positions[b]) if m.weights[b, g, 0]}
    assert sorted(spans) == [i for i, t in enumerate(ids) if t == BYTES.mask_id]
    restored = []
    for i, t in enumerate(ids):
      restored += spans[i] if i in spans else [t]
    np.testing.assert_array_equal(restored, tokens[b][mask[b]])
    assert not np.isin(sum(spans.values(), []), BYTES.special_ids).any()
    assert (m.inputs[b][~m.mask[b]] == BYTES.pad_id).all()


ELECTRA_GENOME = os.path.join(ROOT, "configs", "electra", "genome_tiny.py")


def test_mlm_and_electra_train_on_8_devices_and_resume_bit_exactly(tmp_path):
  """MLM, then ELECTRA, in one process on 8 simulated devices."""
  mlm, electra = assert_resumes_bit_exactly(
      GENOME + ":smoke", tmp_path / "mlm",
      (ELECTRA_GENOME + ":smoke", tmp_path / "electra"))
  assert 0 < mlm["knn_accuracy"] <= 1
  assert 0 < mlm["mlm_accuracy"] <= 1 and np.isfinite(mlm["mlm_loss"])
  assert 0 < electra["knn_accuracy"] <= 1
  assert 0 < electra["disc_accuracy"] <= 1 and np.isfinite(electra["disc_loss"])
  assert 0 < electra["replaced_fraction"] < 0.15
  assert np.isfinite(electra["mlm_loss"])


def test_ngram_task_trains_its_offsets():
  config = load_config(PYCODE + ":smoke,ngram")
  task = get_task(config)
  tokens, mask = random_byte_windows(np.random.RandomState(0), 4, 128)
  batch = {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask)}
  params, state = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
  grads = jax.jit(jax.grad(lambda p: task.loss(
      p, state, batch, jax.random.PRNGKey(1), 0)[0]))(params)
  assert float(jnp.abs(grads["ngram_offsets"]).sum()) > 0
  assert float(jnp.abs(grads["encoder"]["token_embed"]["embedding"]).sum()) > 0


@pytest.mark.parametrize("override,match", [
    (dict(seq_len=256), "max_len=128"),
    (dict(vocab_size=100), "model.vocab_size=260"),
    (dict(name="mnist5k"), "sequence corpus"),
    (dict(tokenizer="letters"), "tokenizer 'letters' is unknown"),
])
def test_bad_config_is_one_line(override, match):
  config = load_config(PYCODE + ":smoke")
  for key, value in override.items():
    (config.model if key == "vocab_size" else config.data)[key] = value
  with pytest.raises(ConfigError, match=match) as e:
    get_task(config)
  assert "\n" not in str(e.value)


def test_bad_token_id_is_one_line():
  task = get_task(load_config(GENOME + ":smoke"))
  record = {"tokens": np.array([1, 4, 9, 2], np.int32),
            "mask": np.ones(4, bool), "label": np.int32(0)}
  with pytest.raises(ValueError, match="token id 9 .* vocab_size=9") as e:
    task.preprocess(record, None, True)
  assert "\n" not in str(e.value)
