"""Fine-tune (or train from scratch) the tiny ViT classifier on the embedded
MNIST sample.

Fine-tuning from the main job's MAE checkpoint (MAE Sec. 4 "fine-tuning";
layer-wise lr decay 0.75 as in MAE Appendix A.2):

  python -m maskmodel.main --config configs/mae/mnist_vit_tiny.py --workdir /tmp/mae_mnist
  python -m maskmodel.main --config configs/classify/mnist_vit_tiny.py \
      --workdir /tmp/ft_mnist --config.task.init_from=/tmp/mae_mnist

From scratch: leave `task.init_from` empty and pass
`--config.optimizer.layer_decay=1.0`.
Expected: not measured yet; README "The main job" gives these commands and
the pretraining numbers only.
Hardware / time: 2 CPU cores, a few minutes.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  c = mm.base_config()
  c.model.width = 96
  c.model.num_heads = 3
  c.model.pool = "gap"
  c.task = ml_collections.ConfigDict(dict(
      name="classify", init_from="", label_smoothing=0.1))
  c.total_steps = 600
  c.batch_size = 128
  c.log_every = 50
  c.checkpoint_every = 300
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.b2 = 0.999
  c.optimizer.layer_decay = 0.75
  c.data.crop_scale = (0.5, 1.0)
  c.evals.names = ("accuracy",)
  c.evals.accuracy.every = 300

  if arg == "smoke":
    c.total_steps = 10
    c.batch_size = 32
    c.log_every = 5
    c.checkpoint_every = 5
    c.optimizer.warmup_steps = 2
    c.model.width = 32
    c.model.depth = 1
    c.model.num_heads = 2
  return c
