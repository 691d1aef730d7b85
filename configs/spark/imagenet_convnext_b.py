"""SparK pretraining of ConvNeXt-B on ImageNet-1k (Tian et al. 2023).

Reproduces: SparK's 224-pixel recipe, the same for every model in the
official code (keyu-tian/SparK `pretrain/utils/arg_util.py`,
`pretrain/main.py`, `pretrain/utils/lr_control.py`): batch 4096, LAMB
(0.9, 0.999: the ConvNeXt beta2) with a global gradient clip of 5, lr =
2e-4 x batch / 256, 40 warmup epochs then a cosine, weight decay on a
cosine from 0.04 to 0.2, 1600 epochs, mask ratio 0.6 on the 7 x 7 grid of
the stride-32 stage, random resized crops of scale (0.67, 1) and flips;
ConvNeXt-B (widths 128-256-512-1024, depths 3-3-27-3, a 4 x 4 stem),
densified with the sparse LayerNorm (the official ConvNeXt setting), and
the light UNet decoder of width 768.
Expected: 84.8 top-1 after fine-tuning ConvNeXt-B (SparK README, pretrained
weights table). SparK's headline ResNet-50 (80.6) is not this config:
maskmodel's convnet has ConvNeXt blocks only (no bottleneck blocks, no
sparse BatchNorm), so the faithful network it can express is ConvNeXt.
Hardware / time: the official runs use multi-node GPUs (torchrun); not
timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/spark/imagenet_convnext_b.py:1600 \
      --workdir gs://BUCKET/spark_convnext_b --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 1600). Not run here: these
machines have no ImageNet and no accelerator.

Differences from the official run, each small and named:
- No stochastic depth: the official ConvNeXt-B pretrains with drop path 0.3
  (`pretrain/models/__init__.py`); maskmodel's ConvNeXt blocks have none.
- The lr warms up from 0 and decays to 0.001 x peak (`min_lr`); the official
  warmup starts at 0.005 x peak.
"""

import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  epochs = int(arg) if arg else 1600
  batch_size = 4096
  base_lr = 2e-4  # lr = base_lr * batch / 256
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
  c.data.crop_scale = (0.67, 1.0)
  c.data.flip = True
  c.data.eval_crop = 0.875

  c.model = ml_collections.ConfigDict(dict(
      name="convnet", widths=(128, 256, 512, 1024), depths=(3, 3, 27, 3),
      stem=4, dtype="bfloat16", attn_impl="auto"))
  c.task = ml_collections.ConfigDict(dict(name="spark", mask_ratio=0.6,
                                          decoder_width=768))

  c.optimizer.name = "lamb"
  c.optimizer.lr = base_lr * batch_size / 256
  c.optimizer.min_lr = 0.001 * c.optimizer.lr
  c.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.04
  c.optimizer.weight_decay_end = 0.2
  c.optimizer.grad_clip = 5.0
  c.evals.names = ()  # fine-tuning is a separate run
  return c
