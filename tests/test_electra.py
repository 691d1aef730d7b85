"""ELECTRA: the official masking and corruption against a numpy port of
google-research/electra's pretrain/pretrain_helpers.py (`mask`,
`scatter_update`, `unmask`) and run_pretraining.py (`_get_fake_data`), the
masking statistics, Gumbel-max sampling, labels, the stop-gradient, the
generator's size and shared embeddings, and one-line errors. Training on 8
devices with a bit-exact resume runs in tests/test_mlm.py, in MLM's
process."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config, random_byte_windows
from maskmodel.config import ConfigError
from maskmodel.data.tokenizers import get_tokenizer
from maskmodel.tasks import electra
from maskmodel.tasks import get_task

PYCODE = os.path.join(ROOT, "configs", "electra", "pycode_tiny.py")
GENOME = os.path.join(ROOT, "configs", "electra", "genome_tiny.py")
BYTES = get_tokenizer("bytes")
N_SLOTS = 19   # int((0.15 + 0.005) * 128), the official max_predictions


# A numpy port of google-research/electra, pretrain/pretrain_helpers.py
# (`scatter_update`, `mask` after its two random draws, `unmask`) and
# run_pretraining.py (`PretrainingModel._get_fake_data`'s labels).

def official_scatter_update(sequence, updates, positions):
  """pretrain_helpers.scatter_update for an int [B, L] `sequence`."""
  b, l = sequence.shape
  flat = (positions + l * np.arange(b)[:, None]).reshape(-1)
  upd = np.zeros(b * l, np.int64)
  np.add.at(upd, flat, np.broadcast_to(updates, positions.shape).reshape(-1))
  cnt = np.zeros(b * l, np.int64)
  np.add.at(cnt, flat, 1)
  upd, cnt = upd.reshape(b, l), cnt.reshape(b, l)
  cnt[:, 0] = 0                          # updates to index 0 are ignored
  upd = upd // np.maximum(1, cnt)        # duplicates: floordiv of the sum
  hit = np.minimum(cnt, 1)
  return (1 - hit) * sequence + hit * upd, hit


def official_mask(input_ids, input_mask, drawn, uniform, *, mask_prob,
                  num_slots, mask_id, ignore_ids):
  """pretrain_helpers.mask, given `drawn` (tf.random.categorical's
  positions) and `uniform` (its tf.random.uniform([B, N]))."""
  candidates = input_mask.astype(bool) & ~np.isin(input_ids, ignore_ids)
  assert candidates.any(1).all()
  num_tokens = input_mask.sum(-1).astype(np.float32)
  num_to_predict = np.maximum(1, np.minimum(
      num_slots, np.round(num_tokens * mask_prob).astype(np.int32)))
  weights = (np.arange(num_slots)[None] < num_to_predict[:, None]).astype(int)
  positions = drawn * weights
  ids = np.take_along_axis(input_ids, positions, 1) * weights
  replace = positions * (uniform < 0.85)
  inputs, _ = official_scatter_update(input_ids, mask_id, replace)
  return inputs, positions, ids, weights


def official_fake_data(masked_ids, positions, ids, sampled):
  """run_pretraining.py's _get_fake_data: unmask, scatter the samples,
  label the positions that changed."""
  unmasked, _ = official_scatter_update(masked_ids, ids, positions)
  updated, hit = official_scatter_update(unmasked, sampled, positions)
  return updated, hit * (updated != unmasked)


@pytest.fixture(scope="module")
def windows():
  rng = np.random.RandomState(0)
  lengths = np.where(rng.rand(512) < 0.5, 128, rng.randint(3, 128, 512))
  tokens, mask = random_byte_windows(rng, 512, 128, lengths)
  return tokens, mask, lengths


_mask = jax.jit(electra.electra_mask, static_argnames=(
    "special_ids", "rate", "max_predictions", "mask_id", "mask_token_prob"))


def electra_mask(key, tokens, mask):
  return jax.device_get(_mask(
      jax.random.PRNGKey(key), jnp.asarray(tokens), jnp.asarray(mask),
      special_ids=BYTES.special_ids, rate=0.15, max_predictions=N_SLOTS,
      mask_id=BYTES.mask_id))


def test_mask_and_corruption_match_the_official_code(windows):
  tokens, mask, _ = windows
  sampled = np.random.RandomState(2).randint(0, 260, (512, N_SLOTS))

  @jax.jit
  def ours(tokens, mask, sampled):
    ok = electra.maskable(tokens, mask, BYTES.special_ids)
    drawn = electra.draw_positions(jax.random.PRNGKey(0), ok, N_SLOTS)
    uniform = jax.random.uniform(jax.random.PRNGKey(1), drawn.shape)
    m = electra.apply_mask(tokens, mask, ok, drawn, uniform, rate=0.15,
                           mask_id=BYTES.mask_id, mask_token_prob=0.85)
    sampled = sampled.at[:, ::3].set(m.targets[:, ::3])  # some are the truth
    return drawn, uniform, sampled, m, electra.replace_tokens(
        tokens, m.positions, m.weights, sampled)
  drawn, uniform, sampled, ours, (fake, labels) = jax.device_get(ours(
      jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(sampled, jnp.int32)))
  inputs, positions, ids, weights = official_mask(
      tokens, mask, drawn, uniform, mask_prob=0.15,
      num_slots=N_SLOTS, mask_id=BYTES.mask_id, ignore_ids=BYTES.special_ids)
  np.testing.assert_array_equal(ours.inputs, inputs)
  np.testing.assert_array_equal(ours.positions, positions)
  np.testing.assert_array_equal(ours.targets, ids)
  np.testing.assert_array_equal(ours.weights, weights)
  # Drawn with replacement: some rows hold a position twice, the case
  # where the official scatter averages.
  dup = [len(set(p[w > 0])) < (w > 0).sum() for p, w in zip(positions, weights)]
  assert sum(dup) > 20
  np.testing.assert_array_equal(sampled[:, ::3], ids[:, ::3])
  want_fake, want_labels = official_fake_data(inputs, positions, ids, sampled)
  np.testing.assert_array_equal(fake, want_fake)
  np.testing.assert_array_equal(labels, want_labels.astype(bool))


def test_gumbel_max_samples_follow_the_softmax():
  logits = jnp.asarray([[2.0, 1.0, 0.0, -1.0, -3.0], [0.0] * 5,
                        [5.0, 0.0, 0.0, 0.0, 0.0]])
  sampled = jax.jit(electra.sample_from_softmax)(
      jax.random.PRNGKey(0), jnp.broadcast_to(logits, (20000, 3, 5)))
  freq = np.stack([np.bincount(np.asarray(sampled[:, r]), minlength=5)
                   for r in range(3)]) / 20000
  np.testing.assert_allclose(freq, jax.nn.softmax(logits), atol=0.012)


def test_masking_statistics(windows):
  tokens, mask, lengths = windows
  m = electra_mask(0, tokens, mask)
  want = np.maximum(1, np.minimum(N_SLOTS, np.round(lengths * 0.15)))
  np.testing.assert_array_equal(m.weights.sum(1), want)
  chosen = m.weights > 0
  rows = np.broadcast_to(np.arange(512)[:, None], m.positions.shape)
  orig = tokens[rows, m.positions]
  new = m.inputs[rows, m.positions]
  assert not np.isin(orig[chosen], BYTES.special_ids).any()
  assert mask[rows[chosen], m.positions[chosen]].all()
  # Every chosen token is [MASK] or itself: no random replacement.
  assert ((new[chosen] == BYTES.mask_id) | (new[chosen] == orig[chosen])).all()
  touched = np.zeros_like(mask)
  touched[rows[chosen], m.positions[chosen]] = True
  np.testing.assert_array_equal(m.inputs[~touched], tokens[~touched])
  # 85% [MASK]: a position drawn in k slots is [MASK] with 1 - 0.15^k.
  k = np.zeros(mask.shape, int)
  np.add.at(k, (rows[chosen], m.positions[chosen]), 1)
  as_mask = (m.inputs[touched] == BYTES.mask_id).mean()
  want_mask = (1 - 0.15 ** k[touched]).mean()
  assert abs(as_mask - want_mask) < 0.01, (as_mask, want_mask)
  assert abs(as_mask - 0.85) < 0.02
  # Full rows: 15% of the 128 tokens (19 slots), uniform over positions
  # 1..126 with replacement (distinct count c (1 - (1 - 1/c)^19), c = 126).
  full = lengths == 128
  assert abs(m.weights[full].sum(1).mean() / 128 - 0.15) < 0.005
  distinct = touched[full].sum(1).mean()
  assert abs(distinct - 126 * (1 - (1 - 1 / 126) ** 19)) < 0.3
  hits = np.zeros(128)
  for key in range(3):
    m = electra_mask(key, tokens, mask)
    hits += np.bincount(m.positions[full[:, None] & (m.weights > 0)],
                        minlength=128)
  assert hits[0] == hits[127] == 0
  expected = hits.sum() / 126
  assert ((hits[1:127] - expected) ** 2 / expected).sum() < 200


@pytest.fixture(scope="module")
def trained():
  task = get_task(load_config(PYCODE + ":smoke"))
  tokens, mask = random_byte_windows(np.random.RandomState(0), 4, 128,
                                [128, 90, 60, 128])
  batch = {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask)}
  params, state = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
  return task, params, batch


def test_generator_is_a_quarter_wide_and_shares_the_embeddings(trained):
  task, params, _ = trained
  assert task.model.width == 32 and task.generator.width == 8
  assert task.generator.depth == task.model.depth == 1
  assert task.generator.num_heads == 1 and task.generator.mlp_dim == 32
  gen, enc = params["generator"], params["encoder"]
  assert not set(electra.SHARED_EMBEDDINGS) & set(gen)
  # One [vocab, E] table and one position table in the whole tree.
  leaves = jax.tree.leaves(params)
  assert sum(x.shape == (260, 32) for x in leaves) == 1
  assert sum(x.shape == (128, 32) for x in leaves) == 1
  assert gen["embed_project"]["kernel"].shape == (32, 8)
  assert gen["block_0"]["mlp"]["Dense_0"]["kernel"].shape == (8, 32)
  assert gen["mlm_dense"]["kernel"].shape == (8, 32)   # back to E = 32
  assert "embed_project" not in enc and "mlm_dense" not in enc
  # The generator reads the discriminator's table: changing it changes
  # the generator's logits.
  logits = jax.jit(lambda p, b: task.generator_logits(p, task.mask_tokens(
      jax.random.PRNGKey(0), b["tokens"], b["mask"])))
  moved = jax.tree.map(lambda x: x, params)
  moved["encoder"]["token_embed"]["embedding"] = (
      params["encoder"]["token_embed"]["embedding"] * 2.0)
  assert not np.allclose(logits(params, trained[2]), logits(moved, trained[2]))


def test_embedding_size_is_projected_to_each_width(trained):
  config = load_config(PYCODE + ":smoke")
  config.model.embedding_size = 16   # narrower than the width, 32
  task = get_task(config)
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0), trained[2])[0]
  enc, gen = shapes["encoder"], shapes["generator"]
  assert enc["token_embed"]["embedding"].shape == (260, 16)
  assert enc["pos_embed"].shape == (128, 16)
  assert enc["embed_project"]["kernel"].shape == (16, 32)
  assert gen["embed_project"]["kernel"].shape == (16, 8)
  assert gen["mlm_dense"]["kernel"].shape == (8, 16)
  assert sum(x.shape == (260, 16) for x in jax.tree.leaves(shapes)) == 1


def test_labels_are_original_when_the_generator_samples_the_truth(trained):
  task, params, batch = trained

  key = jax.random.PRNGKey(3)

  @jax.jit
  def run(params, batch, shift):
    def peaked(params, masked):   # the generator's logits, peaked
      del params
      return 1e4 * jax.nn.one_hot((masked.targets + shift) % 260, 260)
    task.generator_logits = peaked
    try:
      out = task.objective(params, batch["tokens"], batch["mask"], key)
    finally:
      del task.generator_logits
    # The masking the objective drew (its first key).
    return out, task.mask_tokens(jax.random.split(key)[0], batch["tokens"],
                                 batch["mask"])
  truth, _ = jax.device_get(run(params, batch, 0))
  assert truth["replaced_fraction"] == 0 and truth["sampled_accuracy"] == 1
  wrong, masked = jax.device_get(run(params, batch, 1))
  assert wrong["sampled_accuracy"] == 0
  # Then every chosen position, counted once, is labelled replaced.
  distinct = sum(len(set(p[w > 0])) for p, w in zip(masked.positions,
                                                       masked.weights))
  real = float(np.asarray(batch["mask"]).sum())
  assert distinct > 50
  assert round(float(wrong["replaced_fraction"]) * real) == distinct


def test_no_gradient_flows_through_the_sample(trained):
  task, params, batch = trained
  g = jax.jit(jax.grad(lambda p, b: task.objective(
      p, b["tokens"], b["mask"], jax.random.PRNGKey(1))["disc_loss"]))(
          params, batch)
  # The discriminator's loss reaches the generator only through the
  # sample, which carries no gradient.
  assert all(float(jnp.abs(x).max()) == 0
             for x in jax.tree.leaves(g["generator"]))
  for path in (("encoder", "block_0", "mlp", "Dense_0", "kernel"),
               ("encoder", "token_embed", "embedding"),
               ("disc_head", "out", "kernel")):
    leaf = g
    for k in path:
      leaf = leaf[k]
    assert float(jnp.abs(leaf).max()) > 0, path


@pytest.mark.parametrize("section,key,value,match", [
    ("task", "generator_size", 0.0, "task.generator_size=0.0 must be in"),
    ("task", "generator_size", 1.5, "task.generator_size=1.5 must be in"),
    ("task", "generator_layers", 0.2, "leave at least 1 of model.depth=1"),
    ("task", "disc_weight", -1.0, "task.disc_weight=-1.0 must be >= 0"),
    ("task", "mask_token_prob", 1.2, r"mask_token_prob=1.2 must be in \[0, "),
    ("task", "max_predictions", 500, "task.max_predictions=500 must be in"),
    ("model", "embedding_size", -4, "model.embedding_size=-4 must be >= 0"),
])
def test_bad_config_is_one_line(section, key, value, match):
  config = load_config(PYCODE + ":smoke")
  config[section][key] = value
  with pytest.raises(ConfigError, match=match) as e:
    get_task(config)
  assert "\n" not in str(e.value)
