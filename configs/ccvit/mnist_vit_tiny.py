"""CCViT pretraining of a tiny ViT on the embedded MNIST sample.

Reproduces: nothing from a paper at this scale; CCViT's objective (Yan et
al. 2023, Cakeyan/CCViT_Public) on real digits. A k-means tokenizer of 512
centroids (20 Lloyd iterations) is fitted on the 4 x 4 patches of the first
2,000 training digits before step 1. Each step hides 19 of the 49 patches
with BEiT block masks (CCViT's 75 of 196 scaled to the grid, smallest block
4 for its 16), mask tokens in the encoder, replaces 5 further visible
patches (its 20 of 196) by their centroid's pixels, and trains a linear
head to predict the centroid ids at those 24 positions (cross-entropy).
Features are the mean of the patch tokens. The report compares k-NN, linear
probe and low-label fine-tuning with the same encoder at random init and
with raw pixels.
Expected (seed 0, this file as it is, the command below; mean-pooled
features; the run report's table):

  | metric           | CCViT | random init | raw pixels |
  |------------------|-------|-------------|------------|
  | k-NN             | 0.607 | 0.399       | 0.950      |
  | linear probe     | 0.797 | 0.755       | 0.885      |
  | 1%-label tune    | 0.460 | 0.335       | 0.679      |
  | 10%-label tune   | 0.769 | 0.284       | 0.860      |

It beats random init everywhere and loses to raw pixels everywhere (k-NN
0.630 at step 500, 0.624 at step 1000). Not run yet: `:no_replace`, `:dual`.
Hardware / time: 2 CPU cores shared with other jobs (load average near 20),
60 min wall including the tokenizer fit and the evals (3,373 s of
training); the encoder sees all 49 patches.

  python -m maskmodel.main --config configs/ccvit/mnist_vit_tiny.py --workdir /tmp/ccvit_mnist

Variants (comma-separated, e.g. `:dual,smoke`): `no_replace` sets
task.replace=0 (BEiT-style masking only), `dual` adds the CLS-bottleneck
pixel loss (task.dual_loss, from block 3 of 4, as CCViT's block 9 of 12),
`smoke` runs a few steps with a smaller model and tokenizer, for tests.
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  flags = set(arg.split(",")) if arg else set()
  unknown = flags - {"smoke", "no_replace", "dual"}
  if unknown:
    raise ValueError(f"config argument {sorted(unknown)} is unknown; use "
                         "any of smoke, no_replace, dual (e.g. :dual,smoke).")
  c = mm.base_config()
  c.task = ml_collections.ConfigDict(dict(
      name="ccvit",
      num_masked=19,  # 75 of 196 at ViT-B/16, scaled to 49 patches
      min_block=4,  # the smallest block, 16 of 75 there
      replace=5,  # 20 of 196 there; 0 turns replacement off
      dual_loss=False,
      dual_layer=3,  # the patch tokens after block 3 of 4 (9 of 12 at ViT-B)
      dual_depth=2,
      tokenizer=dict(name="kmeans", vocab_size=512, iterations=20,
                     batch_size=0, images=2000)))
  c.data.crop_scale = (0.5, 1.0)  # digits are centered; keep most of each one
  c.model.patch_size = 4
  c.model.width = 96
  c.model.num_heads = 3
  c.model.pool = "gap"
  c.total_steps = 1500
  c.batch_size = 128
  c.log_every = 100
  c.checkpoint_every = 500
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.98  # CCViT's AdamW betas (0.9, 0.98)
  c.optimizer.grad_clip = 3.0  # and clip 3.0
  c.evals.names = ("knn", "linear_probe", "low_label")
  c.evals.compare_random_init = True
  c.evals.knn.every = 500

  if "no_replace" in flags:
    c.task.replace = 0
  if "dual" in flags:
    c.task.dual_loss = True
  if "smoke" in flags:
    c.total_steps = 10
    c.batch_size = 32
    c.log_every = 5
    c.checkpoint_every = 5
    c.optimizer.warmup_steps = 2
    c.model.width = 32
    c.model.depth = 2
    c.model.num_heads = 2
    c.task.dual_layer = 1
    c.task.dual_depth = 1
    c.task.tokenizer = dict(name="kmeans", vocab_size=64, iterations=5,
                            batch_size=0, images=64)
    c.evals.knn.every = 5
    c.evals.linear_probe.steps = 20
    c.data.train_examples, c.data.test_examples = 1000, 500
    c.evals.low_label.steps = 5
    c.evals.low_label.batch_size = 16
  return c
