"""SimMIM pretraining of a tiny ViT on the embedded MNIST sample.

Reproduces: nothing from a paper at this scale; SimMIM's objective (Xie et
al. 2022) on real digits, with the paper's masking: mask cells of twice the
patch size, ratio 0.6, L1 on masked pixels of the mean/std-normalized input.
The digits are resized from 28 to 32 pixels so that the 8 x 8 patch grid
splits into 4 x 4 mask cells. The report compares k-NN and linear-probe
accuracy with the same encoder at random init and with raw pixels.
Expected (seed 0, measured by the command below; [CLS] features, the
default `model.pool`):

  | encoder                   | k-NN   | linear probe |
  | SimMIM-pretrained         | 0.5370 | 0.8240       |
  | same encoder, random init | 0.5090 | 0.7880       |
  | raw pixels, no encoder    | 0.9510 | 0.8840       |

Raw pixels beat this encoder on both, by far; it barely beats its random
init. (The MAE main job, with mean-pooled features, reads 0.806 / 0.911.)
Reconstruction MSE on hidden pixels: 0.8664 (normalized units).
Hardware / time: 2 idle CPU cores, 9 min 3 s wall (523 s training); the
encoder sees all 64 patches, so a step costs about 2.5 MAE steps.

  python -m maskmodel.main --config configs/simmim/mnist_vit_tiny.py --workdir /tmp/simmim_mnist

Variants: `:smoke` runs a few steps with a smaller model, for tests.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  c = mm.base_config()
  c.task = ml_collections.ConfigDict(dict(
      name="simmim", mask_ratio=0.6, mask_patch_size=8))
  c.data.image_size = 32
  c.data.crop_scale = (0.67, 1.0)  # SimMIM's RandomResizedCrop scale
  c.model.patch_size = 4
  c.model.width = 96
  c.model.num_heads = 3
  c.total_steps = 1500
  c.batch_size = 128
  c.log_every = 100
  c.checkpoint_every = 500
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.999  # SimMIM's AdamW betas (0.9, 0.999)
  c.optimizer.grad_clip = 5.0  # SimMIM's clip
  c.evals.names = ("knn", "linear_probe", "reconstruction")
  c.evals.compare_random_init = True
  c.evals.knn.every = 500

  if arg == "smoke":
    c.total_steps = 10
    c.batch_size = 32
    c.log_every = 5
    c.checkpoint_every = 5
    c.optimizer.warmup_steps = 2
    c.model.width = 32
    c.model.depth = 1
    c.model.num_heads = 2
    c.evals.knn.every = 5
    c.evals.linear_probe.steps = 20
  return c
