"""CropMAE pretraining of ViT-S/16 on ImageNet-1k (Eymaël et al. 2024).

Reproduces: CropMAE's recipe (alexandre-eymael/CropMAE
`scripts/train_cropmae_in.sh`, `models/SiamMAE.py`): ViT-S/16, 16 GPUs x 128
= batch 2048, blr 1e-4 (lr = blr x batch / 256 = 8e-4), AdamW (0.9, 0.95),
weight decay 0.05, warmup over 5% of the 400 epochs and a cosine to 0; a
global crop (scale 0.1-1) and a local crop of it
(scale 0.3-0.6), each flipped; the local view masked at 98.5% (2 of 196
patches visible); a decoder of 4 post-norm cross-attention blocks, 256 wide,
8 heads, FFN 2048, dropout 0.1; norm-pix MSE on the local view.
Expected: DAVIS-2017 J&F 60.1, VIP mIoU 33.2, JHMDB PCK@0.1 43.5 (video
label propagation, which maskmodel does not evaluate).
Hardware / time: not timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/cropmae/imagenet_vit_s16.py:400 \
      --workdir gs://BUCKET/cropmae_s16 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 400). Not run here: these
machines have no ImageNet and no accelerator.
"""

import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  epochs = int(arg) if arg else 400
  batch_size = 2048
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
  c.data.flip = True
  c.data.eval_crop = 0.875

  c.model.name = "vit"
  c.model.patch_size = 16
  c.model.width = 384
  c.model.depth = 12
  c.model.num_heads = 6
  c.model.dtype = "bfloat16"

  c.task = ml_collections.ConfigDict(dict(
      name="cropmae", views="global_to_local", mask_ratio=0.985,
      global_scale=(0.1, 1.0), local_scale=(0.3, 0.6),
      decoder=dict(width=256, depth=4, num_heads=8, mlp_dim=2048, dropout=0.1)))

  c.optimizer.lr = 1e-4 * batch_size / 256
  c.optimizer.warmup_steps = int(0.05 * epochs) * steps_per_epoch
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 0.0
  c.evals.names = ()
  return c
