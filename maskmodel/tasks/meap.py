"""Causal language modeling, plain ("clm") and mask-enhanced ("meap").

"meap": MEAP (Zhuang et al. 2025, "Mask-Enhanced Autoregressive
Prediction: Pay Less Attention to Learn More", Sec. 3.1), as its official
pretraining script does it (scitix/MEAP, `MEAP-Pretain/pretrained/
meap_1b.py`, the training loop):

- a block of `L` input tokens `x_1..x_L` predicts the next tokens
  `x_2..x_{L+1}`; here a window of `seq_len` tokens gives `L = seq_len - 1`
  inputs and their next tokens as targets;
- `K = max(1, int(mask_rate * L))` input positions (`mask_rate` 0.15), drawn
  uniformly without replacement from `0..L-2` (the last input position is
  never masked), are *the same for every sequence of the batch*, and the
  input tokens there become [MASK] (the tokenizer's `mask_id`; the official
  code adds a [MASK] token to the LLaMA tokenizer, every tokenizer here has
  one);
- the targets are not masked: the loss is the ordinary causal LM loss over
  all positions,

    L_MEAP = -1/|T| sum_{t in T} log p(x_{t+1} | m(x)_{<=t}),

  with `m(x)` the masked input and T the positions whose target is a real
  token (the official blocks are packed and have no padding; here padded
  targets carry no loss).

The official script seeds Python's `random` with `50 + step % 51` before
each optimizer step (`get_cycled_seed`), so its mask positions repeat with
a period of 51 steps; `task.mask_cycle` (default 51) does the same with
JAX keys folded from the run's seed and `step % mask_cycle` (0: fresh
positions every step from the step's key). The draw itself is JAX's, not
Python's Mersenne Twister, so the positions are not the official ones.

"clm": the same task with `mask_rate` 0 and nothing masked: plain
next-token prediction at the same compute, the baseline MEAP is compared
against.

Attention is causal throughout; the feature evals mean-pool the causal
model's final states over real tokens (the model as trained). The evaluator
"clm" reports next-token loss and accuracy on the test split, with no
[MASK] in the input (the official `validate`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from maskmodel.config import ConfigError
from maskmodel.tasks.mlm import (SequenceTask, eval_split_means,
                                 weighted_cross_entropy)

# get_cycled_seed in the official script: 51 seeds, one per step, cycled.
OFFICIAL_MASK_CYCLE = 51


def num_masked(block_len: int, rate: float) -> int:
  """The official count, `max(1, int(block_len * rate))`, and 0 for CLM."""
  return max(1, int(block_len * rate)) if rate > 0 else 0


def meap_positions(rng, block_len: int, count: int):
  """`count` distinct positions, uniform over `[0, block_len - 1)`, one set
  for the whole batch (`random.sample(range(0, block_size - 1), n)`)."""
  scores = jax.random.uniform(rng, (block_len - 1,))
  return jax.lax.top_k(scores, count)[1].astype(jnp.int32)


def meap_inputs(tokens, positions, mask_id: int):
  """Every sequence's inputs at `positions` become `mask_id`."""
  return tokens.at[:, positions].set(jnp.asarray(mask_id, tokens.dtype))


def next_token_split(tokens, mask):
  """A window `[B, seq_len]` as causal LM inputs `[B, L]` (with their key
  mask), targets `[B, L]` (the next tokens) and target weights (1 where the
  target is a real token), `L = seq_len - 1`."""
  return (tokens[:, :-1], mask[:, :-1], tokens[:, 1:],
          mask[:, 1:].astype(jnp.float32))


def causal_lm_loss(model, params, inputs, input_mask, targets, weights,
                   causal=True):
  """(loss, accuracy, count): token-mean cross-entropy of the LM head's
  next-token logits over the weighted targets."""
  logits = model.apply({"params": params}, inputs, input_mask,
                       causal=causal)["mlm_logits"]
  return weighted_cross_entropy(logits, targets, weights)


