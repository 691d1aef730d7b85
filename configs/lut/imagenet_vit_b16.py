"""LUT pretraining of ViT-B/16 on ImageNet-1k (Kim et al. 2024).

Reproduces: LUT's ViT-B recipe (naver-ai/lut `docs/PRETRAIN.md`,
`main_lut.py`, `engines/engine_lut.py`): 8 GPUs x 128 x 4 accumulation =
batch 4096, blr 1.5e-4 (the official lr is blr x sqrt(batch) / 4, equal to
blr x batch / 256 at this batch), AdamW (0.9, 0.95), weight decay 0.05, 40
warmup epochs and a cosine, no gradient clipping. Two views per image: a
resize, a random crop with 4 pixels of reflect padding and a flip (no
random resized crop); the second adds colour jitter (p 0.8) and one of
grayscale, solarize or blur. Mask 0.75 with disjoint visible sets, an 8x512
decoder with the norm-pix loss on view 1, and the broader-context loss
(weight 0.25) through 768-4096-768 BatchNorm projector and predictor against
an EMA teacher whose decay goes from 0.996 to 1 by a cosine.
Expected: 84.2 top-1 after fine-tuning (the official README's table; their
MAE: 83.7; LUT ViT-S 82.0, ViT-L 86.0). The table does not give the epochs
behind it; the recommended command runs 1600.
Hardware / time: the paper trains on 8 V100s; not timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/lut/imagenet_vit_b16.py:1600 \
      --workdir gs://BUCKET/lut_b16 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 1600). Not run here: these
machines have no ImageNet and no accelerator.
"""
import math

import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  epochs = int(arg) if arg else 1600
  batch_size = 4096
  base_lr = 1.5e-4  # lr = base_lr * sqrt(batch) / 4 (`main_lut.py`)
  warmup_epochs = 40
  steps_per_epoch = IMAGENET_TRAIN_IMAGES // batch_size

  c = mm.base_config()
  c.total_steps = epochs * steps_per_epoch
  c.batch_size = batch_size
  c.log_every = 100
  c.checkpoint_every = 5000

  c.data.name = "tfds:imagenet2012"
  c.data.test_split = "validation"
  c.data.image_size = 224
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.crop_scale = None  # LUT's views: resize + padded random crop
  c.data.flip = True
  c.data.eval_crop = 0.875

  c.model.name = "vit"
  c.model.patch_size = 16
  c.model.width = 768
  c.model.depth = 12
  c.model.num_heads = 12
  c.model.dtype = "bfloat16"

  c.task = ml_collections.ConfigDict(dict(
      name="lut", mask_ratio=0.75, norm_pix_loss=True,
      decoder=dict(width=512, depth=8, num_heads=16),
      bc_weight=0.25, head_hidden=4096, ema_start=0.996,
      crop_padding=4, color_jitter=(0.4, 0.4, 0.2, 0.1),
      color_jitter_prob=0.8, blur_radius=(0.1, 2.0)))

  c.optimizer.lr = base_lr * math.sqrt(batch_size) / 4
  c.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 0.0
  c.evals.names = ()  # fine-tuning is a separate run
  return c
