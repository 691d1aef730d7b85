"""CCViT pretraining of ViT-B/16 on ImageNet-1k (Yan et al. 2023).

Reproduces: the pretraining command of Cakeyan/CCViT_Public's README (the
flags of `run_ccvit_pretraining.py`): a k-means tokenizer of 8192 centroids
(20 Lloyd iterations) on the raw 16 x 16 x 3 patches of 50,000 training
images resized and center-cropped to 224; BEiT block masks of 75 of the
196 patches (smallest block 16), 20 visible patches replaced by their
centroid's pixels, cross-entropy on centroid ids at the 95 positions, plus
the dual loss (`--use_dual_loss True`: [final CLS, the patch tokens after
block 9] -> 2 blocks -> pixels, per-patch normalized MSE). AdamW, betas
(0.9, 0.98), lr 1.5e-3 (not scaled by batch), weight decay 0.05, 10 warmup
epochs and a cosine to 1e-5, gradient clip 3.0; random resized crops of
scale (0.2, 1) and flips, no colour jitter (the replacement path's
`replaced_transform_train`); ImageNet mean/std.
Differences: the global batch is 2048, BEiT v2's for this lr (the README
command, 128 per GPU with update_freq 2, leaves the GPU count open); the
tokenizer reads the first 50,000 training records rather than 50 drawn per
class; maskmodel's ViT has absolute sin-cos positions and no layer-scale
(the official: shared relative position bias, layer-scale 0.1).
Expected: 84.3 top-1 after fine-tuning (CCViT v1, ViT-B, 300 epochs; 84.4
in the second version; ADE20K 51.6 mIoU), PAPERS.md.
Hardware / time: the paper trains on GPUs; not timed here. The tokenizer
fit holds the 9.8M patches (30 GB in float32) on one device; lower
task.tokenizer.images on a chip with less memory.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/ccvit/imagenet_vit_b16.py \
      --workdir gs://BUCKET/ccvit_b16 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 300). Not run here: these
machines have no ImageNet and no accelerator.
"""

import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  epochs = int(arg) if arg else 300
  batch_size = 2048
  warmup_epochs = 10
  steps_per_epoch = IMAGENET_TRAIN_IMAGES // batch_size

  c = mm.base_config()
  c.total_steps = epochs * steps_per_epoch
  c.batch_size = batch_size
  c.log_every = 100
  c.checkpoint_every = 2000

  c.data.name = "tfds:imagenet2012"
  c.data.test_split = "validation"
  c.data.image_size = 224
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.crop_scale = (0.2, 1.0)
  c.data.flip = True
  c.data.eval_crop = 0.875

  c.model.name = "vit"
  c.model.patch_size = 16
  c.model.width = 768
  c.model.depth = 12
  c.model.num_heads = 12
  c.model.dtype = "bfloat16"

  c.task = ml_collections.ConfigDict(dict(
      name="ccvit", num_masked=75, min_block=16, replace=20,
      dual_loss=True, dual_layer=9, dual_depth=2,
      tokenizer=dict(name="kmeans", vocab_size=8192, iterations=20,
                     batch_size=0, images=50_000)))

  c.optimizer.lr = 1.5e-3
  c.optimizer.min_lr = 1e-5
  c.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 3.0
  c.evals.names = ()  # fine-tuning is a separate run
  return c
