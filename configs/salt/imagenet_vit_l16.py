"""SALT on ImageNet-1k with a ViT-L/16 student: both stages (Li et al. 2025,
"Rethinking JEPA: Compute-Efficient Video SSL with Frozen Teachers", arXiv
2509.24317).

Reproduces: no image number. SALT is a video paper without public code: it
pretrains on video with V-JEPA's spatio-temporal multi-block masks and
reports frozen-backbone (attentive probe) accuracy of video students on
video and image benchmarks, against V-JEPA 2 at matched pretraining FLOPs;
its claims are that a frozen teacher trained by pixel reconstruction
suffices (no EMA), that small, sub-optimal teachers still give strong
students, and that compute should go to the student. No number of the
paper is restated here: none was checked against its text, and none of
them is for image pretraining.
What this config transfers to images (a choice, not the paper's recipe):
- The method, as `maskmodel.tasks.salt` implements it: stage 1 (`:stage=1`,
  task `salt_teacher`) regresses the per-patch normalized pixels of
  I-JEPA's multi-block target blocks from the context with the MSE; stage
  2 (the default, task `salt`) freezes that encoder and trains a new
  student plus predictor to regress its layer-normed latents at the target
  blocks with the L1 loss (V-JEPA's `loss_fn`). No EMA.
- I-JEPA's image masks and ImageNet recipe (facebookresearch/ijepa
  `configs/in1k_vith14_ep300.yaml`, as configs/ijepa/imagenet_vit_h14.py
  reads it) in both stages: batch 2048, 300 epochs, AdamW (0.9, 0.999)
  without clipping, lr warmed up from 2e-4 to 1e-3 over 40 epochs then a
  cosine to 1e-6, weight decay a cosine from 0.04 to 0.4; random resized
  crops of scale 0.3-1.0 at 224, no flip; 4 targets (scale 0.15-0.2,
  aspect 0.75-1.5), one context (scale 0.85-1.0), no overlap, min_keep
  10, per batch of 128; a 12-block predictor of width 384 with the
  encoder's heads; bfloat16. The context lists keep all 196 patches of the
  14x14 grid (`task.context_length` 0: no truncation beyond the official
  per-group one).
- The student is ViT-L/16 (width 1024, depth 24, 16 heads), features
  average-pooled. The teacher defaults to the student's size; the paper's
  point is that a smaller one works, e.g. a ViT-B teacher for the student:
  stage 1 at ViT-B (`--config.model.width=768 --config.model.depth=12
  --config.model.num_heads=12`) and stage 2 with `task.teacher` set to
  the same (`--config.task.teacher.width=768 ...`).
Expected: no number to compare with (see above); the linear probe is a
separate run.
Hardware / time: not run here (these machines have no ImageNet and no
accelerator). Data: TFDS `imagenet2012`, prepared beforehand under
DATA_DIR (never downloaded by this code).

  python -m maskmodel.main --config configs/salt/imagenet_vit_l16.py:stage=1 --workdir gs://BUCKET/salt_teacher_l16 --config.data.data_dir=DATA_DIR
  python -m maskmodel.main --config configs/salt/imagenet_vit_l16.py --workdir gs://BUCKET/salt_l16 --config.data.data_dir=DATA_DIR --config.task.teacher_workdir=gs://BUCKET/salt_teacher_l16

The argument takes comma-separated `stage=1|2` (default 2), `epochs=N`
(default 300) and `teacher=DIR` (stage 2's `task.teacher_workdir`).
"""
import ml_collections

from maskmodel import config as mm

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  args = dict(a.partition("=")[::2] for a in (arg or "").split(",") if a)
  stage = int(args.get("stage", 2))
  epochs = int(args.get("epochs", 300))
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
  c.model.patch_size = 16
  c.model.width = 1024
  c.model.depth = 24
  c.model.num_heads = 16
  c.model.pool = "gap"  # the JEPA encoder has no class token
  c.model.dtype = "bfloat16"

  masks = dict(num_targets=4, target_scale=(0.15, 0.2),
               target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0),
               min_keep=10, allow_overlap=False, mask_group_size=128,
               context_length=0,
               predictor=dict(width=384, depth=12, num_heads=0))  # 0: the encoder's
  if stage == 1:
    c.task = ml_collections.ConfigDict(dict(
        name="salt_teacher", loss="l2", norm_pix_loss=True, **masks))
  elif stage == 2:
    c.task = ml_collections.ConfigDict(dict(
        name="salt", loss="l1", target_norm=True,
        teacher_workdir=args.get("teacher", ""),
        # The stage-1 run's model (0: the student's value).
        teacher=dict(width=0, depth=0, num_heads=0, mlp_ratio=0.0), **masks))
  else:
    raise ValueError(f"stage={stage} is unknown; use stage=1 (the teacher) "
                     "or stage=2 (the student).")

  c.optimizer.lr = 1e-3
  c.optimizer.warmup_init = 2e-4
  c.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  c.optimizer.min_lr = 1e-6
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.04
  c.optimizer.weight_decay_end = 0.4
  c.optimizer.grad_clip = 0.0
  c.evals.names = ()  # probing is a separate run
  return c
