"""TokenUnify stage 2: next-patch and whole-image prediction from a prefix,
starting from a 40%-mask MAE, on the embedded MNIST sample.

Reproduces: nothing from a paper at this scale; the second stage of
TokenUnify (Chen et al., arXiv 2405.16847; ydchen0806/TokenUnify
`src/run_mamba_mae_AR.sh`, `auto_mode=1`, `fill_nose=1`) on real digits:
the encoder and decoder of configs/tokenunify/mnist_vit_tiny_mae.py (stage
1) are fine-tuned with a new next-patch head. Per image a prefix of k of
the 49 raster-ordered 4x4 patches (k uniform on 1..48) is kept, the rest
is N(0, 1) noise in [0, 1] pixel units; the loss is the MSE of the
sigmoid whole-image prediction plus the MSE of the sigmoid next-patch
(patch k+1) prediction (`maskmodel.tasks.tokenunify`). The optimizer is the
official one, as in stage 1: AdamW (0.9, 0.95), weight decay 0.05, base lr
1e-3 per 256 images (5e-4 at batch 128), no warmup, cosine to 0, no
effective clipping. 1000 steps at batch 128 (stage 1 also runs 1000);
random resized crops of scale 0.5-1.0.
Evaluation reads the encoder on clean images, its patch tokens
average-pooled; the report compares k-NN, linear-probe and low-label
accuracy with the same encoder at random init and with raw pixels.
Measured (seed 0, the two commands below; test-split accuracy, k-NN /
linear probe / fine-tune on 1% / on 10% of the labels):
  stage 2 (TokenUnify)         0.518 / 0.781 / 0.343 / 0.518
  stage 1 alone (MAE at 40%)   0.708 / 0.836 / 0.452 / 0.703
  random init (either run)     0.463 / 0.750 / 0.327 / 0.313
  raw pixels                   0.950 / 0.885 / 0.679 / 0.860
The paper's claim that the autoregressive stage improves on MAE alone does
not hold here: stage 2 stays above random init but loses to its own
starting point on every column, and pixels win by far. One seed, 1000
steps per stage (so stage 2 has had twice MAE's training in all).
Hardware / time: 2 CPU cores shared with other jobs (load average about
20): 28m09s wall for the first command (390 s of user CPU), 42m38s for
the second (559 s), evals included.

  python -m maskmodel.main --config configs/tokenunify/mnist_vit_tiny_mae.py --workdir workdirs/tokenunify_mae
  python -m maskmodel.main --config configs/tokenunify/mnist_vit_tiny.py --workdir workdirs/tokenunify --config.task.init_from=workdirs/tokenunify_mae

`task.init_from` is the stage-1 run's workdir, read once at the start (a
resume needs only this run's own checkpoints); the model and
`task.decoder` must be stage 1's. The config argument may also carry it:
`configs/tokenunify/mnist_vit_tiny.py:mae=DIR`.

Variants: `:smoke` (stage 1's `:smoke` model) runs a few steps, for tests;
`:smoke,mae=DIR` sets the stage-1 workdir too.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  args = dict(a.partition("=")[::2] for a in (arg or "").split(",") if a)
  c = mm.base_config()
  c.task = ml_collections.ConfigDict(dict(
      name="tokenunify",
      init_from=args.get("mae", ""),    # the stage-1 MAE run's workdir
      fill="noise",                     # the suffix: "noise" or "zeros"
      decoder=dict(width=64, depth=2, num_heads=4),   # stage 1's decoder
      next_head=dict(channels=12)))
  c.model.width = 96
  c.model.num_heads = 3
  c.model.pool = "gap"
  c.total_steps = 1000
  c.batch_size = 128
  c.log_every = 100
  c.checkpoint_every = 500
  c.optimizer.lr = 5e-4       # blr 1e-3 * 128 / 256
  c.optimizer.warmup_steps = 0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 0.0
  c.data.crop_scale = (0.5, 1.0)
  c.evals.names = ("knn", "linear_probe", "low_label")
  c.evals.compare_random_init = True

  if "smoke" in args:
    c.total_steps = 10
    c.batch_size = 32
    c.log_every = 5
    c.checkpoint_every = 5
    c.model.width = 32
    c.model.depth = 1
    c.model.num_heads = 2
    c.task.decoder = dict(width=32, depth=1, num_heads=2)
    c.evals.names = ("knn",)
    c.data.train_examples, c.data.test_examples = 1000, 500
  return c
