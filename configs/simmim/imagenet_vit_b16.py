"""SimMIM pretraining of ViT-B/16 on ImageNet-1k (Xie et al. 2022).

Reproduces: SimMIM's ViT-B recipe (microsoft/SimMIM
`configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml`):
batch 2048, lr 1e-4 per 512 images, AdamW (0.9, 0.999), weight decay 0.05,
10 warmup epochs, then x0.1 at epoch 700 of 800, gradient clip 5, random
resized crops of scale (0.67, 1) and flips, 32 px mask cells at ratio 0.6,
L1 on masked pixels, linear head.
Expected: 83.8 top-1 after fine-tuning (SimMIM Table 1, 800 epochs).
Differences: maskmodel's ViT (sin-cos absolute positions) stands in for the
official BEiT-style backbone (shared relative position bias, layer-scale,
drop path 0.1), and the warmup starts at 0 instead of 5e-7 x batch / 512.
Hardware / time: the paper trains on GPUs; not timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/simmim/imagenet_vit_b16.py:800 \
      --workdir gs://BUCKET/simmim_b16 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 800; the drop comes 100
epochs before the end). Not run here: these machines have no ImageNet and no
accelerator.
"""

import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  epochs = int(arg) if arg else 800
  batch_size = 2048
  base_lr = 1e-4  # lr = base_lr * batch / 512 (SimMIM's linear scaling)
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
  c.data.crop_scale = (0.67, 1.0)
  c.data.flip = True
  c.data.eval_crop = 0.875

  c.model.name = "vit"
  c.model.patch_size = 16
  c.model.width = 768
  c.model.depth = 12
  c.model.num_heads = 12
  c.model.dtype = "bfloat16"

  c.task = ml_collections.ConfigDict(dict(
      name="simmim", mask_ratio=0.6, mask_patch_size=32))

  c.optimizer.lr = base_lr * batch_size / 512
  c.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  c.optimizer.schedule = "multistep"
  c.optimizer.milestones = ((epochs - 100) * steps_per_epoch,)
  c.optimizer.gamma = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 5.0
  c.evals.names = ()  # fine-tuning is a separate run
  return c
