"""TokenUnify, the autoregressive stage ("TokenUnify: Scaling Up
Autoregressive Pretraining for Neuron Segmentation", Chen et al., ICCV 2025,
arXiv 2405.16847), for images, as its official code
(ydchen0806/TokenUnify) trains it.

Two runs, two tasks, one loop:

- Stage 1: MAE with 40% of the patches hidden (`mae`,
  configs/tokenunify/mnist_vit_tiny_mae.py; the official
  `src/run_mamba_mae.sh`, `--mask_ratio=0.4`).
- Stage 2, `tokenunify`: the stage-1 network (encoder and decoder) is read
  from `task.init_from` by `load_pretrained` and fine-tuned, not frozen (the
  official `main_pretrain_autoregress.py --pretrain_path`,
  `load_state_dict(strict=False)`), with a new next-patch head.

Stage 2, per image x of N patches x_1..x_N in raster order (the official
`preserve_patches_and_fill_rest`, `dataloader/
data_provider_pretraining_autoregress.py`):

  k ~ U{1, ..., N-1}
  x~ = (x_1, ..., x_k, e_{k+1}, ..., e_N),   e ~ N(0, 1) per pixel
  y_all = sigmoid(D(E(x~)))                 the whole image ("next-all")
  y_next = sigmoid(H(D(E(x~))))             the next patch, x_{k+1}
  L = mean ||y_all - x||^2 + mean ||y_next - x_{k+1}||^2

E the ViT encoder on every patch of x~, D the MAE decoder (every position
visible) giving pre-sigmoid pixels of every patch, H the next-patch head
(`NextPatchHead`, a 2-D port of the official `Preciever` of
`src/segmamba_ar.py`) reading D's output as an image. Each MSE is
`F.mse_loss`'s mean over every element: the first over all pixels of the
batch (prefix and suffix alike), the second over the batch's next patches
(`SegMamba.forward`, `auto_mode=1`, the default: L = MSE(whole) +
MSE(next)). Pixels are in [0, 1]: the official loader min-max scales each
volume; here the data normalization is undone (x * std + mean), which is
pixel / 255, and the encoder gets x~ normalized again, as every input is.

Where the official code differs from the paper's description, the code is
followed:
- The paper presents random-token, next-token and next-all prediction as
  one hierarchical predictive-coding objective on a Mamba network, in the
  language of autoregressive sequence models; the code trains them as two
  stages (random-token prediction is the stage-1 masked reconstruction;
  stage 2 is next-token + next-all), with a dense encoder-decoder that
  sees the whole noise-filled volume at once, not a causal model over the
  token sequence.
- The next-patch head reads the whole-image prediction (before its
  sigmoid), not the token at position k: it is not told k, which only the
  noise in its input reveals.

What this port leaves out or chooses (options where they are choices):
- `task.fill`: "noise" (the default, `--fill_nose=1` of the official
  `main_pretrain_autoregress.py`) or "zeros" (`--fill_nose=0`).
- The official loader perturbs half of the inputs before the prefix is cut
  (EM-specific noise/blur/cutout perturbations chosen by a config the
  repository does not ship); not ported. Augmentation is the config's
  random resized crop.
- The network is a ViT and MAE's decoder, not SegMamba; the head is the
  official `Preciever` in 2-D (three 3x3 stride-2 convolutions, 12, 12 and
  1 channels with ReLU between, padding 1, then a linear map to one patch).
- The official stage 1 is not He et al.'s MAE either (it fills the hidden
  patches with noise and regresses every pixel); stage 1 here is `mae`
  with its raw-pixel target (configs/tokenunify/mnist_vit_tiny_mae.py).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskmodel import checkpoint, models
from maskmodel.config import ConfigError
from maskmodel.models import build
from maskmodel.models.mae import MAEDecoder
from maskmodel.models.patches import patchify, unpatchify
from maskmodel.models.vit import dense_init
from maskmodel.tasks.base import EncoderTask

FILLS = ("noise", "zeros")


def prefix_lengths(rng, batch_size: int, num_patches: int):
  """Per image a prefix length k, uniform on {1, ..., N-1} (the official
  `np.random.randint(1, total_patches)`): at least one patch is kept and
  a next patch always exists."""
  return jax.random.randint(rng, (batch_size,), 1, num_patches)


def prefix_mask(k, num_patches: int):
  """[B, N] bool: True at the raster positions < k (the kept prefix)."""
  return jnp.arange(num_patches)[None, :] < k[:, None]


def prefix_input(patches, k, rng, fill: str = "noise"):
  """patches [B, N, P]: those at positions < k kept, the rest replaced by
  N(0, 1) noise (`fill="noise"`) or zeros (`"zeros"`), elementwise."""
  if fill not in FILLS:
    raise ConfigError(f"task.fill={fill!r} is unknown; use one of {FILLS}.")
  keep = prefix_mask(k, patches.shape[1])[..., None]
  if fill == "noise":
    filler = jax.random.normal(rng, patches.shape, patches.dtype)
  else:
    filler = jnp.zeros_like(patches)
  return jnp.where(keep, patches, filler)


def next_patch(patches, k):
  """patches [B, N, P] -> [B, P]: patch k of each image (0-based), the one
  right after its prefix."""
  return jnp.take_along_axis(patches, k[:, None, None], axis=1)[:, 0]


def tokenunify_loss(whole_logits, next_logits, patches, next_target):
  """MSE(sigmoid(whole), x) + MSE(sigmoid(next), x_{k+1}), each a mean over
  every element (`F.mse_loss`); returns (loss, whole term, next term)."""
  whole = jnp.mean((jax.nn.sigmoid(whole_logits) - patches) ** 2)
  nxt = jnp.mean((jax.nn.sigmoid(next_logits) - next_target) ** 2)
  return whole + nxt, whole, nxt


class NextPatchHead(nn.Module):
  """The official `Preciever` (ydchen0806/TokenUnify `src/segmamba_ar.py`)
  in 2-D: [B, H, W, C] image logits -> [B, patch_dim] next-patch logits."""
  patch_dim: int
  channels: int = 12
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, image):
    conv = lambda features, name: nn.Conv(
        features, (3, 3), strides=2, padding=((1, 1), (1, 1)),
        dtype=self.dtype, name=name)
    x = nn.relu(conv(self.channels, "conv1")(image))
    x = nn.relu(conv(self.channels, "conv2")(x))
    x = conv(1, "conv3")(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.patch_dim, kernel_init=dense_init, dtype=self.dtype,
                 name="mlp")(x)
    return x.astype(jnp.float32)


class TokenUnifyNet(nn.Module):
  """Encoder on every patch, MAE decoder with every position visible, and
  the next-patch head on the decoder's output image."""
  encoder: nn.Module
  decoder: MAEDecoder
  next_head: NextPatchHead
  patch_size: int
  channels: int

  def __call__(self, images):
    b = images.shape[0]
    n = self.decoder.grid[0] * self.decoder.grid[1]
    tokens = self.encoder(images)["tokens"]
    ids_restore = jnp.broadcast_to(jnp.arange(n), (b, n))
    whole = self.decoder(tokens, ids_restore)           # [B, N, P] logits
    image = unpatchify(whole, self.patch_size, self.decoder.grid, self.channels)
    return whole, self.next_head(image)


