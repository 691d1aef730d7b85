"""HPM pretraining of a tiny ViT on the embedded MNIST sample.

Reproduces: nothing from a paper at this scale; HPM's objective (Wang et
al. 2023) on real digits: the main job's MAE (mask 0.75, 2 x 64 decoder)
plus a loss predictor of the decoder's shape trained with the relative loss,
and masks that hide the patches an EMA teacher predicts hardest, from none
to half of the hidden ones over the run. Raw-pixel target, as the official
scripts. One epoch is 4,000 // 128 = 31 steps; the EMA decay ramps from
0.999 to 0.9999 over the first half of the run (the paper: 100 of 200
epochs). `--config.task.mine_hard_patches=False` is the "loss predictor
only" variant (random masks, no teacher).
Expected: not measured yet.
Hardware / time: 2 CPU cores; a step costs about two MAE steps (second
decoder, teacher forward on full images).

  python -m maskmodel.main --config configs/hpm/mnist_vit_tiny.py --workdir /tmp/hpm_mnist

Variants: `:smoke` runs a few steps with a smaller model, for tests.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  c = mm.base_config()
  c.task = ml_collections.ConfigDict(dict(
      name="hpm", mask_ratio=0.75, norm_pix_loss=False,
      decoder=dict(width=64, depth=2, num_heads=4),
      mine_hard_patches=True, steps_per_epoch=4000 // 128,
      ema_start=0.999, ema_end=0.9999, ema_ramp_epochs=24))
  c.model.width = 96
  c.model.num_heads = 3
  c.total_steps = 1500
  c.batch_size = 128
  c.log_every = 100
  c.checkpoint_every = 500
  c.optimizer.lr = 1.5e-3
  c.optimizer.warmup_steps = 100
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
    c.model.width = 32
    c.model.depth = 1
    c.model.num_heads = 2
    c.task.decoder = dict(width=32, depth=1, num_heads=2)
    c.task.steps_per_epoch = 2
    c.task.ema_ramp_epochs = 2
    c.evals.knn.every = 5
    c.evals.linear_probe.steps = 20
  return c
