"""DMT-JEPA pretraining of ViT-H/14 on ImageNet-1k (Mo and Yun 2024).

Reproduces: the official `configs/in1k_vith14_ep300.yaml` of
DMTJEPA/DMTJEPA, which is I-JEPA's ViT-H/14 recipe
(`configs/ijepa/imagenet_vit_h14.py`: 16 GPUs x 128 = batch 2048, 300
epochs, AdamW (0.9, 0.999), lr 2e-4 -> 1e-3 over 40 epochs then a cosine
to 1e-6, weight decay 0.04 -> 0.4, EMA 0.996 -> 1, random resized crops
of scale 0.3-1.0, the multi-block masks, a 12-block predictor of width
384) plus its local aggregation heads (`patch_k_num` 4 of a
`patch_k_size` 3 window, cross-attention on both sides). The context
lists have the static length 128, as I-JEPA's config explains.
Expected: the repository's README gives no results table, and its number
for this model is not checked here; none is stated.
Hardware / time: the official README runs it on 16 A100 80G GPUs; not
timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/dmtjepa/imagenet_vit_h14.py:300 \
      --workdir gs://BUCKET/dmtjepa_h14 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 300). Not run here: these
machines have no ImageNet and no accelerator.
"""
import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  epochs = int(arg) if arg else 300
  batch_size = 2048
  warmup_epochs = 40
  steps_per_epoch = IMAGENET_TRAIN_IMAGES // batch_size  # drop_last=True

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
  c.data.crop_scale = (0.3, 1.0)
  c.data.flip = False
  c.data.eval_crop = 0.875

  c.model.name = "vit"
  c.model.patch_size = 14
  c.model.width = 1280
  c.model.depth = 32
  c.model.num_heads = 16
  c.model.pool = "gap"  # no class token; evaluation average-pools
  c.model.dtype = "bfloat16"

  c.task = ml_collections.ConfigDict(dict(
      name="dmtjepa", num_targets=4, target_scale=(0.15, 0.2),
      target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0), min_keep=10,
      allow_overlap=False, mask_group_size=128,
      # Static context lists of 128 of the 256 patches (I-JEPA's config).
      context_length=128,
      predictor=dict(width=384, depth=12, num_heads=0),  # 0: the encoder's 16
      ema=(0.996, 1.0), loss="smooth_l1", eval_encoder="target",
      neighbours=4, window=3))

  c.optimizer.lr = 1e-3
  c.optimizer.warmup_init = 2e-4
  c.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  c.optimizer.min_lr = 1e-6
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.04
  c.optimizer.weight_decay_end = 0.4
  c.optimizer.grad_clip = 0.0
  c.evals.names = ()  # linear probing is a separate run
  return c
