"""MAE pretraining of ViT-B/16 on ImageNet-1k (He et al. 2021).

Reproduces: MAE's ViT-B/16 pretraining, Appendix A.1 recipe (batch 4096,
blr 1.5e-4, 40 warmup epochs, mask 0.75, norm-pix loss, 8x512 decoder).
Expected: 83.6 top-1 after fine-tuning (1600 epochs, MAE Table 3) and 68.0
linear probing (the paper's TF/TPU figure; the authors' PyTorch release
gets 67.8); mmselfsup's reproduction gives 83.5 / 67.1 (1600 epochs).
Hardware / time: the paper pretrains on 128 TPU v3 cores; not timed here.
Data: TFDS `imagenet2012`, prepared beforehand under DATA_DIR (it is never
downloaded by this code).

  python -m maskmodel.main --config configs/mae/imagenet_vit_b16.py:800 \
      --workdir gs://BUCKET/mae_b16 --config.data.data_dir=DATA_DIR

The argument is the number of epochs (default 800; the paper's best is 1600).
Not run here: these machines have no ImageNet and no accelerator.
"""
from maskmodel import config as mm


def get_config(arg=None):
  epochs = int(arg) if arg else 800
  return mm.mae_imagenet_config(width=768, depth=12, num_heads=12, patch_size=16,
                                epochs=epochs)
