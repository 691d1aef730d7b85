"""I-JEPA pretraining of ViT-H/14 on ImageNet-1k (Assran et al. 2023).

Reproduces: the official `configs/in1k_vith14_ep300.yaml` of
facebookresearch/ijepa: 16 GPUs x 128 = batch 2048, 300 epochs; AdamW
(0.9, 0.999) without gradient clipping; lr warmed up linearly from 2e-4 to
1e-3 over 40 epochs, then a cosine to 1e-6 (not scaled with the batch);
weight decay a cosine from 0.04 to 0.4 (`final_weight_decay`); EMA
momentum linear from 0.996 to 1 (ipe_scale 1.0). Random resized crops of
scale 0.3-1.0 at 224, no flip, no colour jitter, no blur. Masks: 4 targets
(scale 0.15-0.2, aspect 0.75-1.5), one context (scale 0.85-1.0, aspect 1),
no overlap, min_keep 10, truncated per GPU batch of 128
(`task.mask_group_size`). Predictor 12 blocks of width 384 with the
encoder's 16 heads. bfloat16.
The context lists have a static length of 128 (`task.context_length`; the
largest context block has 225 patches): in 300 collations of 128 by the
port of the official collator the shortest context had at most 94
patches, so the official truncation is kept while the context encoder
runs on 128 tokens instead of 225:

  python -c "import sys; sys.path.insert(0, 'tests'); import numpy as np; from test_ijepa import official_collate as c; r = np.random.default_rng(1); print(max(c(r, 128, (16, 16))[0].shape[1] for _ in range(300)))"

Expected: 79.3 top-1 by linear probing the target encoder's average-pooled
output (the paper's Table 1, ViT-H/14, 300 epochs).
Hardware / time: the official README runs it on 16 A100 80G GPUs (batch
2048); not timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/ijepa/imagenet_vit_h14.py:300 \
      --workdir gs://BUCKET/ijepa_h14 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 300). The linear probe is a
separate run. Not run here: these machines have no ImageNet and no
accelerator.
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
      name="ijepa", num_targets=4, target_scale=(0.15, 0.2),
      target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0), min_keep=10,
      allow_overlap=False, mask_group_size=128,
      # Static context lists of 128 of the 256 patches instead of the
      # largest block's 225: the official truncation to each GPU batch's
      # shortest context stays exact while that is at most 128 (see above).
      context_length=128,
      predictor=dict(width=384, depth=12, num_heads=0),  # 0: the encoder's 16
      ema=(0.996, 1.0), loss="smooth_l1", eval_encoder="target"))

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
