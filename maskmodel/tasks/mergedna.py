"""MergeDNA: a learned DNA tokenizer by local token merging, pretrained by
merged-token reconstruction and adaptive masked token modeling.

Li et al. 2026, "MergeDNA: Context-aware Genome Modeling with Dynamic
Tokenization through Token Merging" (AAAI 2026, arXiv 2511.14806), Sec. 3.
There is no official code. The networks are `maskmodel.models.mergedna`
(local encoder = the tokenizer, latent encoder, latent decoder, local
decoder); this task is the pretraining objective, Sec. 3.3-3.4:

  L = L_MTR + 0.25 L_MTR(local encoder frozen, latent ToMe to L/2) + L_AMTM

- L_MTR, merged token reconstruction: the bases go through the local
  encoder (N bases -> L tokens), the latent encoder and decoder, and the
  local decoder unmerges through the source map; the loss is the
  cross-entropy of every input base.
- The second term: the local encoder's tokens with stop-gradient (the
  tokenizer is frozen for this term), the latent encoder with ToMe merging
  the L tokens to K = `model.latent_keep` * L (L/2), then unmerged back to
  L tokens through the latent source map, the latent and local decoders,
  and the same reconstruction loss, weighted by `task.latent_mtr_weight`
  (0.25).
- L_AMTM, adaptive masked token modeling: each local token j sits in one
  latent group of g_j local tokens (the latent ToMe's source map); K local
  tokens are drawn without replacement with probability proportional to
  1/g_j^2 (the paper's w_i / g_i with w_i = 1/g_i), their bases become
  [MASK], the masked sequence goes through the whole model again, and the
  loss is the cross-entropy of the masked bases (`task.amtm_weight`, 1).

Choices where the paper is silent or where static shapes ask for one:

- Compression: the paper samples L in [0.4N, 0.6N]. Shapes must be static,
  so every window of `model.window` (16) bases keeps the same number of
  tokens, one of `model.window_keep` (7, 8, 9: L/N = 0.4375, 0.5, 0.5625),
  drawn uniformly per step from the step's key. Each choice is one branch
  of `lax.switch` with its own static shapes (the losses and metrics are
  shaped alike), so one jitted step serves every L and runs only the
  branch drawn; params are shared by all branches. Evaluation and the
  features use `model.eval_window_keep` (8: L = N/2).
- The local merging is ToMe restricted to neighbours in sequence order, so
  tokens are contiguous runs of bases inside one window (see
  `maskmodel.models.mergedna`).
- K, the number of local tokens AMTM masks, is the latent ToMe's K (L/2),
  as both unofficial reproductions read the paper; drawn by Gumbel-top-K
  (`amtm_select`), exact sampling without replacement.
- Only bases are predicted and masked: [CLS], [SEP] and pad are neither
  targets nor replaced by [MASK]. The three terms are each the mean over
  their bases in the batch.
- Features for the probes: the latent encoder's tokens at the evaluation
  compression, averaged over bases (each token weighted by the bases it
  holds).

The evaluator "mergedna" reports on the test split, at the evaluation
compression and with the run's seed: base reconstruction (`mtr_*`), the
same through the latent ToMe (`latent_mtr_*`), AMTM's masked bases
(`amtm_*`), and the compression L/N.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from maskmodel.config import ConfigError
from maskmodel.models import mergedna as net_lib
from maskmodel.models import seq as seq_lib
from maskmodel.tasks import mlm
from maskmodel.tasks.base import TaskBase

PAPER_RANGE = (0.4, 0.6)   # L / N, MergeDNA Sec. 3.3


def group_sizes(latent_source, num_groups: int):
  """g_j: the size of local token j's latent group, `latent_source [B, L]`
  (values in [0, num_groups)) -> `[B, L]` float32."""
  counts = jax.vmap(lambda s: jnp.zeros((num_groups,), jnp.float32).at[s].add(
      1.0))(latent_source)
  return jnp.take_along_axis(counts, latent_source, axis=1)


def amtm_probs(sizes):
  """MergeDNA's P_L(j) proportional to 1 / g_j^2, normalized per row."""
  w = 1.0 / jnp.square(sizes)
  return w / w.sum(axis=1, keepdims=True)


def amtm_select(rng, sizes, k: int):
  """`[B, L]` bool, k local tokens per row drawn without replacement with
  weight 1 / g^2 (Gumbel-top-k: the same law as drawing one at a time from
  the renormalized weights of those left)."""
  scores = -2.0 * jnp.log(sizes) + jax.random.gumbel(rng, sizes.shape)
  _, idx = jax.lax.top_k(scores, k)
  b = sizes.shape[0]
  return jnp.zeros(sizes.shape, bool).at[jnp.arange(b)[:, None], idx].set(True)


