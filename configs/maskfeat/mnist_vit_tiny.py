"""MaskFeat pretraining of a tiny ViT on the embedded MNIST sample.

Reproduces: nothing from a paper at this scale; MaskFeat's objective (Wei et
al. 2022) on real digits: BEiT block masks over 40% of the patches (smallest
block a fifth of them), mask tokens in the encoder, a linear head regressing
each masked patch's HOG (9 unsigned bins per cell, cells of half the patch:
2 x 2 cells of 2 px on the 4 px patches). The report compares k-NN and
linear-probe accuracy with the same encoder at random init and with raw
pixels.
Expected: not measured for this file's own schedule. At the zoo's budget
(experiments/mim_zoo: 500 training steps, batch 128, mean-pooled features, seed
0) it scored k-NN 0.486 / linear probe 0.747, against 0.463 / 0.750
for the same network at random init and 0.950 / 0.885 for raw pixels
(the command is in experiments/mim_zoo/README.md).
Hardware / time: 2 CPU cores; the encoder sees all 49 patches.

  python -m maskmodel.main --config configs/maskfeat/mnist_vit_tiny.py --workdir /tmp/maskfeat_mnist

Variants: `:smoke` runs a few steps with a smaller model, for tests.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  c = mm.base_config()
  c.task = ml_collections.ConfigDict(dict(name="maskfeat", mask_ratio=0.4,
                                          hog_cell=2))
  c.data.crop_scale = (0.5, 1.0)  # MaskFeat's RandomResizedCrop scale
  c.model.patch_size = 4
  c.model.width = 96
  c.model.num_heads = 3
  c.total_steps = 1500
  c.batch_size = 128
  c.log_every = 100
  c.checkpoint_every = 500
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.999
  c.evals.names = ("knn", "linear_probe")
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
