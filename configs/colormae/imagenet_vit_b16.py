"""ColorMAE pretraining of ViT-B/16 on ImageNet-1k (Hinojosa et al. 2024).

Reproduces: ColorMAE's recipe (carlosh93/ColorMAE `configs/colormae_vit-
base-p16_8xb512-amp-coslr-300e_in1k.py`, which inherits mmpretrain's MAE
ViT-B recipe): batch 4096 (8 x 512), blr 1.5e-4 (lr = blr x batch / 256),
AdamW (0.9, 0.95), weight decay 0.05, 40 warmup epochs and a cosine,
random resized crops of scale (0.2, 1) and flips, mask 0.75, norm-pix
loss, 8 x 512 decoder; the mask keeps the highest 25% of a window of green
noise.
Expected: 83.01 top-1 after fine-tuning at 300 epochs, 83.61 at 800, 83.77
at 1600 (ColorMAE, green noise); ADE20K 45.80 mIoU at 300 epochs.
Differences: the noise fields are made here from the paper's definitions
(`maskmodel/masking/color.py`), since the official ones are downloads.
Hardware / time: the paper trains on 8 GPUs; not timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/colormae/imagenet_vit_b16.py:300 \
      --workdir gs://BUCKET/colormae_b16 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 300). Not run here: these
machines have no ImageNet and no accelerator.
"""

import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  epochs = int(arg) if arg else 300
  batch_size = 4096
  base_lr = 1.5e-4  # lr = base_lr * batch / 256
  warmup_epochs = 40
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
      name="colormae", mask_ratio=0.75, norm_pix_loss=True,
      decoder=dict(width=512, depth=8, num_heads=16),
      color="green", num_fields=512, field_size=64, noise_seed=0))

  c.optimizer.lr = base_lr * batch_size / 256
  c.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 0.0
  c.evals.names = ()  # fine-tuning is a separate run
  return c
