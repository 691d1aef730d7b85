"""MEAP and plain CLM: the shared [MASK] positions against a numpy port of
the official script, the unmasked next-token targets, padding, the causal
mask, training on 8 devices with a bit-exact resume (MEAP and CLM -> MLM in
one process), and one-line errors."""
import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel.config import ConfigError
from maskmodel.data.tokenizers import get_tokenizer
from maskmodel.tasks import get_task
from maskmodel.tasks import meap

MEAP = os.path.join(ROOT, "configs", "meap", "pycode_tiny.py")
CLM_MLM = os.path.join(ROOT, "configs", "clm_mlm", "pycode_tiny.py")
BYTES = get_tokenizer("bytes")
SEQ_LEN = 128


def official_meap_step(train_data, block_size, mask_ratio, mask_id,
                       step_count):
  """scitix/MEAP, MEAP-Pretain/pretrained/meap_1b.py, `train`: the input
  and target lines of one step (and `get_cycled_seed`), ported to numpy.
  Returns (input_ids, targets, mask_positions)."""
  random.seed(50 + step_count % 51)
  num_masks = max(1, int(block_size * mask_ratio))
  positions = random.sample(range(0, block_size - 1), num_masks)
  input_ids = train_data[:, 0:block_size].copy()
  input_ids[:, positions] = mask_id
  return input_ids, train_data[:, 1:block_size + 1], positions


def windows(rng, lengths):
  """Byte windows ([CLS] ... [SEP] + padding) of random content."""
  out = [BYTES.window(rng.randint(0, 256, n - 2), SEQ_LEN) for n in lengths]
  return np.stack([t for t, _ in out]), np.stack([m for _, m in out])


@pytest.fixture(scope="module")
def setup():
  """The MEAP and CLM smoke tasks (width 32, depth 1), shared params, and a
  batch of 4 full windows and 2 padded ones."""
  task = get_task(load_config(MEAP + ":smoke"))
  clm = get_task(load_config(MEAP + ":smoke,clm"))
  tokens, mask = windows(np.random.RandomState(0), [128] * 4 + [60, 9])
  batch = {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask)}
  params, _ = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
  losses = {t: jax.jit(lambda tokens, t=t: t.loss(
      params, {}, {"tokens": tokens, "mask": mask}, jax.random.PRNGKey(1),
      4)[0]) for t in (task, clm)}
  return task, clm, params, tokens, mask, losses


def test_mask_positions_match_the_official_script(setup):
  task, _, _, tokens, mask, _ = setup
  block = SEQ_LEN - 1
  assert task.num_masked == int(0.15 * block) == 19
  for size, rate in [(127, 0.15), (2048, 0.15), (100, 0.05), (5, 0.1)]:
    _, _, official = official_meap_step(
        np.zeros((1, size + 1), np.int32), size, rate, 0, 0)
    assert meap.num_masked(size, rate) == len(official)
  lm_batch = jax.jit(task.lm_batch)
  inputs, input_mask, targets, weights = jax.device_get(
      lm_batch(tokens, mask, jax.random.PRNGKey(3), 7))
  hit = inputs != tokens[:, :-1]
  # The same 19 positions in every sequence (a [MASK] never equals a byte).
  np.testing.assert_array_equal(hit, np.broadcast_to(hit[0], hit.shape))
  (positions,) = np.nonzero(hit[0])
  assert len(positions) == 19 and positions.max() < block - 1
  assert (inputs[hit] == BYTES.mask_id).all()
  # The official lines give the same batch from these positions, and the
  # targets are the unmasked next tokens.
  np.testing.assert_array_equal(targets, tokens[:, 1:])
  port = tokens.copy()
  port[:, :block][:, positions] = BYTES.mask_id
  np.testing.assert_array_equal(inputs, port[:, :block])
  np.testing.assert_array_equal(weights, mask[:, 1:])
  np.testing.assert_array_equal(input_mask, mask[:, :-1])
  # Positions cycle with the official period of 51 steps, over [0, block-1).
  pos = jax.jit(task.positions)
  key = jax.random.PRNGKey(9)
  at = lambda s: np.sort(jax.device_get(pos(key, s)))
  np.testing.assert_array_equal(at(7), positions)
  np.testing.assert_array_equal(at(7 + 51), at(7))
  assert not np.array_equal(at(8), at(7))
  seen = np.concatenate([at(s) for s in range(51)])
  assert seen.min() == 0 and seen.max() == block - 2


def test_clm_is_meap_at_rate_0_and_pads_carry_no_loss(setup):
  task, clm, params, tokens, mask, losses = setup
  loss = float(losses[clm](tokens))
  # Plain next-token cross-entropy over the real targets, from the causal
  # model's logits, in numpy.
  logits = np.asarray(jax.jit(lambda ids, m: task.model.apply(
      {"params": params["encoder"]}, ids, m, causal=True)["mlm_logits"])(
          tokens[:, :-1], mask[:, :-1]), np.float64)
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
  w = mask[:, 1:]
  np.testing.assert_allclose(loss, (ce * w).sum() / (w.sum() + 1e-5),
                             rtol=1e-6)
  # MEAP masks something, so its loss differs.
  assert abs(float(losses[task](tokens)) - loss) > 1e-5
  # Padding: other ids in the pad region change no loss.
  noisy = np.where(mask, tokens, np.random.RandomState(2).randint(
      0, 256, tokens.shape)).astype(np.int32)
  assert not np.array_equal(noisy, tokens)
  for t in (task, clm):
    assert float(losses[t](tokens)) == float(losses[t](noisy))


def test_causal_attention_is_exact(setup):
  task, _, params, tokens, mask, _ = setup
  apply = jax.jit(lambda ids: task.model.apply(
      {"params": params["encoder"]}, ids, mask[:, :-1],
      causal=True)["mlm_logits"])
  ids = tokens[:, :-1]
  changed = ids.copy()
  changed[:, 40:] = (changed[:, 40:] + 1) % 256
  a, b = jax.device_get(apply(ids)), jax.device_get(apply(changed))
  np.testing.assert_array_equal(a[:4, :40], b[:4, :40])
  assert np.abs(a[:4, 40:] - b[:4, 40:]).min() > 0


def test_both_tasks_train_on_8_devices_and_resume_bit_exactly(tmp_path):
  meap_final, clm_mlm_final = assert_resumes_bit_exactly(
      MEAP + ":smoke", tmp_path / "meap",
      (CLM_MLM + ":smoke", tmp_path / "clm_mlm"))
  assert 0 < meap_final["clm_accuracy"] <= 1
  assert np.isfinite(meap_final["clm_loss"])
  assert 0 < clm_mlm_final["mlm_accuracy"] <= 1
  assert np.isfinite(clm_mlm_final["mlm_loss"])


@pytest.mark.parametrize("variant,override,match", [
    ("smoke", dict(mask_rate=1.0), r"task.mask_rate=1.0 must be in \[0, 1\)"),
    ("smoke", dict(mask_rate=-0.1), r"task.mask_rate=-0.1 must be in"),
    ("smoke,clm", dict(mask_rate=0.15), "use task.name='meap'"),
    ("smoke", dict(mask_cycle=-1), "task.mask_cycle=-1 must be an int"),
])
def test_bad_config_is_one_line(variant, override, match):
  config = load_config(f"{MEAP}:{variant}")
  config.task.update(override)
  with pytest.raises(ConfigError, match=match) as e:
    get_task(config)
  assert "\n" not in str(e.value)
