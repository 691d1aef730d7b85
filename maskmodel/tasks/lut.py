"""LUT: Learning with Unmasked Tokens Drives Stronger Vision Learners (Kim et
al., ECCV 2024, arXiv 2310.13593).

MAE, plus a "broader context" (BC) branch that asks the few visible tokens
of a masked view to agree with what a teacher sees of the whole image. The
equations below are those of the official code (naver-ai/lut
`models/models_lut.py`, `engines/engine_lut.py`, `main_lut.py`):

- Two views of each image, made on the host (`preprocess`; `TwoGlobalView
  Augmentation` in `main_lut.py`): no random resized crop, but a resize of
  the shorter side, a random crop with 4 pixels of reflect padding and a
  flip, drawn independently per view. The second view adds colour jitter
  (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p = 0.8, then
  one of grayscale, solarize or Gaussian blur (radius 0.1-2), each with
  probability 1/3. The ops are PIL's, as torchvision's on PIL images; on
  1-channel data saturation, hue and grayscale are the identity there, so
  the second view gets brightness and contrast jitter and then, with
  probability 1/3 each, nothing, solarize or blur.
- One uniform noise per image ranks its patches; view 1 keeps ids[:n] and
  view 2 keeps ids[n:2n] (`random_masking`), so the two visible sets are
  disjoint; n = int(N (1 - mask_ratio)).
- MAE's decoder and normalized-pixel MSE on view 1 only (L_mae).
- BC branch: q_v = g(h(mean of view v's visible patch tokens)), with h the
  projector and g the predictor, both Linear-BN-ReLU-Linear MLPs without
  biases and without a last BatchNorm (`_build_mlp`; 768-4096-768 for
  ViT-B). The teacher, an EMA of the model, sees both views unmasked:
  z_v = h_ema(mean patch tokens). With unit vectors,
    L_bc = mean over v != v' of (2 - 2 <q_v, z_v'>)
  (`loss_ftn` and the loop over pairs in `train_one_epoch`), and the loss is
  L_mae + bc_weight L_bc (`--w_bc 0.25` in `docs/PRETRAIN.md`).
- BatchNorm: the student's in training mode on each view's batch apart, its
  statistics over the whole global batch (torch's SyncBatchNorm; under
  `jit` a mean over the batch axis of a sharded array is already global).
  The running statistics are task state, updated with torch's momentum 0.1
  and unbiased variance, once per view and head call. The teacher is in
  eval mode (timm's `ModelEma` calls `.eval()`), so it normalizes with its
  running statistics, which are the EMA of the student's.
- The EMA decay follows a cosine from `ema_start` (0.996) to 1 over the run,
  per step (`cosine_scheduler` in `util/augs.py`, used by `main_lut.py`).
  The official schedule counts micro-batches and updates the EMA once per
  `accum_iter` of them; here a step is one optimizer step of the global
  batch, so the cosine is the same function of the run's progress.

Deliberate differences, named here:
- The teacher keeps only what it runs: the encoder and the projector with
  its statistics. The official EMA also averages the decoder and predictor,
  which the teacher never uses.
- `data.flip` decides the flips (the official always flips; digits are not
  mirror-symmetric, so the MNIST config turns it off).
- The blur radius is in pixels, as officially (`task.blur_radius`), at any
  image size.
- `task.bc_weight=0` skips the BC branch: the loss is then MAE's on view 1,
  with MAE's mask from the same rng.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from maskmodel import data, masking
from maskmodel.config import ConfigError
from maskmodel.models.mae import MAEDecoder
from maskmodel.models.vit import ViT, dense_init
from maskmodel.tasks import teachers
from maskmodel.tasks.mae import MAETask, masked_mse


# ---------------------------------------------------------------- views


def resize_shorter_side(image, size: int):
  """torchvision's `Resize(size, interpolation=BICUBIC)`: the shorter side
  to `size`, the aspect kept."""
  h, w = image.shape[:2]
  if min(h, w) == size:
    return image
  oh, ow = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((ow, oh), Image.BICUBIC))
  return out[..., None] if squeeze else out


def random_crop_with_padding(image, size: int, padding: int, rng):
  """torchvision's `RandomCrop(size, padding, padding_mode="reflect")`."""
  if padding:
    image = np.pad(image, ((padding, padding), (padding, padding), (0, 0)),
                   mode="reflect")
  h, w = image.shape[:2]
  y0 = int(rng.integers(0, h - size + 1))
  x0 = int(rng.integers(0, w - size + 1))
  return image[y0:y0 + size, x0:x0 + size]


