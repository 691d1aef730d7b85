"""TokenUnify on ImageNet-1k with ViT-B/16: both stages (Chen et al.,
"TokenUnify: Scaling Up Autoregressive Pretraining for Neuron
Segmentation", ICCV 2025, arXiv 2405.16847; ydchen0806/TokenUnify).

Reproduces: no ImageNet number. TokenUnify pretrains on electron-microscopy
volumes (a SegMamba network, 100M to 1B parameters) and fine-tunes for
neuron segmentation; the numbers it reports are segmentation gains there:
the first arXiv version says "45%" over existing methods, the later one
+44% over training from scratch and +25% over MAE pretraining. None is an
image-classification number, so this config has no expected number.
What it keeps of the official recipe (`src/run_mamba_mae.sh`,
`src/run_mamba_mae_AR.sh`, `src/main_pretrain*.py`), on ImageNet's 224x224
images with a ViT-B/16 and MAE's 8x512 decoder instead of SegMamba:
- Stage 1 (`:stage=1`): masked reconstruction with 40% of the patches
  hidden (`mae`, raw-pixel target: the official stage 1 has no per-patch
  normalization), 320 images per step (40 on each of 8 GPUs), 800
  epochs.
- Stage 2 (the default): from stage 1's encoder and decoder
  (`task.init_from`), a prefix of k of the 196 raster-ordered patches (k
  uniform on 1..195) with N(0, 1) noise after it, and MSE(whole image) +
  MSE(next patch) (`maskmodel.tasks.tokenunify`); batch 160 (20 on each
  of 8 GPUs), 800 epochs.
- Both: AdamW (0.9, 0.95), weight decay 0.05, blr 1e-3 (lr = blr x batch /
  256), no warmup (`--warmup_epochs=0`), half-cycle cosine to 0, no
  effective gradient clipping (the official `clip_grad_norm_` runs after
  the optimizer step); bfloat16 (the official runs use AMP). Augmentation:
  random resized crops of scale 0.2-1.0 and flips, MAE's (the official EM
  loader crops sub-volumes and perturbs half of the inputs with EM-specific
  noise, which has no ImageNet counterpart).
Hardware / time: the official scripts use 8 GPUs per node; not run here
(these machines have no ImageNet and no accelerator). Data: TFDS
`imagenet2012`, prepared beforehand under DATA_DIR (never downloaded by
this code).

  python -m maskmodel.main --config configs/tokenunify/imagenet_vit_b16.py:stage=1 --workdir gs://BUCKET/tokenunify_mae_b16 --config.data.data_dir=DATA_DIR
  python -m maskmodel.main --config configs/tokenunify/imagenet_vit_b16.py --workdir gs://BUCKET/tokenunify_b16 --config.data.data_dir=DATA_DIR --config.task.init_from=gs://BUCKET/tokenunify_mae_b16

The argument takes comma-separated `stage=1|2` (default 2), `epochs=N`
(default 800) and `mae=DIR` (stage 2's `task.init_from`). Fine-tuning and
linear probing are separate runs.
"""
import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  args = dict(a.partition("=")[::2] for a in (arg or "").split(",") if a)
  stage = int(args.get("stage", 2))
  epochs = int(args.get("epochs", 800))
  base_lr = 1e-3  # lr = base_lr * batch / 256 (the official main_pretrain*.py)
  decoder = dict(width=512, depth=8, num_heads=16)
  if stage == 1:
    batch_size = 320
    task = dict(name="mae", mask_ratio=0.4, norm_pix_loss=False, decoder=decoder)
  elif stage == 2:
    batch_size = 160
    task = dict(name="tokenunify", init_from=args.get("mae", ""),
                fill="noise", decoder=decoder, next_head=dict(channels=12))
  else:
    raise ValueError(f"stage={stage} is unknown; use stage=1 (the MAE) or "
                     "stage=2 (the autoregressive stage).")
  steps_per_epoch = IMAGENET_TRAIN_IMAGES // batch_size  # drop_last=True

  c = mm.base_config()
  c.total_steps = epochs * steps_per_epoch
  c.batch_size = batch_size
  c.log_every = 100
  c.checkpoint_every = 2000
  c.task = ml_collections.ConfigDict(task)

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
  c.model.pool = "gap"
  c.model.dtype = "bfloat16"

  c.optimizer.lr = base_lr * batch_size / 256
  c.optimizer.warmup_steps = 0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 0.0
  c.evals.names = ()
  return c
