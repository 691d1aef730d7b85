"""Masked language modeling on token sequences: BERT's MLM and n-gram masking.

"mlm": BERT (Devlin et al. 2019, Sec. 3.1 "Task #1: Masked LM" and
Appendix A.1), as google-research/bert's `create_pretraining_data.py`
(`create_masked_lm_predictions`) and `run_pretraining.py`
(`get_masked_lm_output`) do it:

- each sequence predicts `min(max_predictions, max(1, round(len * rate)))`
  tokens, `len` counting [CLS] and [SEP] but not padding, drawn uniformly
  without replacement among its tokens other than pad, [CLS], [SEP] (and
  [MASK] / [UNK]); `rate` is `task.mask_rate` (15%; 40% for the CLM -> MLM
  study of "Should We Still Pretrain Encoders with MLM?");
- each chosen token becomes [MASK] with probability 0.8, a token drawn
  uniformly from the whole vocabulary with 0.1, and stays itself with 0.1;
- the loss is the cross-entropy of the tied MLM head at the chosen
  positions, averaged over all predictions in the batch.

Static shapes: BERT's own format. Every sequence carries `max_predictions`
prediction slots (`masked_lm_positions`, `_ids`, `_weights`); the first
`count` slots are real (weight 1), the rest weight 0. The draw is
rank-based: uniform scores, non-maskable positions ranked last, the
`max_predictions` best positions in `lax.top_k`, of which the first `count`
are taken: a uniform subset of size `count`, as BERT's shuffle-then-take.
It runs on the device, inside the jitted step, from the loop's per-step
RNG, so a resumed run draws the same masks. `bert_mask` is the pure
function. (ELECTRA's masking draws its positions with replacement, as its
official code does: `maskmodel/tasks/electra.py`.)

"ngram_mlm": n-gram masking in the style of ERNIE-Gram (Xiao et al. 2021,
Sec. 3.2, "explicitly n-gram masked language modeling"): a contiguous
n-gram is replaced by a *single* [MASK] and the model predicts its tokens.
ERNIE-Gram's pretraining code is not released (PAPERS.md), so these are our
choices, each a config option:

- n-gram lengths: a geometric distribution truncated to `[1, ngram_max]`
  and renormalized, P(n) proportional to p (1 - p)^(n - 1) (SpanBERT's
  span-length distribution, Joshi et al. 2020, Sec. 3.1), with p =
  `task.ngram_p` = 0.2 and `task.ngram_max` = 3;
- where: the tokens after [CLS] are cut into consecutive segments of such
  lengths, and `round(len * rate / E[n])` (at least 1) segments that hold
  only maskable tokens are drawn uniformly, so `rate` of the tokens is
  masked on average and the masked lengths stay i.i.d. from that
  distribution;
- the input: each masked n-gram collapses to one [MASK]; the tokens after
  it shift left and the freed positions at the end become padding (static
  shape, `mask` False there);
- the prediction: from the final hidden state h at the n-gram's [MASK],
  token j of the n-gram (j < n) is predicted by the tied MLM head applied
  to h + e_j, with e_j a learned offset embedding per position in the
  n-gram (`ngram_offsets`, `[ngram_max, width]`); the loss is the
  cross-entropy over all n-gram tokens of the batch. ERNIE-Gram's n-gram
  lexicon and its generator are not part of this task.

Both tasks pool the encoder's final states over real tokens for the
feature evals (`features`), and add the evaluator "mlm": the masked-token
loss and accuracy on the test split, with the run's seed.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from maskmodel.config import ConfigError
from maskmodel.data import sequences
from maskmodel.models import get_model
from maskmodel.models import seq as seq_lib
from maskmodel.tasks.base import TaskBase


class MaskedTokens(NamedTuple):
  """A masked batch: `inputs [B, N]` (the corrupted ids, with `mask [B, N]`
  True on real tokens), and per prediction `positions [B, M]` (into
  `inputs`), `targets [B, M, ...]` (the original ids) and `weights` (1 for
  a real prediction, 0 for a padding slot), shaped like `targets`."""
  inputs: jax.Array
  mask: jax.Array
  positions: jax.Array
  targets: jax.Array
  weights: jax.Array


def maskable(tokens, mask, special_ids):
  """True where a token may be masked: real, and none of `special_ids`."""
  return mask & ~jnp.isin(tokens, jnp.asarray(special_ids, tokens.dtype))


def num_to_predict(lengths, rate: float, max_predictions: int):
  """BERT's count per sequence: `min(max_predictions, max(1, round(len *
  rate)))`, rounding half to even as Python's `round`."""
  count = jnp.round(lengths.astype(jnp.float32) * rate).astype(jnp.int32)
  return jnp.minimum(max_predictions, jnp.maximum(1, count))


def bert_mask(rng, tokens, mask, *, special_ids, rate: float,
              max_predictions: int, vocab_size: int, mask_id: int,
              mask_prob: float = 0.8, random_prob: float = 0.1
              ) -> MaskedTokens:
  """BERT's masking (`create_masked_lm_predictions`), with static shapes.

  `tokens [B, N]`, `mask [B, N]` True on real tokens. Each sequence has
  `num_to_predict(len)` predictions (fewer only if it has fewer maskable
  tokens), in `max_predictions` slots. A chosen token becomes `mask_id`
  with `mask_prob`, a uniform id in `[0, vocab_size)` with `random_prob`,
  and stays itself otherwise.
  """
  b, n = tokens.shape
  ok = maskable(tokens, mask, special_ids)
  count = jnp.minimum(num_to_predict(mask.sum(1), rate, max_predictions),
                      ok.sum(1))
  pick_rng, kind_rng, token_rng = jax.random.split(rng, 3)
  scores = jnp.where(ok, jax.random.uniform(pick_rng, (b, n)), -1.0)
  _, positions = jax.lax.top_k(scores, max_predictions)
  positions = positions.astype(jnp.int32)
  weights = jnp.arange(max_predictions)[None] < count[:, None]
  targets = jnp.take_along_axis(tokens, positions, axis=1)
  u = jax.random.uniform(kind_rng, (b, max_predictions))
  random_ids = jax.random.randint(token_rng, (b, max_predictions), 0,
                                  vocab_size, tokens.dtype)
  new = jnp.where(u < mask_prob, jnp.asarray(mask_id, tokens.dtype),
                  jnp.where(u < mask_prob + random_prob, random_ids, targets))
  new = jnp.where(weights, new, targets)
  inputs = tokens.at[jnp.arange(b)[:, None], positions].set(new)
  return MaskedTokens(inputs, mask, positions, targets,
                      weights.astype(jnp.float32))


def ngram_length_probs(p: float, max_n: int) -> np.ndarray:
  """P(n) for n = 1..max_n: geometric(p) truncated to max_n, renormalized."""
  probs = p * (1 - p) ** np.arange(max_n)
  return probs / probs.sum()


def ngram_mask(rng, tokens, mask, *, special_ids, rate: float, p: float,
               max_n: int, max_ngrams: int, mask_id: int, pad_id: int
               ) -> MaskedTokens:
  """N-gram masking with each n-gram collapsed to one [MASK] (module
  docstring). Returns `positions [B, G]` (each n-gram's [MASK] in the
  collapsed `inputs`), `targets [B, G, max_n]` and their `weights`, with G
  = `max_ngrams` slots."""
  b, n = tokens.shape
  rows = jnp.arange(b)[:, None]
  ok = maskable(tokens, mask, special_ids)
  len_rng, pick_rng = jax.random.split(rng)
  # Segments of i.i.d. lengths tile positions 1.. (after [CLS]); n of them
  # always reach past the end.
  probs = ngram_length_probs(p, max_n)
  seg_len = jax.random.categorical(len_rng, jnp.log(jnp.asarray(probs)),
                                   shape=(b, n)).astype(jnp.int32) + 1
  seg_start = 1 + jnp.cumsum(seg_len, axis=1) - seg_len   # [B, S]
  inside = seg_start < n
  starts_flag = jnp.zeros((b, n + 1), jnp.int32).at[
      rows, jnp.where(inside, seg_start, n)].set(1)[:, :n]
  seg_of = jnp.cumsum(starts_flag, axis=1) - 1            # [B, N]; -1: [CLS]
  seg_index = jnp.maximum(seg_of, 0)
  in_seg = seg_of >= 0
  ok_count = jnp.zeros((b, n), jnp.int32).at[rows, seg_index].add(
      (ok & in_seg).astype(jnp.int32))
  eligible = inside & (ok_count == seg_len)
  # How many n-grams: rate * len / E[n] on average masks `rate` of tokens.
  mean_len = float((probs * np.arange(1, max_n + 1)).sum())
  count = jnp.round(mask.sum(1) * rate / mean_len).astype(jnp.int32)
  count = jnp.minimum(jnp.minimum(jnp.maximum(count, 1), max_ngrams),
                      eligible.sum(1))
  scores = jnp.where(eligible, jax.random.uniform(pick_rng, (b, n)), -1.0)
  _, chosen = jax.lax.top_k(scores, max_ngrams)           # [B, G] segments
  picked = jnp.arange(max_ngrams)[None] < count[:, None]
  selected = jnp.zeros((b, n), bool).at[rows, chosen].set(picked)
  # Collapse: an n-gram's first token becomes [MASK], the others go.
  pos = jnp.arange(n)[None]
  in_selected = in_seg & selected[rows, seg_index]
  is_start = pos == seg_start[rows, seg_index]
  keep = ~in_selected | is_start
  source = jnp.where(in_selected, jnp.asarray(mask_id, tokens.dtype), tokens)
  new_index = jnp.cumsum(keep, axis=1) - 1
  dest = jnp.where(keep, new_index, n)                    # n: dropped
  inputs = jnp.full((b, n + 1), pad_id, tokens.dtype).at[rows, dest].set(
      source)[:, :n]
  new_mask = jnp.zeros((b, n + 1), bool).at[rows, dest].set(mask)[:, :n]
  # Targets: each chosen n-gram's tokens, from its start.
  start = seg_start[rows, chosen]                         # [B, G]
  length = seg_len[rows, chosen]
  offsets = jnp.arange(max_n)[None, None]
  idx = jnp.minimum(start[..., None] + offsets, n - 1)    # [B, G, max_n]
  targets = tokens[jnp.arange(b)[:, None, None], idx]
  weights = picked[..., None] & (offsets < length[..., None])
  positions = new_index[rows, jnp.minimum(start, n - 1)].astype(jnp.int32)
  return MaskedTokens(inputs, new_mask, positions, targets,
                      weights.astype(jnp.float32))


def weighted_cross_entropy(logits, targets, weights):
  """BERT's `get_masked_lm_output`: sum of weighted token losses over
  (sum of weights + 1e-5). Returns (loss, accuracy over the real
  predictions, their number)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  loss = (ce * weights).sum() / (weights.sum() + 1e-5)
  correct = (logits.argmax(-1) == targets).astype(jnp.float32)
  accuracy = (correct * weights).sum() / jnp.maximum(weights.sum(), 1.0)
  return loss, accuracy, weights.sum()


def sequence_data(config, model_name: str = "seq", hint: str = ""):
  """`(tokenizer, seq_len)` of a task on token sequences, after the checks
  every such task needs: a sequence corpus, `model.name == model_name`
  (`hint` is added to that error), a vocabulary that holds the tokenizer's
  ids and room for `data.seq_len` positions; each failure is one
  ConfigError naming the fix."""
  d, m, t = config.data, config.model, config.task
  if d.name not in sequences.CORPORA:
    raise ConfigError(f"task {t.name!r} reads token sequences, and "
                      f"data.name={d.name!r} is not a sequence corpus; use "
                      f"one of {sorted(sequences.CORPORA)}.")
  if m.name != model_name:
    raise ConfigError(f"task {t.name!r} needs model.name={model_name!r}, not "
                      f"{m.name!r}{hint}.")
  try:
    tokenizer = sequences.corpus_tokenizer(d)
  except sequences.CorpusError as e:
    raise ConfigError(str(e)) from None
  if m.vocab_size < tokenizer.vocab_size:
    raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the "
                      f"{tokenizer.name} tokenizer's {tokenizer.vocab_size} "
                      f"ids; set model.vocab_size={tokenizer.vocab_size}.")
  seq_len = d.get("seq_len", 128)
  if seq_len > m.max_len:   # the model's own check_length, as config
    raise ConfigError(f"data.seq_len={seq_len} is longer than the model's "
                      f"model.max_len={m.max_len} positions; set "
                      f"data.seq_len <= {m.max_len} or model.max_len >= "
                      f"{seq_len}.")
  return tokenizer, seq_len


class SequenceTask(TaskBase):
  """What every task on token sequences shares: the corpus, tokenizer and
  model checks, a `SeqModel` with its tied LM head under "encoder", the
  token records, and the features the evals pool (bidirectional)."""

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    self.tokenizer, self.seq_len = sequence_data(config)
    model_config = ml_collections.ConfigDict(m.to_dict())
    model_config.mlm_head = True
    self.model = get_model("seq").build(model_config, num_classes=0)

  # Contract ------------------------------------------------------------------

  def preprocess(self, record, rng, train):
    del rng, train   # masking is drawn on the device, in `loss`
    seq_lib.check_token_ids(record["tokens"], self.model.vocab_size)
    return {"tokens": record["tokens"], "mask": record["mask"],
            "label": record["label"]}

  def init(self, rng, batch):
    params = self.model.init(rng, batch["tokens"], batch["mask"])["params"]
    return {"encoder": params}, {}

  def features(self, params, state, inputs):
    del state
    return self.model.apply({"params": params["encoder"]}, inputs["tokens"],
                            inputs["mask"])["pooled"]

  def encoder_params(self, params):
    return params["encoder"]


class MLMTask(SequenceTask):
  """BERT's masked LM (module docstring). Task contract: `init`, `loss`,
  `preprocess`, `features`, `encoder_params`, `evaluators`. The mask rate
  is `task.<rate_key>` (default `default_rate`)."""
  rate_key = "mask_rate"
  default_rate = 0.15

  def __init__(self, config):
    super().__init__(config)
    t, key = config.task, self.rate_key
    self.rate = t.get(key, self.default_rate)
    if not 0 < self.rate < 1:
      raise ConfigError(f"task.{key}={self.rate} must be in (0, 1); set a "
                        "fraction of the tokens such as 0.15.")
    self.max_predictions = (t.get("max_predictions", 0) or
                            self.default_max_predictions())
    if not 0 < self.max_predictions <= self.seq_len:
      raise ConfigError(f"task.max_predictions={self.max_predictions} must be "
                        f"in [1, data.seq_len={self.seq_len}] (0: "
                        f"{self.max_predictions_rule.format(rate=key)}).")

  # The prediction slots per sequence when task.max_predictions is 0.
  max_predictions_rule = "ceil(seq_len * {rate})"

  def default_max_predictions(self):
    return math.ceil(self.seq_len * self.rate)

  def loss(self, params, state, batch, rng, step):
    del step
    loss, accuracy, _ = self.objective(params, batch["tokens"], batch["mask"],
                                       rng)
    return loss, ({"loss": loss, "mlm_accuracy": accuracy}, state)

  def evaluators(self):
    return {"mlm": mlm_eval}

  # The method ----------------------------------------------------------------

  def mask_tokens(self, rng, tokens, mask) -> MaskedTokens:
    t = self.config.task
    return bert_mask(rng, tokens, mask,
                     special_ids=self.tokenizer.special_ids, rate=self.rate,
                     max_predictions=self.max_predictions,
                     vocab_size=self.tokenizer.vocab_size,
                     mask_id=self.tokenizer.mask_id,
                     mask_prob=t.get("mask_token_prob", 0.8),
                     random_prob=t.get("random_token_prob", 0.1))

  def objective(self, params, tokens, mask, rng, row_weight=None):
    """(loss, accuracy, number of predictions) of one masking of `tokens`;
    `row_weight [B]` drops rows (the padding rows of an eval batch)."""
    m = self.mask_tokens(rng, tokens, mask)
    weights = m.weights
    if row_weight is not None:
      weights = weights * row_weight.reshape((-1,) + (1,) * (weights.ndim - 1))
    logits = self.model.apply({"params": params["encoder"]}, m.inputs, m.mask,
                              mlm_positions=m.positions)["mlm_logits"]
    return weighted_cross_entropy(logits, m.targets, weights)


class NgramMLMTask(MLMTask):
  """N-gram masking, one [MASK] per n-gram (module docstring)."""

  def __init__(self, config):
    super().__init__(config)
    t = config.task
    self.ngram_p = t.get("ngram_p", 0.2)
    self.ngram_max = t.get("ngram_max", 3)
    if not (0 < self.ngram_p <= 1 and 1 <= self.ngram_max <= self.seq_len):
      raise ConfigError(f"task.ngram_p={self.ngram_p} must be in (0, 1] and "
                        f"task.ngram_max={self.ngram_max} in [1, seq_len].")

  def init(self, rng, batch):
    enc_rng, off_rng = jax.random.split(rng)
    params, state = super().init(enc_rng, batch)
    params["ngram_offsets"] = seq_lib.embed_init(
        off_rng, (self.ngram_max, self.model.width))
    return params, state

  def mask_tokens(self, rng, tokens, mask) -> MaskedTokens:
    return ngram_mask(rng, tokens, mask,
                      special_ids=self.tokenizer.special_ids, rate=self.rate,
                      p=self.ngram_p, max_n=self.ngram_max,
                      max_ngrams=self.max_predictions,
                      mask_id=self.tokenizer.mask_id,
                      pad_id=self.tokenizer.pad_id)

  def objective(self, params, tokens, mask, rng, row_weight=None):
    m = self.mask_tokens(rng, tokens, mask)
    weights = m.weights
    if row_weight is not None:
      weights = weights * row_weight[:, None, None]
    enc = {"params": params["encoder"]}
    hidden = self.model.apply(enc, m.inputs, m.mask)["tokens"]
    h = jnp.take_along_axis(hidden, m.positions[..., None], axis=1)  # [B, G, D]
    h = h[:, :, None] + params["ngram_offsets"][None, None]       # [B, G, n, D]
    logits = self.model.apply(enc, h, method=seq_lib.SeqModel.mlm_logits)
    return weighted_cross_entropy(logits, m.targets, weights)


@functools.partial(jax.jit, static_argnums=0)
def _masked_metrics(task, params, tokens, mask, row_weight, rng):
  return task.objective(params, tokens, mask, rng, row_weight)


def eval_split_means(ctx, params, metrics, prefix):
  """`{prefix}_loss`, `{prefix}_accuracy` over every weighted target of the
  test split: `metrics(task, params, tokens, mask, row_weight, rng)` gives
  each batch's (loss, accuracy, count), with a key folded from the run's
  seed and the batch index, so every eval round draws the same masks."""
  rng = jax.random.PRNGKey(ctx.config.seed)
  loss_sum = acc_sum = total = 0.0
  for i, (x, _) in enumerate(ctx.test_batches()):
    loss, acc, count = jax.device_get(metrics(
        ctx.task, params, x["tokens"], x["mask"], x["valid"].astype(jnp.float32),
        jax.random.fold_in(rng, i)))
    loss_sum += float(loss) * float(count)
    acc_sum += float(acc) * float(count)
    total += float(count)
  return {f"{prefix}_loss": loss_sum / total,
          f"{prefix}_accuracy": acc_sum / total}


def mlm_eval(ctx, params, task_state, cache):
  """Masked-token loss and accuracy over all predictions of the test split
  (for n-gram masking, every token of every n-gram), each batch masked with
  a key folded from the run's seed and the batch index: the same masks at
  every eval round."""
  del task_state, cache
  return eval_split_means(ctx, params, _masked_metrics, "mlm")