class MEAPTask(SequenceTask):
  """MEAP (module docstring): causal LM with `task.mask_rate` of the input
  positions, shared by the batch, replaced by [MASK]."""
  default_rate = 0.15

  def __init__(self, config):
    super().__init__(config)
    t = config.task
    self.rate = t.get("mask_rate", self.default_rate)
    if not 0 <= self.rate < 1:
      raise ConfigError(f"task.mask_rate={self.rate} must be in [0, 1) (MEAP "
                        "uses 0.15; 0 is plain CLM, task.name='clm').")
    self.block_len = self.seq_len - 1
    if self.block_len < 2:
      raise ConfigError(f"data.seq_len={self.seq_len} leaves no position to "
                        "mask; set data.seq_len >= 3.")
    self.num_masked = num_masked(self.block_len, self.rate)
    self.mask_cycle = t.get("mask_cycle", OFFICIAL_MASK_CYCLE)
    if not (isinstance(self.mask_cycle, int) and self.mask_cycle >= 0):
      raise ConfigError(f"task.mask_cycle={self.mask_cycle!r} must be an int "
                        ">= 0 (51 as the official script; 0: fresh positions "
                        "every step).")

  def positions(self, rng, step):
    """This step's mask positions: from `step % mask_cycle` under the
    run's seed (the official cycle), or from the step's own key."""
    if self.mask_cycle:
      rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed),
                               step % self.mask_cycle)
    return meap_positions(rng, self.block_len, self.num_masked)

  def lm_batch(self, tokens, mask, rng, step):
    """`(inputs, input_mask, targets, weights)` of a window batch: the next
    tokens as targets, and [MASK] at this step's positions in the inputs."""
    inputs, input_mask, targets, weights = next_token_split(tokens, mask)
    if self.num_masked:
      inputs = meap_inputs(inputs, self.positions(rng, step),
                           self.tokenizer.mask_id)
    return inputs, input_mask, targets, weights

  def loss(self, params, state, batch, rng, step):
    loss, accuracy, _ = causal_lm_loss(
        self.model, params["encoder"],
        *self.lm_batch(batch["tokens"], batch["mask"], rng, step))
    return loss, ({"loss": loss, "next_token_accuracy": accuracy}, state)

  def features(self, params, state, inputs):
    del state
    return self.model.apply({"params": params["encoder"]}, inputs["tokens"],
                            inputs["mask"], causal=True)["pooled"]

  def clm_objective(self, params, tokens, mask, row_weight=None):
    """(loss, accuracy, count) of plain next-token prediction (no [MASK]),
    with `row_weight [B]` dropping the padding rows of an eval batch."""
    inputs, input_mask, targets, weights = next_token_split(tokens, mask)
    if row_weight is not None:
      weights = weights * row_weight[:, None]
    return causal_lm_loss(self.model, params["encoder"], inputs, input_mask,
                          targets, weights)

  def evaluators(self):
    return {"clm": clm_eval}


class CLMTask(MEAPTask):
  """Plain causal LM: MEAP with nothing masked (module docstring)."""
  default_rate = 0.0

  def __init__(self, config):
    super().__init__(config)
    if self.rate:
      raise ConfigError(f"task.name='clm' masks nothing, but task.mask_rate="
                        f"{self.rate}; use task.name='meap' for MEAP or drop "
                        "task.mask_rate.")


@functools.partial(jax.jit, static_argnums=0)
def _next_token_metrics(task, params, tokens, mask, row_weight, rng):
  del rng  # nothing is drawn
  return task.clm_objective(params, tokens, mask, row_weight)


def clm_eval(ctx, params, task_state, cache):
  """Next-token loss and accuracy over every real target of the test split,
  causal attention, no [MASK] in the input."""
  del task_state, cache
  return eval_split_means(ctx, params, _next_token_metrics, "clm")
