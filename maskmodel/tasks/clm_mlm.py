"""CLM then MLM on one set of params ("clm_mlm").

Gisserot-Boukhlef et al. 2025, "Should We Still Pretrain Encoders with
Masked Language Modeling?" (arXiv 2507.00994), its biphasic strategy:
under a fixed budget of `total_steps` optimizer steps, the first
`task.clm_fraction` (0.5 here; the paper studies 25-75%) train causal
language modeling with causal attention, the rest masked language modeling
with bidirectional attention, the same model and params throughout:

    L(step) = L_CLM = -1/|T| sum_t log p(x_{t+1} | x_{<=t})
                                      if step < round(f * total_steps),
            = L_MLM = -1/|M| sum_{t in M} log p(x_t | x~)   otherwise,

with `x~` the input after BERT's masking of `task.mlm_rate` (0.4, the
paper's MLM mask rate) of the tokens, M the masked positions.

We found no released training code (the paper links its models,
"MLMvsCLM" on Hugging Face), so two details are our choices: the MLM
phase corrupts its chosen tokens with BERT's 80/10/10 ([MASK] / random /
kept; the options `task.mask_token_prob`, `task.random_token_prob`) through
`mlm.bert_mask`, and the CLM phase is `meap`'s plain next-token loss
(window of `seq_len` tokens: `seq_len - 1` inputs and their next tokens).
The learning-rate schedule runs once over the whole budget, and neither
params nor optimizer state are reset at the switch.

One jitted program: the phase depends on the traced `step`, so the loss is
`jax.lax.cond(step >= switch, mlm, clm)`, two branches each with a static
attention flag (the kernel entry point's `causal` is static, and its
`bias` is per key, so causality cannot be an additive bias there). Only
the taken branch runs.

The feature evals pool the bidirectional encoder (what the MLM phase
trains); the evaluators are "mlm" (masked-token loss and accuracy at
`mlm_rate`, bidirectional) and "clm" (next-token loss and accuracy,
causal).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel.config import ConfigError
from maskmodel.tasks import meap
from maskmodel.tasks.mlm import MLMTask, mlm_eval


def switch_step(clm_fraction: float, total_steps: int) -> int:
  """The first MLM step: `round(clm_fraction * total_steps)`."""
  return int(round(clm_fraction * total_steps))


class CLMThenMLMTask(MLMTask):
  """CLM for the first `task.clm_fraction` of the steps, then MLM at
  `task.mlm_rate` (module docstring)."""
  rate_key = "mlm_rate"
  default_rate = 0.4

  def __init__(self, config):
    super().__init__(config)
    self.clm_fraction = config.task.get("clm_fraction", 0.5)
    if not 0 <= self.clm_fraction <= 1:
      raise ConfigError(f"task.clm_fraction={self.clm_fraction} must be in "
                        "[0, 1]: the share of total_steps trained with CLM "
                        "(the paper studies 0.25-0.75).")
    self.switch = switch_step(self.clm_fraction, config.total_steps)

  def clm_objective(self, params, tokens, mask, row_weight=None):
    """(loss, accuracy, count) of next-token prediction, causal attention."""
    inputs, input_mask, targets, weights = meap.next_token_split(tokens, mask)
    if row_weight is not None:
      weights = weights * row_weight[:, None]
    return meap.causal_lm_loss(self.model, params["encoder"], inputs,
                               input_mask, targets, weights)

  def loss(self, params, state, batch, rng, step):
    tokens, mask = batch["tokens"], batch["mask"]
    clm = lambda: self.clm_objective(params, tokens, mask)[:2]
    mlm = lambda: self.objective(params, tokens, mask, rng)[:2]
    mlm_phase = jnp.asarray(step >= self.switch)
    loss, accuracy = jax.lax.cond(mlm_phase, mlm, clm)
    return loss, ({"loss": loss, "accuracy": accuracy,
                   "mlm_phase": mlm_phase.astype(jnp.float32)}, state)

  def evaluators(self):
    return {"mlm": mlm_eval, "clm": meap.clm_eval}
