"""Config defaults shared by every config file, and the checks that make every
bad value fail early with one line naming the fix."""
from __future__ import annotations

import jax
import ml_collections

from maskmodel.kernels import dispatch


class ConfigError(ValueError):
  """A config key or value that cannot work; the message names the fix."""


def _require(cond, msg):
  if not cond:
    raise ConfigError(msg)


def validate(config, num_devices: int, data_parallel: int | None = None):
  """Checks the keys the loop relies on; model/task keys are checked by them.

  `data_parallel`: how many ways the batch is split (the mesh's data x fsdp,
  `maskmodel.sharding`); default all `num_devices`."""
  for key in ("seed", "total_steps", "batch_size", "task", "model", "data",
              "optimizer", "log_every", "checkpoint_every"):
    _require(key in config, f"config has no {key!r}; start from a file in "
             "configs/ (e.g. configs/mae/mnist_vit_tiny.py).")
  _require(config.total_steps > 0, f"total_steps={config.total_steps} must be > 0.")
  _require(config.batch_size > 0, f"batch_size={config.batch_size} must be > 0.")
  n = num_devices if data_parallel is None else data_parallel
  split = (f"{n} devices" if n == num_devices else
           f"{n} data-parallel devices (mesh data x fsdp)")
  _require(config.batch_size % n == 0,
           f"batch_size={config.batch_size} is not divisible by the "
           f"{split}; use a multiple of {n}.")
  _require(config.evals.batch_size % n == 0,
           f"evals.batch_size={config.evals.batch_size} is not divisible by the "
           f"{split}; use a multiple of {n}.")
  _require(config.log_every > 0, f"log_every={config.log_every} must be > 0.")
  _require(config.checkpoint_every >= 0,
           f"checkpoint_every={config.checkpoint_every} must be >= 0 (0 = only at the end).")
  _require(0 < config.data.eval_crop <= 1.0,
           f"data.eval_crop={config.data.eval_crop} must be in (0, 1]; 1.0 "
           "center-crops the whole shorter side, 0.875 is the ImageNet eval.")
  o = config.optimizer
  _require(o.lr > 0, f"optimizer.lr={o.lr} must be > 0.")
  _require(0 <= o.warmup_steps < config.total_steps,
           f"optimizer.warmup_steps={o.warmup_steps} must be in [0, total_steps).")
  _require(0 < o.layer_decay <= 1.0,
           f"optimizer.layer_decay={o.layer_decay} must be in (0, 1]; 1 disables it.")
  names = ("adamw", "lamb")
  _require(o.get("name", "adamw") in names,
           f"optimizer.name={o.get('name')!r} is unknown; use one of {names}.")
  schedules = ("cosine", "multistep")
  _require(o.schedule in schedules,
           f"optimizer.schedule={o.schedule!r} is unknown; use one of "
           f"{schedules}.")
  if o.schedule == "multistep":
    m = [int(x) for x in o.milestones]
    _require(m == sorted(m) and all(o.warmup_steps < x < config.total_steps for x in m),
             f"optimizer.milestones={tuple(o.milestones)} must be increasing "
             f"steps after the warmup ({o.warmup_steps}) and before "
             f"total_steps ({config.total_steps}).")
  impl = config.model.get("attn_impl", "auto")
  _require(impl in dispatch.IMPLS,
           f"model.attn_impl={impl!r} is unknown; use one of {dispatch.IMPLS}.")
  # The run executes on the default backend, which needs a compiled kernel.
  _require(impl != "pallas" or dispatch.kernel_backend() is not None,
           f"model.attn_impl='pallas' compiles for GPU or TPU, but this run's "
           f"backend is {jax.default_backend()!r}; use 'auto', 'xla' "
           "or 'interpret' (the same kernel, interpreted).")



