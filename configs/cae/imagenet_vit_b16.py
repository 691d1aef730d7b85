"""CAE pretraining of ViT-B/16 on ImageNet-1k (Chen et al. 2022).

Reproduces: CAE's ViT-B recipe (lxtGH/CAE `scripts/cae_base_800e.sh` and
`tools/run_pretraining.py` defaults): batch 2048 (32 GPUs x 64), lr 1.5e-3
(not scaled by batch), AdamW (0.9, 0.999), weight decay 0.05, 20 warmup
epochs then a cosine to 1e-5, gradient clip 3.0, random resized crops of
scale (0.08, 1) and flips, no colour jitter; BEiT block masks of 98 of the
14 x 14 patches (smallest block 16); a 4-block regressor and a 4-block
decoder of width 768 with layer scale 0.1; alignment weight 2.
Expected: 68.9 linear probing and 83.8 top-1 after fine-tuning (CAE paper,
ViT-B, 800 epochs), with DALL-E token targets.
Target: the paper's DALL-E token ids (8192 classes) cannot be loaded
offline; the default here is the nearest offline stand-in, cross-entropy on
the ids of a k-means tokenizer of raw 16 x 16 x 3 patches (CCViT's: 8192
centroids, 20 Lloyd iterations), fitted once before training on the first
10,000 training images (CCViT fits 50,000; their pixels, 6 GB in float32,
are held on one device during the fit). `--config.task.target=pixels`
predicts the normalized pixels instead. The reported numbers are DALL-E's,
not this target's.
Deliberate differences (see `maskmodel/tasks/cae.py`): the encoder has no
layer scale and no stochastic depth (the official ViT-B has layer scale 0.1
and drop path 0.1); the warmup starts at 0, not 1e-6.
Hardware / time: the paper pretrains on 32 GPUs; not timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/cae/imagenet_vit_b16.py:800 \\
      --workdir gs://BUCKET/cae_b16 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 800, the paper's; its ViT-L
runs 1600). Not run here: these machines have no ImageNet and no
accelerator.
"""

import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  epochs = int(arg) if arg else 800
  batch_size = 2048
  warmup_epochs = 20
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
  c.data.mean = (0.485, 0.456, 0.406)  # --imagenet_default_mean_and_std
  c.data.std = (0.229, 0.224, 0.225)
  c.data.crop_scale = (0.08, 1.0)
  c.data.flip = True
  c.data.eval_crop = 0.875

  c.model.name = "vit"
  c.model.patch_size = 16
  c.model.width = 768
  c.model.depth = 12
  c.model.num_heads = 12
  c.model.pool = "cls"  # the linear probe reads [CLS] (--use_cls)
  c.model.dtype = "bfloat16"

  c.task = ml_collections.ConfigDict(dict(
      name="cae", mask_ratio=0.5, min_block_patches=16, target="tokens",
      tokenizer=dict(name="kmeans", vocab_size=8192, images=10_000,
                     iterations=20),
      norm_pix_loss=True, align_weight=2.0, layer_scale=0.1,
      # 0.0: the official code's copy of the encoder from one step earlier;
      # None: the current encoder, as the paper describes it
      # (maskmodel/tasks/cae.py).
      teacher_momentum=ml_collections.FieldReference(0.0, field_type=float),
      regressor_depth=4, decoder_depth=4))

  c.optimizer.lr = 1.5e-3
  c.optimizer.min_lr = 1e-5
  c.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 3.0
  c.evals.names = ()  # linear probing and fine-tuning are separate runs
  return c
