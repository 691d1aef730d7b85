"""MAE pretraining of ViT-L/16 on ImageNet-1k (He et al. 2021).

Reproduces: MAE's ViT-L/16 pretraining, Appendix A.1 recipe (batch 4096,
blr 1.5e-4, 40 warmup epochs, mask 0.75, norm-pix loss, 8x512 decoder).
Expected: 85.9 top-1 after fine-tuning (1600 epochs, MAE Table 3) and 75.8
linear probing (the paper's TF/TPU figure; the authors' PyTorch release
gets 76.0); mmselfsup's reproduction gives 85.7 / 75.5 (1600 epochs).
Hardware / time: the paper pretrains on 128 TPU v3 cores; not timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/mae/imagenet_vit_l16.py:800 \
      --workdir gs://BUCKET/mae_l16 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 800; the paper's best is 1600).
Not run here: these machines have no ImageNet and no accelerator.
"""
from maskmodel import config as mm


def get_config(arg=None):
  epochs = int(arg) if arg else 800
  return mm.mae_imagenet_config(width=1024, depth=24, num_heads=16, patch_size=16,
                                epochs=epochs)
