"""TokenUnify stage 1: MAE at 40% masking on the embedded MNIST sample.

Reproduces: nothing from a paper at this scale; the first stage of
TokenUnify (Chen et al., "TokenUnify: Scaling Up Autoregressive Pretraining
for Neuron Segmentation", arXiv 2405.16847; ydchen0806/TokenUnify
`src/run_mamba_mae.sh`, `--mask_ratio=0.4`): masked-image pretraining with
40% of the patches hidden, whose weights stage 2
(configs/tokenunify/mnist_vit_tiny.py) starts from. This is maskmodel's MAE
(`tasks/mae.py`) with MAE's decoder; the official stage 1 differs (see
`maskmodel.tasks.tokenunify`): its network is a dense encoder-decoder that
sees the whole image with the hidden patches filled with N(0, 1) noise
(`fill_mode=1`) and regresses every pixel. Two choices follow the official
stage 1 nonetheless: raw pixels as the target (no `norm_pix_loss`), and its
optimizer, the one stage 2 uses too: AdamW (0.9, 0.95), weight decay 0.05,
base lr 1e-3 per 256 images (5e-4 at batch 128), no warmup, cosine to 0, no
effective gradient clipping (the official `clip_grad_norm_` runs after the
optimizer step). 1000 steps at batch 128; random resized crops of scale
0.5-1.0, as the main job's MAE.
Evaluation reads the encoder, its patch tokens average-pooled, and compares
k-NN, linear-probe and low-label accuracy with the same encoder at random
init and with raw pixels.
Measured (seed 0, the first command below): k-NN 0.708, linear probe
0.836, fine-tune on 1% / 10% of the labels 0.452 / 0.703; the same encoder
at random init 0.463 / 0.750 / 0.327 / 0.313; raw pixels 0.950 / 0.885 /
0.679 / 0.860. Stage 2's figures are in configs/tokenunify/mnist_vit_tiny.py.
Hardware / time: 2 CPU cores shared with other jobs (load average about
20): 28m09s wall, 390 s of user CPU, evals included.

  python -m maskmodel.main --config configs/tokenunify/mnist_vit_tiny_mae.py --workdir workdirs/tokenunify_mae
  python -m maskmodel.main --config configs/tokenunify/mnist_vit_tiny.py --workdir workdirs/tokenunify --config.task.init_from=workdirs/tokenunify_mae

Variants: `:smoke` runs a few steps with a smaller model, for tests (stage
2's `:smoke` has the same model).
"""
import ml_collections

from maskmodel import config as mm


def get_config(arg=None):
  c = mm.base_config()
  c.task = ml_collections.ConfigDict(dict(
      name="mae", mask_ratio=0.4, norm_pix_loss=False,
      decoder=dict(width=64, depth=2, num_heads=4)))
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

  if arg == "smoke":
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