def _pil(image):
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(pil, channels):
  out = np.asarray(pil)
  return out[..., None] if channels == 1 else out


def adjust_hue(pil, factor):
  """torchvision's PIL `adjust_hue`: shift H of HSV by factor * 255 (mod 256);
  the identity on grayscale."""
  if pil.mode == "L":
    return pil
  h, s, v = pil.convert("HSV").split()
  h = (np.asarray(h).astype(np.int32) + int(factor * 255)) % 256
  return Image.merge("HSV", (Image.fromarray(h.astype(np.uint8), "L"), s, v)
                     ).convert(pil.mode)


def color_jitter(image, rng, brightness, contrast, saturation, hue):
  """torchvision's `ColorJitter` on a PIL image: the four adjustments in a
  random order, each factor uniform in [1 - x, 1 + x] (hue in [-x, x])."""
  channels = image.shape[-1]
  pil = _pil(image)
  factors = (rng.uniform(max(0, 1 - brightness), 1 + brightness),
             rng.uniform(max(0, 1 - contrast), 1 + contrast),
             rng.uniform(max(0, 1 - saturation), 1 + saturation),
             rng.uniform(-hue, hue))
  ops = (lambda p, f: ImageEnhance.Brightness(p).enhance(f),
         lambda p, f: ImageEnhance.Contrast(p).enhance(f),
         lambda p, f: ImageEnhance.Color(p).enhance(f),   # identity on "L"
         adjust_hue)
  for i in rng.permutation(4):
    pil = ops[i](pil, factors[i])
  return _array(pil, channels)


def one_of_three(image, rng, blur_radius):
  """`RandomChoice([RandomGrayscale(p=1), Solarization(p=1),
  GaussianBlur(p=1)])`; grayscale keeps the channel count."""
  channels = image.shape[-1]
  pil = _pil(image)
  choice = int(rng.integers(3))
  if choice == 0:
    pil = pil.convert("L").convert(pil.mode)
  elif choice == 1:
    pil = ImageOps.solarize(pil)   # threshold 128
  else:
    pil = pil.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*blur_radius)))
  return _array(pil, channels)


# ---------------------------------------------------------------- masks


def disjoint_masks(rng, batch_size: int, grid: tuple[int, int], *, keep: int):
  """LUT's two masks from one noise per image: view 1 keeps ids[:keep], view
  2 keeps ids[keep:2 keep] of the ascending sort (`random_masking` in
  `models_lut.py`). View 1's mask is MAE's `random_mask` from the same rng."""
  noise = jax.random.uniform(rng, (batch_size, grid[0] * grid[1]))
  first = masking.mask_from_scores(noise, keep)
  # Noise is in [0, 1): moving view 1's patches to 2 keeps the order of the
  # others, so view 2's first `keep` are ids[keep:2 keep].
  second = masking.mask_from_scores(jnp.where(first.mask == 0, 2.0, noise), keep)
  return first, second


# ---------------------------------------------------------------- heads