def base_cross_entropy(logits, targets, weights):
  """(mean cross-entropy, accuracy, count) over the weighted bases."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  count = weights.sum()
  denom = jnp.maximum(count, 1.0)
  correct = (logits.argmax(-1) == targets).astype(jnp.float32)
  return (ce * weights).sum() / denom, (correct * weights).sum() / denom, count


class MergeDNATask(TaskBase):
  """MergeDNA pretraining (module docstring). Contract: `init`, `loss`,
  `preprocess`, `features`, `encoder_params`, `evaluators`."""

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    self.tokenizer, self.seq_len = mlm.sequence_data(
        config, "mergedna",
        " (start from maskmodel.models.mergedna.mergedna_config())")
    if self.seq_len % m.window:
      raise ConfigError(f"data.seq_len={self.seq_len} is not a multiple of "
                        f"model.window={m.window}; the local encoder tiles "
                        "the sequence with windows.")
    if m.width % m.num_heads:
      raise ConfigError(f"model.width={m.width} is not divisible by "
                        f"model.num_heads={m.num_heads}.")
    keeps = tuple(m.window_keep)
    if not keeps or any(not 1 <= k <= m.window for k in keeps + (
        m.eval_window_keep,)):
      raise ConfigError(f"model.window_keep={keeps} and model.eval_window_keep"
                        f"={m.eval_window_keep} must be tokens per window in "
                        f"[1, model.window={m.window}] (MergeDNA: 0.4 to 0.6 "
                        "of the window).")
    if m.get("local_merge", "learned") not in ("learned", "fixed"):
      raise ConfigError(f"model.local_merge={m.local_merge!r} is unknown; use "
                        "'learned' (MergeDNA) or 'fixed' (k-mer groups).")
    if not 0 < m.get("latent_keep", 0.5) < 1:
      raise ConfigError(f"model.latent_keep={m.latent_keep} must be in (0, 1) "
                        "(MergeDNA: 0.5, the latent ToMe keeps L/2).")
    try:
      self.levels = tuple(net_lib.build_networks(m, self.seq_len, k)
                          for k in keeps)
      self.eval_net = net_lib.build_networks(m, self.seq_len,
                                             m.eval_window_keep)
    except ValueError as e:
      raise ConfigError(f"model.window_keep: {e}") from None
    self.latent_mtr_weight = t.get("latent_mtr_weight", 0.25)
    self.amtm_weight = t.get("amtm_weight", 1.0)
    if self.latent_mtr_weight < 0 or self.amtm_weight < 0:
      raise ConfigError("task.latent_mtr_weight and task.amtm_weight must be "
                        ">= 0 (MergeDNA: 0.25 and 1).")

  # Contract ------------------------------------------------------------------

  def preprocess(self, record, rng, train):
    del rng, train   # compression and masking are drawn on the device
    seq_lib.check_token_ids(record["tokens"], self.config.model.vocab_size)
    return {"tokens": record["tokens"], "mask": record["mask"],
            "label": record["label"]}

  def init(self, rng, batch):
    net = self.eval_net
    ids = batch["tokens"]
    r = jax.random.split(rng, 4)
    local = net.local_encoder.init(r[0], ids)["params"]
    z, _, source = net.local_encoder.apply({"params": local}, ids)
    latent = net.latent_encoder.init(r[1], z)["params"]
    decoder = net.latent_decoder.init(r[2], z)["params"]
    local_dec = net.local_decoder.init(r[3], z, source)["params"]
    return {"local_encoder": local, "latent_encoder": latent,
            "latent_decoder": decoder, "local_decoder": local_dec}, {}

  def loss(self, params, state, batch, rng, step):
    del step
    level_rng, rng = jax.random.split(rng)
    branches = [functools.partial(self.objective, net) for net in self.levels]
    if len(branches) == 1:
      out = branches[0](params, batch["tokens"], batch["mask"], rng)
    else:
      level = jax.random.randint(level_rng, (), 0, len(branches))
      out = jax.lax.switch(level, branches, params, batch["tokens"],
                           batch["mask"], rng)
    metrics = {k: out[k] for k in (
        "loss", "mtr_loss", "mtr_accuracy", "latent_mtr_loss", "amtm_loss",
        "amtm_accuracy", "compression")}
    return out["loss"], (metrics, state)

  def evaluators(self):
    return {"mergedna": mergedna_eval}

  def features(self, params, state, inputs):
    del state
    z, size, _ = self.eval_net.local_encoder.apply(
        {"params": params["local_encoder"]}, inputs["tokens"])
    h, _ = self.eval_net.latent_encoder.apply(
        {"params": params["latent_encoder"]}, z)
    return (h * size[..., None]).sum(1) / size.sum(1, keepdims=True)

  def encoder_params(self, params):
    return {k: params[k] for k in ("local_encoder", "latent_encoder")}

  # The method ----------------------------------------------------------------

  def bases(self, tokens, mask):
    """True on real bases: not pad and none of the tokenizer's specials."""
    special = jnp.asarray(self.tokenizer.special_ids, tokens.dtype)
    return mask.astype(bool) & ~jnp.isin(tokens, special)

  @staticmethod
  def tokenize(net, params, ids):
    """The local encoder: `(z [B, L, D], size [B, L], source [B, N])`."""
    return net.local_encoder.apply({"params": params["local_encoder"]}, ids)

  @staticmethod
  def decode(net, params, h, source):
    """Latent decoder, then unmerge to the bases and the local decoder."""
    h, _ = net.latent_decoder.apply({"params": params["latent_decoder"]}, h)
    return net.local_decoder.apply({"params": params["local_decoder"]}, h,
                                   source)

  def reconstruct(self, net, params, ids):
    """Merged token reconstruction's forward pass: `(logits [B, N, V], z,
    source)`."""
    z, _, source = self.tokenize(net, params, ids)
    h, _ = net.latent_encoder.apply({"params": params["latent_encoder"]}, z)
    return self.decode(net, params, h, source), z, source

  def objective(self, net, params, tokens, mask, rng, row_weight=None):
    """The three terms at one compression level (`net`); a dict of the loss,
    each term, accuracies and counts. `row_weight [B]` drops rows (an eval
    batch's padding)."""
    weight = self.bases(tokens, mask).astype(jnp.float32)
    if row_weight is not None:
      weight = weight * row_weight[:, None]
    # L_MTR.
    logits, z, source = self.reconstruct(net, params, tokens)
    mtr, mtr_acc, count = base_cross_entropy(logits, tokens, weight)
    # L_MTR with the tokenizer frozen and the latent ToMe keeping K tokens.
    selected, latent_source = net.latent_selector.apply(
        {"params": params["latent_encoder"]}, jax.lax.stop_gradient(z))
    logits = self.decode(net, params, net_lib.unmerge(selected, latent_source),
                         source)
    latent_mtr, latent_acc, _ = base_cross_entropy(logits, tokens, weight)
    # L_AMTM: K local tokens by 1 / g^2, their bases masked.
    sizes = group_sizes(latent_source, net.num_selected)
    chosen = amtm_select(rng, sizes, net.num_selected)
    hidden = net_lib.unmerge(chosen[..., None], source)[..., 0] & (weight > 0)
    masked = jnp.where(hidden, jnp.asarray(self.tokenizer.mask_id,
                                           tokens.dtype), tokens)
    logits, _, _ = self.reconstruct(net, params, masked)
    amtm_weight = hidden.astype(jnp.float32)
    amtm, amtm_acc, num_masked = base_cross_entropy(logits, tokens, amtm_weight)
    return {
        "loss": mtr + self.latent_mtr_weight * latent_mtr
                + self.amtm_weight * amtm,
        "mtr_loss": mtr, "mtr_accuracy": mtr_acc,
        "latent_mtr_loss": latent_mtr, "latent_mtr_accuracy": latent_acc,
        "amtm_loss": amtm, "amtm_accuracy": amtm_acc,
        "compression": jnp.float32(net.num_latent / tokens.shape[1]),
        "num_bases": count, "num_masked": num_masked}