def base_config():
  """Defaults for every run; config files override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 128
  c.log_every = 50
  c.checkpoint_every = 500
  c.checkpoint_keep = 3
  # The device mesh (maskmodel/sharding.py): (axis, size) pairs, -1 takes
  # the devices the others leave. The batch is split over data x fsdp.
  c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  # (regex on the "/"-joined param path, spec) pairs, first match wins;
  # None: maskmodel.partitioning.DEFAULT_RULES.
  c.partition_rules = ml_collections.FieldReference(None, field_type=object)

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist5k"
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.train_split = "train"
  c.data.test_split = "test"
  # The first N records of each split (0 = all): a smaller benchmark of a
  # large dataset, for pretraining and for every eval alike.
  c.data.train_examples = 0
  c.data.test_examples = 0
  c.data.image_size = 28
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.mean = (0.1307,)
  c.data.std = (0.3081,)
  c.data.crop_scale = ml_collections.FieldReference(None, field_type=tuple)
  c.data.flip = False
  c.data.eval_crop = 1.0  # evals: shorter side to image_size / eval_crop, center crop

  c.model = ml_collections.ConfigDict()
  c.model.name = "vit"  # a builder of maskmodel.models (get_model)
  c.model.patch_size = 4
  c.model.width = 128
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.mlp_ratio = 4.0
  c.model.pool = "cls"
  c.model.attn_impl = "auto"
  c.model.dtype = "float32"
  # Rematerialize each encoder block in the backward pass: "none", "full"
  # or "dots" (maskmodel.models.vit.REMAT_POLICIES); for large models.
  c.model.remat = "none"
  c.model.token_reduction = token_reduction()

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 1e-3
  c.optimizer.min_lr = 0.0
  c.optimizer.warmup_steps = 100
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip = 1.0
  c.optimizer.layer_decay = 1.0
  c.optimizer.schedule = "cosine"  # or "multistep": lr * gamma at each milestone
  c.optimizer.milestones = ml_collections.FieldReference((), field_type=tuple)
  c.optimizer.gamma = 0.1
  c.optimizer.name = "adamw"  # or "lamb" (SparK's LAMB)
  # None: constant weight decay; a value: cosine from weight_decay to it.
  c.optimizer.weight_decay_end = ml_collections.FieldReference(None, field_type=float)

  c.evals = ml_collections.ConfigDict()
  c.evals.names = ("knn",)
  c.evals.batch_size = 256
  # Eval decoding: grain threads per process (0 decodes inline); each
  # process decodes only its own rows of every eval batch.
  c.evals.decode_threads = 2
  c.evals.compare_random_init = False
  # The feature evals (k-NN, linear probe) also run once on raw pixels at the
  # end. Off only where the split's pixels do not fit in host memory.
  c.evals.compare_pixels = True
  c.evals.knn = dict(every=0, k=20)
  c.evals.linear_probe = dict(every=0, steps=500, lr=1e-2)
  # k-NN and the probe also report the mean per-class recall
  # (`knn_balanced_accuracy`, ...): for labels where one class dominates.
  c.evals.balanced_accuracy = False
  # Fine-tune network + linear head on 1% and 10% of the training labels
  # (class-balanced, drawn with `seed`), the same steps from every start.
  c.evals.low_label = dict(every=0, fractions=(0.01, 0.1), steps=100, lr=3e-4,
                           head_lr=1e-2,
                           batch_size=32, weight_decay=1e-4, seed=0)
  c.evals.accuracy = dict(every=0)
  c.evals.reconstruction = dict(every=0, num_images=8)
  return c


def token_reduction(method="none", schedule=0, options=None, prop_attn=None,
                    off_the_shelf=False):
  """`model.token_reduction`: token merging / pruning inside the encoder.

  method: "none" or a name in `maskmodel.tokens.REDUCERS` (tome, pitome,
    topk, evit, divprune, dart, atc, zero_tprune, gtp).
  schedule: a `maskmodel.tokens.tokens_per_layer` spec, always explicit:
    r removed per block (`8` or `("r", 8)`), r per block (`("r", [..])`),
    ToMe's `("inflect", r, a)` and `("decreasing", r)` (= inflect -1: 2r in
    the first block down to 0), EViT's `("rate", rho, layers)`, or the
    tokens kept after each block, [CLS] included (`("keep", [..])`). A bare
    sequence such as (11, 7) is refused as ambiguous.
  options: dict of the method's options (e.g. {"linkage": "single"} for atc).
  prop_attn: ToMe's proportional attention (log(size) added to the logits);
    None follows the method's official code: on for atc; for tome on only
    `off_the_shelf` (ToMe advises it off for training and MAE models); off
    for the others.
  off_the_shelf: the model was trained without this reduction and only
    evaluated with it (`build.with_token_reduction(..., off_the_shelf=True)`);
    decides the default prop_attn only.
  Schedule and options accept any type, so `--config.model.token_reduction.
  schedule=decreasing:8`, `=keep:40,30,20,10` and `="('r', 8)"` all work.
  """
  c = ml_collections.ConfigDict()
  c.method = method
  c.schedule = ml_collections.FieldReference(schedule, field_type=object)
  c.options = ml_collections.FieldReference(dict(options or {}),
                                            field_type=object)
  c.prop_attn = ml_collections.FieldReference(prop_attn, field_type=object)
  c.off_the_shelf = off_the_shelf
  return c
