"""MAE pretraining of ViT-B/16 on ImageNet-1k (He et al. 2021).

Reproduces: MAE's ViT-B/16 pretraining, Appendix A.1 recipe (batch 4096,
blr 1.5e-4, 40 warmup epochs, mask 0.75, norm-pix loss, 8x512 decoder).
Expected: 83.6 top-1 after fine-tuning (1600 epochs, MAE Table 3) and 68.0
linear probing (the paper's TF/TPU figure; the authors' PyTorch release
gets 67.8); mmselfsup's reproduction gives 83.5 / 67.1 (1600 epochs).
Hardware / time: the paper pretrains on 128 TPU v3 cores; not timed here.
Planned (maskmodel.planner, the real train step compiled for the slice from
a CPU host; benchmarks/results/pod_plan.md): fits on v5e:16x16 (256 chips)
with pure data parallelism, the default mesh: 0.42 GiB of params, 0.83 of
AdamW state and 2.46 of XLA temporaries, 3.94 of 16 GiB per chip; on v6e:8x8
(64 chips) 9.96 of 32 GiB.

  python -m maskmodel.aot --config configs/mae/imagenet_vit_b16.py --topology v5e:16x16
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/mae/imagenet_vit_b16.py:800 \
      --workdir gs://BUCKET/mae_b16 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 800; the paper's best is 1600).
Not run here: these machines have no ImageNet and no accelerator.
"""

import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  epochs = int(arg) if arg else 800
  batch_size = 4096
  base_lr = 1.5e-4  # lr = base_lr * batch / 256 (MAE Appendix A.1)
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
  c.data.crop_scale = (0.2, 1.0)  # RandomResizedCrop(224, scale=(0.2, 1.0))
  c.data.flip = True
  c.data.eval_crop = 0.875  # resize 256, center crop 224, as MAE's evals

  c.model.name = "vit"
  c.model.patch_size = 16
  c.model.width = 768
  c.model.depth = 12
  c.model.num_heads = 12
  c.model.dtype = "bfloat16"

  c.task = ml_collections.ConfigDict(dict(
      name="mae", mask_ratio=0.75, norm_pix_loss=True,
      decoder=dict(width=512, depth=8, num_heads=16)))

  c.optimizer.lr = base_lr * batch_size / 256
  c.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 0.0  # MAE pretraining clips no gradients
  c.evals.names = ()  # fine-tuning and linear probing are separate runs
  return c
