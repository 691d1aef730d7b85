"""SALT stage 1: a pixel-reconstruction teacher on the embedded MNIST sample.

Reproduces: nothing from a paper at this scale; SALT's first stage (Li et
al. 2025, "Rethinking JEPA", arXiv 2509.24317) on real digits: a ViT
trained to regress the per-patch normalized pixels of I-JEPA's multi-block
target blocks (4 targets at scale 0.15-0.2 and aspect 0.75-1.5, one
context at scale 0.85-1.0 with the targets removed, on the 7x7 patch grid,
min_keep 4) from the context, with the mean squared error. The predictor
is I-JEPA's (half the encoder's width, 2 blocks) with a pixel head. The
optimizer is configs/ijepa/mnist_vit_tiny.py's (AdamW (0.9, 0.999), no
clipping, lr warmed up from 2e-4 to 1e-3 then a cosine to 1e-6, weight
decay a cosine from 0.04 to 0.4), for 150 steps at batch 128 (I-JEPA's
config runs 500; shortened so that each stage takes about 8 minutes). Random resized crops
of scale 0.3-1.0, no flips. Evaluation reads the encoder, its tokens
average-pooled. Stage 2 is configs/salt/mnist_vit_tiny.py.
The report compares k-NN and linear-probe accuracy with the same encoder at
random init and with raw pixels.
Measured (seed 0, the first command below): k-NN 0.433, linear probe
0.720; the same encoder at random init 0.470 / 0.749; raw pixels 0.950 /
0.885. At this budget the teacher is below its own random init, and pixels
win by far.
Hardware / time: 2 CPU cores shared with other jobs: 7m12s wall for the
whole command (training at 0.3-0.6 steps/s, then the evals), 157 s of CPU time.

  python -m maskmodel.main --config configs/salt/mnist_vit_tiny_teacher.py --workdir workdirs/salt_teacher
  python -m maskmodel.main --config configs/salt/mnist_vit_tiny.py --workdir workdirs/salt_student --config.task.teacher_workdir=workdirs/salt_teacher

Variants: `:smoke` runs a few steps with a smaller model, for tests.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  c = mm.base_config()
  c.task = ml_collections.ConfigDict(dict(
      name="salt_teacher", num_targets=4, target_scale=(0.15, 0.2),
      target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0), min_keep=4,
      allow_overlap=False, mask_group_size=128, context_length=0,
      predictor=dict(width=48, depth=2, num_heads=0),  # 0: the encoder's heads
      loss="l2", norm_pix_loss=True))
  c.model.width = 96
  c.model.num_heads = 3
  c.model.pool = "gap"  # the JEPA encoder has no class token
  c.total_steps = 150
  c.batch_size = 128
  c.log_every = 50
  c.checkpoint_every = 75
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_init = 2e-4
  c.optimizer.warmup_steps = 20  # 40 of 300 epochs
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
    c.evals.linear_probe.steps = 20
  return c