class TokenUnifyTask(EncoderTask):
  """Stage 2. Task contract: `init`, `loss`, `load_pretrained` (the stage-1
  encoder and decoder), plus `features` for the evals (the encoder on the
  clean image)."""

  def __init__(self, config):
    super().__init__(config)
    m, t, d = config.model, config.task, config.data
    if t.fill not in FILLS:
      raise ConfigError(f"task.fill={t.fill!r} is unknown; use one of {FILLS}.")
    if m.token_reduction.method != "none":
      raise ConfigError(
          f"model.token_reduction.method={m.token_reduction.method!r}: the "
          "tokenunify encoder sees every patch without reduction; set it to "
          "'none'.")
    self.grid = build.grid(config)
    self.num_patches = self.grid[0] * self.grid[1]
    self.patch_dim = m.patch_size**2 * d.channels
    self.mean = jnp.asarray(d.mean, jnp.float32)
    self.std = jnp.asarray(d.std, jnp.float32)
    self.encoder = models.get_model(m.name).build(m, num_classes=0)
    dec = t.decoder
    self.model = TokenUnifyNet(
        encoder=self.encoder,
        decoder=MAEDecoder(grid=self.grid, patch_dim=self.patch_dim,
                           width=dec.width, depth=dec.depth,
                           num_heads=dec.num_heads, attn_impl=m.attn_impl,
                           dtype=build.dtype(m)),
        next_head=NextPatchHead(self.patch_dim, t.next_head.channels,
                                build.dtype(m)),
        patch_size=m.patch_size, channels=d.channels)

  def init(self, rng, batch):
    return self.model.init(rng, batch["image"])["params"], {}

  def load_pretrained(self, params, state):
    """The stage-1 encoder and decoder from `task.init_from`'s newest
    checkpoint; the next-patch head stays new."""
    workdir = self.config.task.init_from
    if not workdir:
      raise ConfigError(
          "task.init_from is not set; pass the workdir of a finished stage-1 "
          "MAE run (configs/tokenunify/mnist_vit_tiny_mae.py): "
          "--config.task.init_from=DIR.")
    loaded = checkpoint.load_params(workdir, option="task.init_from")
    wanted = {"encoder": params["encoder"], "decoder": params["decoder"]}
    diff = checkpoint.shape_mismatch(loaded, wanted)
    if diff:
      raise checkpoint.CheckpointError(
          f"the params in task.init_from={str(workdir)!r} do not fit this "
          f"config's encoder and decoder: {diff}. Point it at a stage-1 MAE "
          "run and set model and task.decoder to that run's.")
    loaded = jax.tree.map(lambda t, x: jnp.asarray(x, t.dtype), wanted, loaded)
    return dict(params, **loaded), state

  def pixels(self, images):
    """Normalized images -> their [0, 1] pixels."""
    return images.astype(jnp.float32) * self.std + self.mean

  def inputs(self, images, rng):
    """(network input [B, H, W, C] normalized, [0, 1] patches [B, N, P],
    prefix lengths k [B])."""
    k_rng, fill_rng = jax.random.split(rng)
    p, c = self.config.model.patch_size, self.config.data.channels
    patches = patchify(self.pixels(images), p)
    k = prefix_lengths(k_rng, images.shape[0], self.num_patches)
    corrupted = prefix_input(patches, k, fill_rng, self.config.task.fill)
    x = (unpatchify(corrupted, p, self.grid, c) - self.mean) / self.std
    return x.astype(images.dtype), patches, k

  def loss(self, params, state, batch, rng, step):
    del step
    x, patches, k = self.inputs(batch["image"], rng)
    whole, nxt = self.model.apply({"params": params}, x)
    loss, whole_mse, next_mse = tokenunify_loss(whole, nxt, patches,
                                                next_patch(patches, k))
    return loss, ({"loss": loss, "whole_mse": whole_mse, "next_mse": next_mse,
                   "prefix_length": k.mean()}, state)
