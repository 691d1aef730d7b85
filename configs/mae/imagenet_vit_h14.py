"""MAE pretraining of ViT-H/14 on ImageNet-1k (He et al. 2021).

Reproduces: MAE's ViT-H/14 pretraining, Appendix A.1 recipe (batch 4096,
blr 1.5e-4, 40 warmup epochs, mask 0.75, norm-pix loss, 8x512 decoder).
Expected: 86.9 top-1 after fine-tuning at 224 (87.8 at 448; 1600 epochs,
MAE Table 3) and 76.6 linear probing (the paper's TF/TPU figure; the
authors' PyTorch release gets 77.2).
Hardware / time: the paper pretrains on 128 TPU v3 cores; not timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/mae/imagenet_vit_h14.py:800 \
      --workdir gs://BUCKET/mae_h14 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 800; the paper's best is 1600).
Not run here: these machines have no ImageNet and no accelerator.
"""
from maskmodel import config as mm


def get_config(arg=None):
  epochs = int(arg) if arg else 800
  return mm.mae_imagenet_config(width=1280, depth=32, num_heads=16, patch_size=14,
                                epochs=epochs)
