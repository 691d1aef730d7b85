"""SparK pretraining of a tiny ConvNeXt-style convnet on the embedded MNIST
sample.

Reproduces: nothing from a paper at this scale; SparK's objective (Tian et
al. 2023) on real digits, showing that maskmodel is not ViT-only: a 2-stage
convnet (widths 48 and 96, strides 2 and 4, so a 7 x 7 coarsest grid) runs
sparsely on the 40% of cells a random mask leaves active, the per-scale
features are densified with mask tokens, and a light UNet decoder (64 wide,
BatchNorm) regresses the normalized pixels of the masked 4 x 4 cells. The
report compares k-NN and linear-probe accuracy with the same convnet at
random init and with raw pixels.
Expected: not measured for this file's own schedule. At the zoo's budget
(experiments/mim_zoo: 500 training steps, batch 128, mean-pooled features, seed
0) it scored k-NN 0.329 / linear probe 0.686, against 0.249 / 0.267
for the same network at random init and 0.950 / 0.885 for raw pixels
(the command is in experiments/mim_zoo/README.md).
Hardware / time: 2 CPU cores.

  python -m maskmodel.main --config configs/spark/mnist_convnet_tiny.py --workdir /tmp/spark_mnist

Variants: `:smoke` runs a few steps with a smaller model, for tests.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  c = mm.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="convnet", widths=(48, 96), depths=(2, 2), stem=2, dtype="float32",
      attn_impl="auto"))
  c.task = ml_collections.ConfigDict(dict(name="spark", mask_ratio=0.6,
                                          decoder_width=64))
  c.total_steps = 1500
  c.batch_size = 128
  c.log_every = 100
  c.checkpoint_every = 500
  c.optimizer.lr = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.999
  c.data.crop_scale = (0.5, 1.0)
  c.evals.names = ("knn", "linear_probe", "reconstruction")
  c.evals.compare_random_init = True
  c.evals.knn.every = 500

  if arg == "smoke":
    c.total_steps = 10
    c.batch_size = 32
    c.log_every = 5
    c.checkpoint_every = 5
    c.optimizer.warmup_steps = 2
    c.model.widths = (8, 16)
    c.model.depths = (1, 1)
    c.task.decoder_width = 16
    c.evals.knn.every = 5
    c.evals.linear_probe.steps = 20
  return c
