"""CCViT: Centroid-centered Modeling (Yan et al. 2023, "Centroid-centered
Modeling for Efficient Vision Transformer Pre-training", arXiv 2303.04664).

Tokenizer: k-means on raw patches (`maskmodel.tokenizers.kmeans`; the
official k = 8192 and 20 iterations on the 16x16x3 patches of 50,000
ImageNet images). A patch's token is its nearest centroid's id, and its
"centroid" is that centroid's pixels. It is fitted in `load_pretrained` on
the first `task.tokenizer.images` training images and kept, never trained,
under `task_state["frozen"]["tokenizer"]`.

Corruption, the paper's "patch masking and centroid replacing"
(`DataAugmentationForCCViT` in Cakeyan/CCViT_Public's `datasets.py`,
`kmeans_mask` in its `utils.py`):
- BEiT block masks hide exactly `task.num_masked` patches (75 of 196 at
  ViT-B; smallest block `task.min_block`, 16 there), and the encoder sees a
  learned mask token in their place;
- `task.replace` further patches (20), drawn uniformly among the visible
  ones, have their pixels replaced by their centroid's (in [0, 1] pixel
  units, then normalized like the rest of the input). 0 turns it off.

Token loss, the paper's L_CE: cross-entropy of a linear head on the final,
normed patch tokens against the centroid ids of the original image at the
masked and replaced positions, -mean_{i in M u R} log p(z_i | x~). Every
sample has exactly `num_masked + replace` such positions, so they are
gathered with static shapes and the mean over them is the official mean
(`engine_for_pretraining.py`).

Pixel loss, the paper's L_MSE, with `task.dual_loss`: a BEiT v2-style
class-token bottleneck. The final [CLS] (before the last LayerNorm),
followed by the patch tokens after block `task.dual_layer` (the official
`early_layers`, 9 of 12 at ViT-B), goes through `task.dual_depth` (2) more
blocks, a LayerNorm and a linear map to pixels; its loss is the MSE against
each patch's normalized pixels, (x - mean) / sqrt(var + 1e-6) with torch's
unbiased variance, at the same positions. The total is the paper's
L_CIM = L_CE + L_MSE (`loss_1 + loss_2`; `modeling_pretrain.py`'s
`VisionTransformerForMaskedImageModelingCLS` with `shared_lm_head False`).
The paper and the README's pretraining command use it; the flag
`--use_dual_loss` of `run_ccvit_pretraining.py` defaults to off, and so
does `task.dual_loss` here (L_CE alone).

Backbone: maskmodel's ViT (absolute sin-cos positions, no layer-scale). The
official ViT-B uses BEiT's shared relative position bias and layer-scale
0.1; that architecture is not ported here (as for SimMIM and MaskFeat).
`task.dual_loss` reads the blocks' outputs by the names maskmodel's ViT
gives them (`block_i`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskmodel import masking
from maskmodel import models
from maskmodel import tokenizers
from maskmodel.config import ConfigError
from maskmodel.models import build
from maskmodel.models.patches import patchify, unpatchify
from maskmodel.models.vit import Block, dense_init, layer_norm
from maskmodel.tasks.base import EncoderTask
from maskmodel.tasks.mae import normalized_pixel_target


def replacement_mask(rng, hidden, num_replace: int):
  """`num_replace` positions per row drawn uniformly among the visible ones
  (hidden == 0): the official shuffle of the unmasked indices, first 20.
  hidden: [B, N] (1 = hidden). Returns [B, N] bool."""
  visible = hidden == 0
  noise = jax.random.uniform(rng, hidden.shape)
  scores = jnp.where(visible, noise, -1.0)  # hidden ones are never picked
  _, picked = jax.lax.top_k(scores, num_replace)
  b = jnp.arange(hidden.shape[0])[:, None]
  return jnp.zeros(hidden.shape, bool).at[b, picked].set(True)


def replace_with_centroids(patches, replaced, centroid_patches):
  """`kmeans_mask`: each replaced patch takes its centroid's pixels.
  patches, centroid_patches: [B, N, P]; replaced: [B, N] bool."""
  return jnp.where(replaced[..., None], centroid_patches, patches)


def prediction_positions(hidden, replaced, count: int):
  """The indices [B, count] of the positions CCViT predicts (hidden or
  replaced), ascending; every row has exactly `count` of them."""
  target = (hidden > 0) | replaced
  order = jnp.argsort(~target, axis=1, stable=True)
  return order[:, :count]


def centroid_cross_entropy(logits, ids):
  """L_CE: the mean cross-entropy of logits [B, M, K] at ids [B, M]
  (torch's `CrossEntropyLoss` over the B*M selected tokens)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, ids[..., None], axis=-1).mean()


def gather_positions(x, idx):
  """x [B, N, ...] at idx [B, M] -> [B, M, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)),
                             axis=1)


class ClassTokenBottleneck(nn.Module):
  """BEiT v2's CLS-pretraining head as CCViT's dual loss uses it: [final
  CLS, early patch tokens] -> `depth` blocks -> LayerNorm -> linear to
  `out_dim` pixels per patch. Returns [B, N, out_dim] (patches only)."""
  depth: int
  num_heads: int
  mlp_dim: int
  out_dim: int
  attn_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, cls, early_patches):
    x = jnp.concatenate([cls, early_patches], axis=1)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim, self.attn_impl, self.dtype,
                name=f"block_{i}")(x).x
    x = layer_norm("norm")(x)[:, 1:]
    return nn.Dense(self.out_dim, kernel_init=dense_init, dtype=jnp.float32,
                    name="to_pixels")(x).astype(jnp.float32)


class CCViTTask(EncoderTask):
  """Task contract: `init`, `loss`, `load_pretrained` (fits the tokenizer),
  plus `features`."""

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    self.grid = build.grid(config)
    n = self.grid[0] * self.grid[1]
    self.num_masked = int(t.num_masked)
    self.min_block = int(t.min_block)
    self.num_replace = int(t.get("replace", 20))
    if not 0 < self.num_masked < n:
      raise ConfigError(f"task.num_masked={self.num_masked} must be in [1, "
                        f"{n - 1}] for the {n} patches (CCViT: 75 of 196).")
    if not 1 <= self.min_block <= self.num_masked:
      raise ConfigError(f"task.min_block={self.min_block} must be in [1, "
                        f"task.num_masked={self.num_masked}] (CCViT: 16).")
    if not 0 <= self.num_replace <= n - self.num_masked:
      raise ConfigError(f"task.replace={self.num_replace} must be in [0, "
                        f"{n - self.num_masked}], the patches left visible "
                        "(CCViT: 20; 0 turns replacement off).")
    self.num_targets = self.num_masked + self.num_replace
    self.channels = config.data.channels
    self.patch_dim = m.patch_size**2 * self.channels
    self.tokenizer = tokenizers.get_patch_tokenizer(t.tokenizer)
    self.encoder = models.get_model(m.name).build(
        build.with_token_reduction(m, "none"))
    self.lm_head = nn.Dense(self.tokenizer.vocab_size, kernel_init=dense_init,
                            dtype=jnp.float32)
    self.dual = bool(t.get("dual_loss", False))
    if self.dual:
      self.dual_layer = int(t.dual_layer)
      if not 1 <= self.dual_layer <= m.depth:
        raise ConfigError(f"task.dual_layer={self.dual_layer} must be in [1, "
                          f"model.depth={m.depth}]: the block whose patch "
                          "tokens feed the bottleneck (CCViT: 9 of 12).")
      self.dual_head = ClassTokenBottleneck(
          depth=int(t.dual_depth), num_heads=m.num_heads,
          mlp_dim=int(m.width * m.mlp_ratio), out_dim=self.patch_dim,
          attn_impl=m.attn_impl, dtype=build.dtype(m))
    # Per channel, tiled over a patch's (p, p, C) layout.
    self.mean = np.tile(np.asarray(config.data.mean, np.float32), m.patch_size**2)
    self.std = np.tile(np.asarray(config.data.std, np.float32), m.patch_size**2)

  def mask_policy(self, rng, batch_size):
    return masking.block_mask(rng, batch_size, self.grid,
                              num_hidden=self.num_masked,
                              min_patches=self.min_block)

  def init(self, rng, batch):
    images = batch["image"]
    b, n = images.shape[0], self.grid[0] * self.grid[1]
    k_enc, k_head, k_dual = jax.random.split(rng, 3)
    params = {"encoder": self.encoder.init(
        k_enc, images, mask=jnp.zeros((b, n)))["params"],
              "lm_head": self.lm_head.init(
                  k_head, jnp.zeros((1, self.config.model.width)))["params"]}
    if self.dual:
      d = self.config.model.width
      params["dual_head"] = self.dual_head.init(
          k_dual, jnp.zeros((1, 1, d)), jnp.zeros((1, n, d)))["params"]
    # Zeros of the codebook's shape: `load_pretrained` fits it (a resume
    # restores it from the checkpoint's `frozen/`).
    return params, {"frozen": {"tokenizer": self.tokenizer.placeholder(
        self.patch_dim)}}

  def load_pretrained(self, params, state):
    frozen = tokenizers.fit_on_training_images(self.tokenizer, self.config,
                                               self.config.task.tokenizer)
    return params, dict(state, frozen=dict(state["frozen"], tokenizer=frozen))

  def corrupt(self, state, images, rng):
    """The masked and replaced input. Returns (input patches [B, N, P]
    normalized like `images`, hidden [B, N] float, replaced [B, N] bool,
    centroid ids of the original patches [B, N])."""
    frozen = state["frozen"]["tokenizer"]
    p = self.config.model.patch_size
    k_mask, k_replace = jax.random.split(rng)
    hidden = self.mask_policy(k_mask, images.shape[0]).mask
    patches = patchify(images, p)
    ids = self.tokenizer.encode(frozen, patchify(
        tokenizers.unit_pixels(images, self.config.data), p))
    if self.num_replace:
      replaced = replacement_mask(k_replace, hidden, self.num_replace)
      centroids = (self.tokenizer.decode(frozen, ids) - self.mean) / self.std
      patches = replace_with_centroids(patches, replaced, centroids)
    else:
      replaced = jnp.zeros(hidden.shape, bool)
    return patches, hidden, replaced, ids

  def loss(self, params, state, batch, rng, step):
    del step
    images = batch["image"]
    p = self.config.model.patch_size
    patches, hidden, replaced, ids = self.corrupt(state, images, rng)
    inputs = unpatchify(patches, p, self.grid, self.channels)
    enc = {"params": params["encoder"]}
    if self.dual:
      # The residual stream after block `dual_layer` and after the last
      # block, before the final LayerNorm.
      wanted = {f"block_{self.dual_layer - 1}",
                f"block_{self.config.model.depth - 1}"}
      out, inter = self.encoder.apply(
          enc, inputs, mask=hidden, mutable=["intermediates"],
          capture_intermediates=lambda mdl, method: (
              method == "__call__" and mdl.name in wanted))
      blocks = inter["intermediates"]["encoder"]
    else:
      out = self.encoder.apply(enc, inputs, mask=hidden)
    idx = prediction_positions(hidden, replaced, self.num_targets)
    tokens = gather_positions(out["tokens"][:, 1:], idx)
    logits = self.lm_head.apply({"params": params["lm_head"]}, tokens)
    ce = centroid_cross_entropy(logits, gather_positions(ids, idx))
    metrics = {"ce": ce, "token_acc": (logits.argmax(-1) == gather_positions(
        ids, idx)).mean()}
    loss = ce
    if self.dual:
      early = blocks[f"block_{self.dual_layer - 1}"]["__call__"][0].x[:, 1:]
      last_cls = blocks[f"block_{self.config.model.depth - 1}"]["__call__"][0].x[:, :1]
      pred = self.dual_head.apply({"params": params["dual_head"]}, last_cls,
                                  early)
      target = normalized_pixel_target(
          patchify(tokenizers.unit_pixels(images, self.config.data), p))
      mse = ((gather_positions(pred, idx) - gather_positions(target, idx))**2).mean()
      metrics["mse"] = mse
      loss = ce + mse
    metrics["loss"] = loss
    return loss, (metrics, state)

