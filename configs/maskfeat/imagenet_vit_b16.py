"""MaskFeat pretraining of ViT-B/16 on ImageNet-1k (Wei et al. 2022).

Reproduces: MaskFeat's image recipe (facebookresearch/SlowFast
`configs/masked_ssl/in1k_VIT_B_MaskFeat_PT.yaml`, paper Appendix): batch
2048, lr 2e-4 per 256 images, AdamW, weight decay 0.05, 30 warmup epochs and
a cosine to 1e-6, gradient clip 0.02, random resized crops of
scale (0.5, 1) and flips, no colour augmentation; BEiT block masks over 40%
of the 14 x 14 patches (smallest block 15), HOG targets of 8 px cells (108
numbers per patch), MSE on masked patches.
Expected: 84.0 top-1 after fine-tuning (MaskFeat Table 1, ViT-B, 1600
epochs); the yaml's default is 300 epochs.
Hardware / time: the paper trains on GPUs; not timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/maskfeat/imagenet_vit_b16.py:1600 \
      --workdir gs://BUCKET/maskfeat_b16 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 300). Not run here: these
machines have no ImageNet and no accelerator.
"""

import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  epochs = int(arg) if arg else 300
  batch_size = 2048
  base_lr = 2e-4  # lr = base_lr * batch / 256
  warmup_epochs = 30
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
  c.data.crop_scale = (0.5, 1.0)
  c.data.flip = True
  c.data.eval_crop = 0.875

  c.model.name = "vit"
  c.model.patch_size = 16
  c.model.width = 768
  c.model.depth = 12
  c.model.num_heads = 12
  c.model.dtype = "bfloat16"

  c.task = ml_collections.ConfigDict(dict(name="maskfeat", mask_ratio=0.4,
                                          hog_cell=8))

  c.optimizer.lr = base_lr * batch_size / 256
  c.optimizer.min_lr = 1e-6
  c.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 0.02
  c.evals.names = ()  # fine-tuning is a separate run
  return c
