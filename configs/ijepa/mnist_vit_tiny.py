"""I-JEPA pretraining of a tiny ViT on the embedded MNIST sample.

Reproduces: nothing from a paper at this scale; I-JEPA's objective (Assran
et al. 2023) on real digits with the official recipe scaled down: multi-block
masks (4 targets at scale 0.15-0.2 and aspect 0.75-1.5, one context at
scale 0.85-1.0, the targets removed from it, on the 7x7 patch grid; min_keep
4, the official collator's default, since a target block here holds 6 to
12 patches), the target encoder an EMA whose momentum goes linearly from
0.996 to 1, its layer-normed features at the targets predicted with the
smooth-L1 loss by a predictor of half the encoder's width and depth (as
ViT-B's 384 wide, 6 deep predictor), AdamW (0.9, 0.999) without clipping,
lr warmed up from 2e-4 to 1e-3 over the first 13% of the run (40 of 300
epochs) then a cosine to 1e-6, weight decay a cosine from 0.04 to 0.4.
Random resized crops of scale 0.3-1.0, no flips. Evaluation reads the
target encoder, its tokens average-pooled.
The report compares k-NN and linear-probe accuracy with the same encoder at
random init and with raw pixels.
Measured (seed 0, the command below), target encoder: k-NN 0.436, linear
probe 0.714; the same encoder at random init 0.470 / 0.749; raw pixels
0.950 / 0.885. The context encoder, scored from the same checkpoint (copy
the workdir, rerun with `--config.task.eval_encoder=context`): 0.425 /
0.672. At this budget I-JEPA learns nothing useful: both encoders lose to
their random init, and pixels win by far.
Hardware / time: 2 CPU cores shared with other jobs: 27m55s wall for the
whole command (26m38s of training at about 0.3 steps/s, then the evals),
347 s of CPU time.

  python -m maskmodel.main --config configs/ijepa/mnist_vit_tiny.py --workdir /tmp/ijepa_run

Variants: `:smoke` runs a few steps with a smaller model, for tests.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  c = mm.base_config()
  c.task = ml_collections.ConfigDict(dict(
      name="ijepa", num_targets=4, target_scale=(0.15, 0.2),
      target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0), min_keep=4,
      allow_overlap=False, mask_group_size=128, context_length=0,
      predictor=dict(width=48, depth=2, num_heads=0),  # 0: the encoder's heads
      ema=(0.996, 1.0), loss="smooth_l1", eval_encoder="target"))
  c.model.width = 96
  c.model.num_heads = 3
  c.model.pool = "gap"  # I-JEPA's encoder has no class token
  c.total_steps = 500
  c.batch_size = 128
  c.log_every = 50
  c.checkpoint_every = 250
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_init = 2e-4
  c.optimizer.warmup_steps = 67  # 40 of 300 epochs
  c.optimizer.min_lr = 1e-6
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.04
  c.optimizer.weight_decay_end = 0.4
  c.optimizer.grad_clip = 0.0
  c.data.crop_scale = (0.3, 1.0)
  c.data.flip = False
  c.evals.names = ("knn", "linear_probe")
  c.evals.compare_random_init = True
  c.evals.knn.every = 250

  if arg == "smoke":
    c.total_steps = 10
    c.batch_size = 32
    c.log_every = 5
    c.checkpoint_every = 5
    c.optimizer.warmup_steps = 2
    c.model.width = 32
    c.model.depth = 1
    c.model.num_heads = 2
    c.task.predictor = dict(width=16, depth=1, num_heads=0)
    c.task.mask_group_size = 16
    c.evals.knn.every = 5
    c.evals.linear_probe.steps = 20
  return c
