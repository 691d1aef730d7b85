"""MAE pretraining of a tiny ViT on Fashion-MNIST (60,000 train / 10,000 test).

Reproduces: nothing from a paper; it is the small real-data benchmark the
masked-modeling zoo compares on, since MNIST digits are too easy to separate
methods. Linear probe and k-NN of the pretrained encoder, next to the same
encoder at random init and raw pixels.
Expected: TBD
Hardware / time: TBD

  python -m maskmodel.main --config configs/mae/fashion_mnist_vit_tiny.py --workdir /tmp/mae_fashion

Data: `data.name = "fashion_mnist"` reads the IDX files of Debian's
`dataset-fashion-mnist` (`make data`) from /usr/share/datasets/fashion-mnist,
or from `--config.data.data_dir=DIR`.
Variants: `:smoke` runs a few steps with a smaller model, for tests.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  c = mm.base_config()
  c.total_steps = 1500
  c.batch_size = 128
  c.log_every = 100
  c.checkpoint_every = 500

  c.data.name = "fashion_mnist"
  c.data.image_size = 28
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.mean = (0.2860,)  # the 60,000 training images
  c.data.std = (0.3530,)
  c.data.crop_scale = (0.5, 1.0)  # items are centered; keep most of each one
  c.data.flip = True  # garments are left-right symmetric

  c.model.name = "vit"
  c.model.patch_size = 4
  c.model.width = 96
  c.model.depth = 4
  c.model.num_heads = 3

  c.task = ml_collections.ConfigDict(dict(
      name="mae", mask_ratio=0.75, norm_pix_loss=True,
      decoder=dict(width=64, depth=2, num_heads=4)))

  c.optimizer.lr = 1.5e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.05

  c.evals.names = ("knn", "linear_probe", "reconstruction")
  c.evals.compare_random_init = True
  c.evals.knn.every = 0
  c.evals.linear_probe.steps = 500

  if arg == "smoke":
    c.total_steps = 20
    c.batch_size = 32
    c.log_every = 5
    c.checkpoint_every = 10
    c.optimizer.warmup_steps = 5
    c.model.width = 32
    c.model.depth = 1
    c.model.num_heads = 2
    c.task.decoder.width = 32
    c.task.decoder.depth = 1
    c.task.decoder.num_heads = 2
    c.evals.linear_probe.steps = 50
  return c
