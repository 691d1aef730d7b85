"""SALT stage 2: a student regressing a frozen teacher's latents, on the
embedded MNIST sample.

Reproduces: nothing from a paper at this scale; SALT's second stage (Li et
al. 2025, "Rethinking JEPA", arXiv 2509.24317) on real digits: the teacher
trained by configs/salt/mnist_vit_tiny_teacher.py (stage 1) is frozen; a
new student of the same size (context encoder plus I-JEPA's predictor, half
its width, 2 blocks) regresses the teacher's layer-normed latents at
I-JEPA's multi-block target blocks (the stage-1 masks) with the L1 loss
(V-JEPA's). No EMA. The optimizer, augmentation and length (150 steps at
batch 128) are stage 1's.
Evaluation reads the student's encoder, its tokens average-pooled. The
report compares k-NN and linear-probe accuracy with the same encoder at
random init and with raw pixels.
Measured (seed 0, the two commands below), the student: k-NN 0.443, linear
probe 0.744; the same student at random init 0.413 / 0.702; raw pixels
0.950 / 0.885; its stage-1 teacher 0.433 / 0.720. The student passes its
own random init and its teacher, but the stage-1 encoder's random init (the
same architecture, another draw of the weights) scored 0.470 / 0.749, so
at this budget the gain is within what the initial draw alone moves, and
pixels win by far. One seed.
Hardware / time: 2 CPU cores shared with other jobs: 6m07s wall for the
second command (training at 0.4-0.5 steps/s, then the evals), 171 s of CPU
time; the first takes 7m12s.

  python -m maskmodel.main --config configs/salt/mnist_vit_tiny_teacher.py --workdir workdirs/salt_teacher
  python -m maskmodel.main --config configs/salt/mnist_vit_tiny.py --workdir workdirs/salt_student --config.task.teacher_workdir=workdirs/salt_teacher

`task.teacher_workdir` is the stage-1 run's workdir; the teacher is read
from its last checkpoint once, at the start, and written into this run's
`checkpoints/frozen/`, so a resume does not need it. The config argument
may also carry it: `configs/salt/mnist_vit_tiny.py:teacher=DIR`.

Variants: `:smoke` (stage 1's `:smoke` model) runs a few steps with a
smaller model, for tests; `:smoke,teacher=DIR` sets the teacher too.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  args = dict(a.partition("=")[::2] for a in (arg or "").split(",") if a)
  c = mm.base_config()
  c.task = ml_collections.ConfigDict(dict(
      name="salt", num_targets=4, target_scale=(0.15, 0.2),
      target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0), min_keep=4,
      allow_overlap=False, mask_group_size=128, context_length=0,
      predictor=dict(width=48, depth=2, num_heads=0),  # 0: the encoder's heads
      # The stage-1 run's workdir, and its model (0: the student's value).
      teacher_workdir=args.get("teacher", ""),
      teacher=dict(width=0, depth=0, num_heads=0, mlp_ratio=0.0),
      loss="l1", target_norm=True))
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

  if "smoke" in args:
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
