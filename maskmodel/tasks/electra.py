"""ELECTRA: replaced-token detection on token sequences.

Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as Discriminators
Rather Than Generators" (Sec. 2), as google-research/electra's
`run_pretraining.py` (`PretrainingModel`) and `pretrain/pretrain_helpers.py`
(`mask`, `unmask`, `scatter_update`, `sample_from_softmax`) do it by default:

- masking (`electra_mask`, the official `mask`): each sequence gets
  `count = max(1, min(N, round(len * rate)))` predictions (`len` counts
  every real token, [CLS] and [SEP] included; `rate` = `task.mask_rate`,
  15%), in N = `task.max_predictions` slots (0: the official
  `int((rate + 0.005) * seq_len)`). The N positions are drawn *with
  replacement*, uniformly among the maskable tokens (not pad and not one of
  the tokenizer's special ids); slots past `count` get weight 0. Each slot
  turns its token into [MASK] with probability 0.85
  (`task.mask_token_prob`) and leaves it as it is otherwise: there is no
  random replacement. A position drawn twice is [MASK] if either slot says
  so, and is predicted once per slot, as in the official code.
- generator: a `SeqModel` like the encoder, with `task.generator_size` (1/4)
  of its width, `task.generator_layers` (1.0) of its depth, max(1, width /
  64) heads and an MLP of 4 x width (the official `get_generator_config`),
  and the MLM head tied to the embeddings. Its loss is the masked LM's,
  Eq. (1): L_MLM = E[sum_{i in m} -log p_G(x_i | x^masked)], the
  cross-entropy over the weighted slots (`mlm.weighted_cross_entropy`,
  whose denominator adds 1e-5 where the official adds 1e-6).
- embeddings: the token, position and type embeddings (and BERT's
  embedding LayerNorm) are one set of params, the discriminator's, that the
  generator reads (the official `untied_generator_embeddings=False`). They
  are `model.embedding_size` wide (0: the discriminator's width, the
  official default `embedding_size=None`; ELECTRA-Small uses 128 with a
  width of 256); each network projects them to its own width with its own
  `embed_project` when the sizes differ, and the generator's MLM head maps
  back to the embedding width before the tied decoder, as the official
  `BertModel` and `get_token_logits` do.
- corruption (`sample_from_softmax`, `replace_tokens`): at every chosen
  position (those left unchanged too) the original token is replaced by a
  sample from the generator, drawn by Gumbel-max from softmax(logits) with
  stop-gradient; a position drawn twice gets the floor of the mean of its
  two samples, the official `scatter_update`'s integer arithmetic. A token
  is labelled "replaced" only when the result differs from the original.
- discriminator: the encoder, then Dense(width, GELU) -> Dense(1) per token
  (`discriminator_predictions`; the GELU is the exact one the `SeqModel`
  uses everywhere, where the official BERT code uses the tanh form); its
  loss is Eq. (2), the sigmoid cross-entropy of "replaced" averaged over
  every real (non-pad) token.
- the objective, Eq. (3): L = L_MLM + lambda L_Disc, lambda =
  `task.disc_weight` = 50.

The discriminator is the encoder the feature evals and fine-tunes read
(`features`, `encoder_params`, params under "encoder"); the generator lives
under "generator" without the shared embeddings, the discriminator head
under "disc_head". Everything is drawn on the device inside the jitted
step, with static shapes. The evaluator "electra" reports the generator's
masked LM and the discriminator on the test split with the run's seed.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from maskmodel.config import ConfigError
from maskmodel.models import get_model
from maskmodel.models import seq as seq_lib
from maskmodel.tasks.mlm import (MaskedTokens, MLMTask, maskable,
                                 num_to_predict, weighted_cross_entropy)

# The embedding params the generator reads from the discriminator.
SHARED_EMBEDDINGS = ("token_embed", "pos_embed", "type_embed", "embed_norm")


def official_max_predictions(rate: float, seq_len: int) -> int:
  """The official `max_predictions_per_seq` (configure_pretraining.py)."""
  return int((rate + 0.005) * seq_len)


def draw_positions(rng, ok, num_slots: int):
  """`num_slots` positions per row, drawn with replacement uniformly over
  the True entries of `ok [B, N]` (the official `tf.random.categorical` over
  log(candidates / their sum)). Rows without a True entry draw position 0."""
  logits = jnp.where(ok | ~ok.any(1, keepdims=True), 0.0, -jnp.inf)
  positions = jax.random.categorical(rng, logits[:, None, :], axis=-1,
                                     shape=(ok.shape[0], num_slots))
  return positions.astype(jnp.int32)


def apply_mask(tokens, mask, ok, positions, uniform, *, rate: float,
               mask_id: int, mask_token_prob: float) -> MaskedTokens:
  """The deterministic half of the official `mask`: given the drawn
  `positions [B, M]` and `uniform [B, M]` draws in [0, 1), the weights of
  the first `count` slots, the targets, and [MASK] where `uniform <
  mask_token_prob`."""
  b, n = tokens.shape
  m = positions.shape[1]
  count = num_to_predict(mask.sum(1), rate, m)
  weights = (jnp.arange(m)[None] < count[:, None]) & ok.any(1, keepdims=True)
  positions = jnp.where(weights, positions, 0)
  targets = jnp.where(weights, jnp.take_along_axis(tokens, positions, 1), 0)
  to_mask = weights & (uniform < mask_token_prob)
  hit = jnp.zeros((b, n), jnp.int32).at[jnp.arange(b)[:, None], positions].add(
      to_mask.astype(jnp.int32)) > 0
  inputs = jnp.where(hit, jnp.asarray(mask_id, tokens.dtype), tokens)
  return MaskedTokens(inputs, mask, positions, targets,
                      weights.astype(jnp.float32))


def electra_mask(rng, tokens, mask, *, special_ids, rate: float,
                 max_predictions: int, mask_id: int,
                 mask_token_prob: float = 0.85) -> MaskedTokens:
  """The official `pretrain_helpers.mask` (module docstring), with
  `max_predictions` slots per sequence."""
  ok = maskable(tokens, mask, special_ids)
  pick_rng, kind_rng = jax.random.split(rng)
  positions = draw_positions(pick_rng, ok, max_predictions)
  uniform = jax.random.uniform(kind_rng, positions.shape)
  return apply_mask(tokens, mask, ok, positions, uniform, rate=rate,
                    mask_id=mask_id, mask_token_prob=mask_token_prob)


def sample_from_softmax(rng, logits):
  """A sample of softmax(logits) per row by Gumbel-max, with no gradient
  (the official `sample_from_softmax`, under `tf.stop_gradient`)."""
  u = jax.random.uniform(rng, logits.shape)
  gumbel = -jnp.log(-jnp.log(u + 1e-9) + 1e-9)
  return jnp.argmax(jax.lax.stop_gradient(logits) + gumbel,
                    axis=-1).astype(jnp.int32)


def replace_tokens(tokens, positions, weights, sampled):
  """The official `unmask` + `scatter_update` of `_get_fake_data`: the
  original `tokens` with `sampled [B, M]` at the weighted `positions`, and
  the labels (True where the result differs from the original). A position
  in k slots gets the floor of the mean of its k samples."""
  b, n = tokens.shape
  rows = jnp.arange(b)[:, None]
  w = weights > 0
  sums = jnp.zeros((b, n), jnp.int32).at[rows, positions].add(
      jnp.where(w, sampled, 0))
  counts = jnp.zeros((b, n), jnp.int32).at[rows, positions].add(
      w.astype(jnp.int32))
  fake = jnp.where(counts > 0, sums // jnp.maximum(counts, 1),
                   tokens).astype(tokens.dtype)
  return fake, fake != tokens


class DiscriminatorHead(nn.Module):
  """Dense(width, GELU) -> Dense(1) per token: one logit of "replaced"."""
  width: int

  @nn.compact
  def __call__(self, x):
    h = seq_lib.gelu(nn.Dense(self.width, kernel_init=seq_lib.dense_init,
                              name="dense")(x))
    # tf.layers.dense's default initializer, as the official output layer.
    return nn.Dense(1, kernel_init=nn.initializers.glorot_uniform(),
                    name="out")(h)[..., 0]


def disc_loss(logits, labels, weights):
  """Eq. (2), the official `_get_discriminator_output`: sigmoid
  cross-entropy summed over tokens with `weights` (1 on real tokens), over
  (their sum + 1e-6). Returns (loss, accuracy, sum of weights)."""
  bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
  total = weights.sum()
  loss = (bce * weights).sum() / (total + 1e-6)
  correct = ((logits > 0) == labels).astype(jnp.float32)
  return loss, (correct * weights).sum() / jnp.maximum(total, 1.0), total


def generator_config(model_config, size: float, layers: float):
  """The generator's `config.model`: the official `get_generator_config`
  (width and depth scaled, max(1, width // 64) heads, MLP 4 x width), with
  the MLM head and the discriminator's embedding width."""
  g = ml_collections.ConfigDict(model_config.to_dict())
  g.width = int(round(model_config.width * size))
  g.depth = int(round(model_config.depth * layers))
  g.num_heads = max(1, g.width // 64)
  g.mlp_dim = 4 * g.width
  g.mlm_head = True
  g.embedding_size = model_config.get("embedding_size", 0) or model_config.width
  g.token_reduction = None
  return g


class ElectraTask(MLMTask):
  """ELECTRA's generator + discriminator (module docstring). Contract:
  `init`, `loss`, `preprocess`, `features`, `encoder_params`,
  `evaluators`; the encoder is the discriminator."""

  def __init__(self, config):
    super().__init__(config)   # corpus, tokenizer, seq_len, mask_rate checks
    m, t = config.model, config.task
    self.mask_token_prob = t.get("mask_token_prob", 0.85)
    if not 0 <= self.mask_token_prob <= 1:
      raise ConfigError(f"task.mask_token_prob={self.mask_token_prob} must be "
                        "in [0, 1] (ELECTRA: 0.85).")
    self.disc_weight = t.get("disc_weight", 50.0)
    if not self.disc_weight >= 0:
      raise ConfigError(f"task.disc_weight={self.disc_weight} must be >= 0 "
                        "(ELECTRA: 50).")
    size = t.get("generator_size", 0.25)
    layers = t.get("generator_layers", 1.0)
    if not 0 < size <= 1 or round(m.width * size) < 1:
      raise ConfigError(f"task.generator_size={size} must be in (0, 1] and "
                        f"leave at least 1 of model.width={m.width} (ELECTRA: "
                        "0.25).")
    if not 0 < layers <= 1 or round(m.depth * layers) < 1:
      raise ConfigError(f"task.generator_layers={layers} must be in (0, 1] "
                        f"and leave at least 1 of model.depth={m.depth} "
                        "(ELECTRA: 1.0).")
    if m.get("token_reduction") is not None:
      raise ConfigError("task 'electra' replaces tokens in place and needs "
                        "every position; drop model.token_reduction.")
    disc_config = ml_collections.ConfigDict(m.to_dict())
    disc_config.mlm_head = False
    self.model = get_model("seq").build(disc_config, num_classes=0)
    self.generator = get_model("seq").build(
        generator_config(m, size, layers), num_classes=0)
    self.disc_head = DiscriminatorHead(m.width)

  max_predictions_rule = "int((mask_rate + 0.005) * seq_len)"

  def default_max_predictions(self):
    return official_max_predictions(self.rate, self.seq_len)

  # Contract ------------------------------------------------------------------

  def init(self, rng, batch):
    enc_rng, gen_rng, head_rng = jax.random.split(rng, 3)
    tokens, mask = batch["tokens"], batch["mask"]
    encoder = self.model.init(enc_rng, tokens, mask)["params"]
    generator = self.generator.init(gen_rng, tokens, mask)["params"]
    generator = {k: v for k, v in generator.items()
                 if k not in SHARED_EMBEDDINGS}
    hidden = jnp.zeros(tokens.shape + (self.model.width,), jnp.float32)
    head = self.disc_head.init(head_rng, hidden)["params"]
    return {"encoder": encoder, "generator": generator, "disc_head": head}, {}

  def loss(self, params, state, batch, rng, step):
    del step
    out = self.objective(params, batch["tokens"], batch["mask"], rng)
    metrics = {k: out[k] for k in (
        "loss", "mlm_loss", "mlm_accuracy", "disc_loss", "disc_accuracy",
        "replaced_fraction", "sampled_accuracy")}
    return out["loss"], (metrics, state)

  def evaluators(self):
    return {"electra": electra_eval}

  # The method ----------------------------------------------------------------

  def generator_params(self, params):
    """The generator's own params with the discriminator's embeddings."""
    shared = {k: params["encoder"][k] for k in SHARED_EMBEDDINGS
              if k in params["encoder"]}
    return {**params["generator"], **shared}

  def mask_tokens(self, rng, tokens, mask) -> MaskedTokens:
    return electra_mask(rng, tokens, mask,
                        special_ids=self.tokenizer.special_ids, rate=self.rate,
                        max_predictions=self.max_predictions,
                        mask_id=self.tokenizer.mask_id,
                        mask_token_prob=self.mask_token_prob)

  def generator_logits(self, params, masked: MaskedTokens):
    return self.generator.apply(
        {"params": self.generator_params(params)}, masked.inputs, masked.mask,
        mlm_positions=masked.positions)["mlm_logits"]

  def disc_logits(self, params, tokens, mask):
    hidden = self.model.apply({"params": params["encoder"]}, tokens,
                              mask)["tokens"]
    return self.disc_head.apply({"params": params["disc_head"]}, hidden)

  def objective(self, params, tokens, mask, rng, row_weight=None):
    """Eq. (3) on one masking of `tokens`: a dict with the loss, each
    part, their accuracies and counts. `row_weight [B]` drops rows (the
    padding rows of an eval batch)."""
    mask_rng, sample_rng = jax.random.split(rng)
    masked = self.mask_tokens(mask_rng, tokens, mask)
    token_weight = mask.astype(jnp.float32)
    pred_weight = masked.weights
    if row_weight is not None:
      token_weight = token_weight * row_weight[:, None]
      pred_weight = pred_weight * row_weight[:, None]
    logits = self.generator_logits(params, masked)
    mlm_loss, mlm_acc, num_pred = weighted_cross_entropy(
        logits, masked.targets, pred_weight)
    sampled = sample_from_softmax(sample_rng, logits)
    fake, labels = replace_tokens(tokens, masked.positions, masked.weights,
                                  sampled)
    d_loss, d_acc, num_tok = disc_loss(self.disc_logits(params, fake, mask),
                                       labels, token_weight)
    same = (sampled == masked.targets).astype(jnp.float32)
    return {
        "loss": mlm_loss + self.disc_weight * d_loss,
        "mlm_loss": mlm_loss, "mlm_accuracy": mlm_acc,
        "disc_loss": d_loss, "disc_accuracy": d_acc,
        "replaced_fraction": (labels * token_weight).sum() / jnp.maximum(
            num_tok, 1.0),
        "sampled_accuracy": (same * pred_weight).sum() / jnp.maximum(
            num_pred, 1.0),
        "num_predictions": num_pred, "num_tokens": num_tok}


@functools.partial(jax.jit, static_argnums=0)
def _electra_metrics(task, params, tokens, mask, row_weight, rng):
  return task.objective(params, tokens, mask, rng, row_weight)


def electra_eval(ctx, params, task_state, cache):
  """The generator's masked LM (loss, accuracy over all predictions) and
  the discriminator (loss, accuracy over all real tokens, the share of
  tokens replaced) on the test split, each batch masked and sampled with a
  key folded from the run's seed and the batch index: the same draws at
  every eval round."""
  del task_state, cache
  rng = jax.random.PRNGKey(ctx.config.seed)
  per_pred = ("mlm_loss", "mlm_accuracy", "sampled_accuracy")
  per_token = ("disc_loss", "disc_accuracy", "replaced_fraction")
  sums = dict.fromkeys(per_pred + per_token, 0.0)
  num_pred = num_tok = 0.0
  for i, (x, _) in enumerate(ctx.test_batches()):
    out = jax.device_get(_electra_metrics(
        ctx.task, params, x["tokens"], x["mask"],
        x["valid"].astype(jnp.float32), jax.random.fold_in(rng, i)))
    for k in per_pred:
      sums[k] += float(out[k]) * float(out["num_predictions"])
    for k in per_token:
      sums[k] += float(out[k]) * float(out["num_tokens"])
    num_pred += float(out["num_predictions"])
    num_tok += float(out["num_tokens"])
  return {k: v / (num_pred if k in per_pred else num_tok)
          for k, v in sums.items()}