@functools.partial(jax.jit, static_argnums=0)
def _eval_metrics(task, params, tokens, mask, row_weight, rng):
  return task.objective(task.eval_net, params, tokens, mask, rng, row_weight)


def mergedna_eval(ctx, params, task_state, cache):
  """Reconstruction (all bases), reconstruction through the latent ToMe,
  and AMTM (masked bases) on the test split at the evaluation compression,
  each batch drawn with a key folded from the run's seed and the batch
  index: the same masks at every eval round."""
  del task_state, cache
  rng = jax.random.PRNGKey(ctx.config.seed)
  per_base = ("mtr_loss", "mtr_accuracy", "latent_mtr_loss",
              "latent_mtr_accuracy")
  per_masked = ("amtm_loss", "amtm_accuracy")
  sums = dict.fromkeys(per_base + per_masked, 0.0)
  bases = masked = 0.0
  compression = None
  for i, (x, _) in enumerate(ctx.test_batches()):
    out = jax.device_get(_eval_metrics(
        ctx.task, params, x["tokens"], x["mask"],
        x["valid"].astype(jnp.float32), jax.random.fold_in(rng, i)))
    for k in per_base:
      sums[k] += float(out[k]) * float(out["num_bases"])
    for k in per_masked:
      sums[k] += float(out[k]) * float(out["num_masked"])
    bases += float(out["num_bases"])
    masked += float(out["num_masked"])
    compression = float(out["compression"])
  result = {k: v / (bases if k in per_base else masked)
            for k, v in sums.items()}
  result["compression"] = compression
  result["masked_fraction"] = masked / bases
  return result
