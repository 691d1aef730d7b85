"""CLM -> MLM: the causal LM loss before the switch step, the bidirectional
MLM loss from it on, the switch at round(clm_fraction * total_steps), and
one-line errors. (Its 8-device train and resume runs in test_meap.py, in
the same process as MEAP's.)"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, load_config
from maskmodel.config import ConfigError
from maskmodel.data.tokenizers import get_tokenizer
from maskmodel.tasks import get_task

CLM_MLM = os.path.join(ROOT, "configs", "clm_mlm", "pycode_tiny.py")
BYTES = get_tokenizer("bytes")


@pytest.fixture(scope="module")
def setup():
  """The smoke task with a 10-step budget and clm_fraction 0.25 (switch at
  round(2.5) = 2), its params, 4 full random windows and the jitted loss."""
  config = load_config(CLM_MLM + ":smoke")
  config.total_steps = 10
  config.task.clm_fraction = 0.25
  task = get_task(config)
  rng = np.random.RandomState(0)
  out = [BYTES.window(rng.randint(0, 256, 126), 128) for _ in range(4)]
  tokens = np.stack([t for t, _ in out])
  mask = np.stack([m for _, m in out])
  params, _ = jax.jit(task.init)(jax.random.PRNGKey(0), {
      "tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask)})
  loss = jax.jit(lambda tokens, step: task.loss(
      params, {}, {"tokens": tokens, "mask": mask}, jax.random.PRNGKey(5),
      step))
  return task, params, tokens, mask, loss


def test_switch_step_is_rounded_fraction_of_the_budget(setup):
  task, _, tokens, _, loss = setup
  assert task.switch == 2 == round(0.25 * 10)
  phases = [float(loss(tokens, s)[1][0]["mlm_phase"]) for s in range(4)]
  assert phases == [0, 0, 1, 1]
  for fraction, total, want in [(0.5, 6, 3), (0.75, 10, 8), (0.0, 10, 0),
                                (1.0, 7, 7)]:
    config = load_config(CLM_MLM + ":smoke")
    config.total_steps, config.task.clm_fraction = total, fraction
    assert get_task(config).switch == want


@functools.partial(jax.jit, static_argnums=0)
def references(task, params, tokens, mask, rng):
  """What each phase should compute, from the model directly: next-token
  cross-entropy with causal and with bidirectional attention; BERT's
  masking of `tokens` at the task's rate, its masked-token cross-entropy
  with bidirectional attention, and the logits at the masked positions
  with causal attention."""
  apply = lambda ids, m, causal, pos=None: task.model.apply(
      {"params": params["encoder"]}, ids, m, causal=causal,
      mlm_positions=pos)["mlm_logits"]
  mean = lambda ce, w: (ce * w).sum() / (w.sum() + 1e-5)
  ce = optax.softmax_cross_entropy_with_integer_labels
  w = mask[:, 1:]
  clm = [mean(ce(apply(tokens[:, :-1], mask[:, :-1], c), tokens[:, 1:]), w)
         for c in (True, False)]
  m = task.mask_tokens(rng, tokens, mask)
  mlm = mean(ce(apply(m.inputs, m.mask, False, m.positions), m.targets),
             m.weights)
  return clm, m, mlm, apply(m.inputs, m.mask, True, m.positions)


def test_clm_before_the_switch_mlm_after(setup):
  task, params, tokens, mask, loss = setup
  rng = jax.random.PRNGKey(5)
  (causal, bidirectional), m, mlm, _ = jax.device_get(
      references(task, params, tokens, mask, rng))
  assert abs(causal - bidirectional) > 1e-5
  for step in (0, 1):
    np.testing.assert_allclose(float(loss(tokens, step)[0]), causal,
                               rtol=1e-6)
  # From the switch on: BERT's masking at 40%, bidirectional attention.
  np.testing.assert_array_equal(m.weights.sum(1), round(0.4 * 128))
  for step in (2, 9):
    np.testing.assert_allclose(float(loss(tokens, step)[0]), mlm, rtol=1e-6)
  # A token after every masked position changes the MLM loss only through
  # bidirectional attention: positions 100-126 hold specials (real tokens
  # that are never masked), and one of them changes.
  late = tokens.copy()
  late[:, 100:127] = BYTES.mask_id
  changed = late.copy()
  changed[:, 120] = BYTES.sep_id
  assert float(loss(changed, 5)[0]) != float(loss(late, 5)[0])
  (late_clm, _), ml, _, late_causal = jax.device_get(
      references(task, params, late, mask, rng))
  (changed_clm, _), mc, _, changed_causal = jax.device_get(
      references(task, params, changed, mask, rng))
  np.testing.assert_array_equal(ml.positions, mc.positions)
  assert ml.positions[ml.weights > 0].max() < 100
  # With causal attention, the logits at the masked positions would not
  # have moved.
  np.testing.assert_array_equal(late_causal, changed_causal)
  # The CLM phase's loss on the changed tokens is still the causal one.
  np.testing.assert_allclose(float(loss(changed, 0)[0]), changed_clm,
                             rtol=1e-6)
  assert late_clm != changed_clm


@pytest.mark.parametrize("override,match", [
    (dict(clm_fraction=1.5), r"task.clm_fraction=1.5 must be in \[0, 1\]"),
    (dict(clm_fraction=-0.25), r"task.clm_fraction=-0.25 must be in"),
    (dict(mlm_rate=0.0), r"task.mlm_rate=0.0 must be in \(0, 1\)"),
    (dict(mlm_rate=1.0), r"task.mlm_rate=1.0 must be in \(0, 1\)"),
])
def test_bad_config_is_one_line(override, match):
  config = load_config(CLM_MLM + ":smoke")
  config.task.update(override)
  with pytest.raises(ConfigError, match=match) as e:
    get_task(config)
  assert "\n" not in str(e.value)