class BatchNorm1d(nn.Module):
  """torch's `BatchNorm1d` over [B, D]: batch statistics in training (biased
  variance to normalize, unbiased into the running variance, momentum 0.1),
  running statistics otherwise."""
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,))
    bias = self.param("bias", nn.initializers.zeros, (d,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (d,))
    ra_var = self.variable("batch_stats", "var", jnp.ones, (d,))
    if train:
      mean, var = x.mean(axis=0), x.var(axis=0)
      if not self.is_initializing():
        n, m = x.shape[0], self.momentum
        ra_mean.value = (1 - m) * ra_mean.value + m * mean
        ra_var.value = (1 - m) * ra_var.value + m * var * n / max(n - 1, 1)
    else:
      mean, var = ra_mean.value, ra_var.value
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class MLPHead(nn.Module):
  """LUT's projector / predictor (`_build_mlp` with 2 layers, BN, ReLU):
  Linear-BN-ReLU-Linear, no biases, no BatchNorm after the last layer."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.hidden, use_bias=False, kernel_init=dense_init,
                 name="fc_0")(x.astype(jnp.float32))
    x = nn.relu(BatchNorm1d(name="bn_0")(x, train))
    return nn.Dense(self.out, use_bias=False, kernel_init=dense_init,
                    name="fc_1")(x)


def mean_patch_token(tokens):
  """The mean over the non-class tokens, in float32 (`latent[:, 1:].mean(1)`)."""
  return tokens[:, 1:].astype(jnp.float32).mean(axis=1)


class LUTModel(nn.Module):
  """The student: MAE's encoder and decoder, the projector and predictor."""
  encoder: ViT
  decoder: MAEDecoder
  projector: MLPHead
  predictor: MLPHead

  def __call__(self, view1, view2, mask1, mask2, train: bool = True,
               with_bc: bool = True):
    """Pixels predicted for view 1 [B, N, p*p*C], and q [2, B, D] (None
    without the BC branch)."""
    latent1 = self.encoder(view1, ids_keep=mask1.ids_keep,
                           restore_tokens=True)["tokens"]
    pred = self.decoder(latent1, mask1.ids_restore)
    if not with_bc:
      return pred, None
    latent2 = self.encoder(view2, ids_keep=mask2.ids_keep,
                           restore_tokens=True)["tokens"]
    q = [self.predictor(self.projector(mean_patch_token(x), train), train)
         for x in (latent1, latent2)]
    return pred, jnp.stack(q)


class LUTTeacher(nn.Module):
  """The EMA teacher: the encoder on whole views, then the projector in eval
  mode: z_v = h(mean patch tokens)."""
  encoder: ViT
  projector: MLPHead

  def __call__(self, views):
    return jnp.stack([self.projector(
        mean_patch_token(self.encoder(v)["tokens"]), False) for v in views])


# ---------------------------------------------------------------- loss


def bc_loss(q, z):
  """LUT's broader-context loss: q, z [V, B, D] (student predictions,
  teacher projections); mean over ordered pairs v != v' of the batch mean
  of 2 - 2 cos(q_v, z_v'). z is detached."""
  normalize = lambda x: x / jnp.maximum(
      jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)   # F.normalize
  q, z = normalize(q), normalize(jax.lax.stop_gradient(z))
  per_pair = (2 - 2 * jnp.einsum("vbd,wbd->vwb", q, z)).mean(axis=-1)
  v = q.shape[0]
  off_diagonal = 1 - jnp.eye(v)
  return (per_pair * off_diagonal).sum() / off_diagonal.sum()


# The cosine EMA schedule: `cosine_scheduler(start, 1, epochs, niter_per_ep)`
# of naver-ai/lut `util/augs.py` at iteration `step`; 1 at `total_steps`.
ema_decay = teachers.cosine_momentum


class LUTTask(MAETask):
  """MAE's task with a second view, disjoint masks and the BC branch."""

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    n = self.grid[0] * self.grid[1]
    if 2 * self.keep > n:
      raise ConfigError(f"task.mask_ratio={t.mask_ratio} keeps {self.keep} of "
                        f"{n} patches per view; two disjoint views need "
                        "mask_ratio >= 0.5 (LUT uses 0.75).")
    if t.bc_weight < 0:
      raise ConfigError(f"task.bc_weight={t.bc_weight} must be >= 0 (0 is MAE "
                        "on view 1 only; LUT uses 0.25).")
    if not 0.0 <= t.ema_start <= 1.0:
      raise ConfigError(f"task.ema_start={t.ema_start} must be in [0, 1] "
                        "(LUT uses 0.996).")
    if t.head_hidden <= 0:
      raise ConfigError(f"task.head_hidden={t.head_hidden} must be > 0 (the "
                        "MLP heads' hidden width; LUT uses 4096 for ViT-B).")
    if t.crop_padding < 0:
      raise ConfigError(f"task.crop_padding={t.crop_padding} must be >= 0 "
                        "(LUT pads 4 pixels).")
    if not 0.0 <= t.color_jitter_prob <= 1.0:
      raise ConfigError(f"task.color_jitter_prob={t.color_jitter_prob} must "
                        "be in [0, 1] (LUT uses 0.8).")
    if len(t.color_jitter) != 4:
      raise ConfigError(f"task.color_jitter={tuple(t.color_jitter)} must be "
                        "(brightness, contrast, saturation, hue), e.g. "
                        "(0.4, 0.4, 0.2, 0.1).")
    lo, hi = t.blur_radius
    if not 0 < lo <= hi:
      raise ConfigError(f"task.blur_radius={tuple(t.blur_radius)} must be "
                        "(min, max) with 0 < min <= max, e.g. (0.1, 2.0).")
    self.bc_weight = float(t.bc_weight)
    head = lambda: MLPHead(hidden=t.head_hidden, out=m.width)
    self.student = LUTModel(encoder=self.model.encoder,
                            decoder=self.model.decoder,
                            projector=head(), predictor=head())
    self.teacher = LUTTeacher(encoder=self.encoder, projector=head())

  # Views, on the host.
  def preprocess(self, record, rng, train):
    if not train:
      return super().preprocess(record, rng, train)
    t, spec = self.config.task, self.image_spec
    image = resize_shorter_side(record["image"], spec.size)
    def view():
      x = random_crop_with_padding(image, spec.size, t.crop_padding, rng)
      return x[:, ::-1] if self.config.data.flip and rng.uniform() < 0.5 else x
    first, second = view(), view()
    if rng.uniform() < t.color_jitter_prob:
      second = color_jitter(second, rng, *t.color_jitter)
    second = one_of_three(second, rng, tuple(t.blur_radius))
    return {"image": data.normalize(np.ascontiguousarray(first), spec),
            "view2": data.normalize(np.ascontiguousarray(second), spec),
            "label": record["label"]}

  def init(self, rng, batch):
    images = batch["image"]
    mask1, mask2 = disjoint_masks(jax.random.PRNGKey(0), images.shape[0],
                                  self.grid, keep=self.keep)
    variables = self.student.init(rng, images, images, mask1, mask2, False)
    params, stats = variables["params"], variables["batch_stats"]
    # The EMA starts as the model (`ModelEma_sched` deep-copies it).
    state = {"batch_stats": stats, "teacher": self._teacher_part(params, stats)}
    return params, state

  @staticmethod
  def _teacher_part(params, stats):
    return {"params": {"encoder": params["encoder"],
                       "projector": params["projector"]},
            "batch_stats": {"projector": stats["projector"]}}

  def loss(self, params, state, batch, rng, step):
    view1 = batch["image"]
    view2 = batch.get("view2", view1)
    mask1, mask2 = disjoint_masks(rng, view1.shape[0], self.grid, keep=self.keep)
    with_bc = self.bc_weight > 0
    (pred, q), updates = self.student.apply(
        {"params": params, "batch_stats": state["batch_stats"]},
        view1, view2, mask1, mask2, True, with_bc, mutable=["batch_stats"])
    mae = masked_mse(pred, self.target(view1), mask1.mask)
    decay = ema_decay(step, self.config.total_steps, self.config.task.ema_start)
    metrics = {"mae_loss": mae, "ema_decay": decay}
    if not with_bc:
      return mae, (dict(metrics, loss=mae), state)
    z = self.teacher.apply(state["teacher"], (view1, view2))
    bc = bc_loss(q, z)
    loss = mae + self.bc_weight * bc
    return loss, (dict(metrics, loss=loss, bc_loss=bc),
                  dict(state, batch_stats=updates["batch_stats"]))

  def after_update(self, params, state, step):
    """The teacher's EMA step (`ModelEma_sched.update(model, it)`), after the
    optimizer step `step`, over params and running statistics."""
    decay = ema_decay(step, self.config.total_steps, self.config.task.ema_start)
    student = self._teacher_part(params, state["batch_stats"])
    teacher = teachers.ema_update(state["teacher"], student, decay)
    return dict(state, teacher=teacher)

  def predict(self, params, images, rng, state=None):
    mae_params = {"encoder": params["encoder"], "decoder": params["decoder"]}
    return super().predict(mae_params, images, rng, state)
