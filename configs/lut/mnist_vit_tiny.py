"""LUT pretraining of a tiny ViT on the embedded MNIST sample.

Reproduces: nothing from a paper at this scale; LUT's objective (Kim et
al. 2024) on real digits: two views of each digit (random crops with 4
pixels of reflect padding, no flips: digits are not mirror-symmetric; the
second view with brightness/contrast jitter at p 0.8, then nothing,
solarize or blur), disjoint visible sets from one noise (mask ratio 0.75:
12 of 49 patches per view), MAE's 2x64 decoder with the norm-pix loss on
view 1, and the broader-context loss (weight 0.25) between each view's
predicted projection of its visible tokens and an EMA teacher's projection
of the other, whole view. The projector and predictor are 96-512-96 MLPs:
the official ViT-B heads are 768-4096-768, about 5x the width, and 512 is
5x this width. The EMA decay goes from 0.996 to 1 by a cosine over the run.
1,500 steps at batch 128.
The report compares k-NN and linear-probe accuracy with the same encoder at
random init and with raw pixels.
Expected: not measured for this file's own schedule. At the zoo's budget
(experiments/mim_zoo: 500 training steps, batch 128, mean-pooled features, seed
0) it scored k-NN 0.482 / linear probe 0.668, against 0.463 / 0.750
for the same network at random init and 0.950 / 0.885 for raw pixels
(the command is in experiments/mim_zoo/README.md).
Hardware / time: 2 CPU cores; the full run is not timed yet (a 60-step
trial ran at about 1.1 steps/s on 2 shared cores). A step runs the encoder
on two masked views and the teacher on two whole views.

  python -m maskmodel.main --config configs/lut/mnist_vit_tiny.py --workdir /tmp/lut_mnist

`--config.task.bc_weight=0` is MAE on view 1 only (the paper's baseline).
Variants: `:smoke` runs a few steps with a smaller model, for tests.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  c = mm.base_config()
  c.task = ml_collections.ConfigDict(dict(
      name="lut", mask_ratio=0.75, norm_pix_loss=True,
      decoder=dict(width=64, depth=2, num_heads=4),
      bc_weight=0.25, head_hidden=512, ema_start=0.996,
      crop_padding=4, color_jitter=(0.4, 0.4, 0.2, 0.1),
      color_jitter_prob=0.8, blur_radius=(0.1, 2.0)))
  c.data.flip = False
  c.model.width = 96
  c.model.num_heads = 3
  c.total_steps = 1500
  c.batch_size = 128
  c.log_every = 100
  c.checkpoint_every = 500
  c.optimizer.lr = 1.5e-3
  c.optimizer.warmup_steps = 100
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
    c.task.decoder = dict(width=32, depth=1, num_heads=2)
    c.task.head_hidden = 64
    c.evals.knn.every = 5
    c.evals.linear_probe.steps = 20
  return c
