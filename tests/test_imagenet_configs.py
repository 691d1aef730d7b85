"""The ImageNet MAE configs: the paper's recipe and models, and a real run
of one through the CLI on a locally prepared dataset shaped like
`imagenet2012` (nothing is downloaded)."""
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config, run_cli
from maskmodel import config as config_lib
from maskmodel.tasks import get_task

# (patch, width, depth, heads) of ViT-B/16, ViT-L/16, ViT-H/14 (Dosovitskiy
# et al. 2021, Table 1), which MAE pretrains.
MODELS = {"b16": (16, 768, 12, 12), "l16": (16, 1024, 24, 16),
          "h14": (14, 1280, 32, 16)}


def _config(name, epochs):
  return load_config(os.path.join(ROOT, "configs", "mae", f"imagenet_vit_{name}.py")
                     + f":{epochs}")


def _vit_params(width, depth, patch_in, extra):
  """Pre-LN ViT parameters: qkv, proj, 4x MLP and two LayerNorms per block,
  a final LayerNorm, the input projection (`patch_in` features) and `extra`
  token vectors (class or mask token). Position embeddings are fixed sin-cos
  (no parameters), as in MAE."""
  block = 12 * width * width + 13 * width
  return depth * block + 2 * width + (patch_in + 1) * width + extra * width


@pytest.mark.parametrize("epochs", [None, 100, 1600])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_imagenet_schedule_follows_the_epochs(name, epochs):
  """lr = blr * batch / 256, and steps and warmup in epochs of the 1,281,167
  training images (the default is 800 epochs)."""
  c = _config(name, epochs or "")
  steps_per_epoch = 1_281_167 // c.batch_size
  assert c.total_steps == (epochs or 800) * steps_per_epoch
  assert c.optimizer.lr == pytest.approx(1.5e-4 * c.batch_size / 256)
  assert c.optimizer.warmup_steps == 40 * steps_per_epoch
  config_lib.validate(c, 1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_imagenet_config_is_the_paper_recipe(name):
  c = _config(name, 1600)
  config_lib.validate(c, 1)
  steps_per_epoch = 1_281_167 // 4096
  assert c.model.name == "vit" and c.model.dtype == "bfloat16"
  assert c.optimizer.grad_clip == 0.0 and c.evals.names == ()
  assert c.data.name == "tfds:imagenet2012" and c.data.test_split == "validation"
  assert (c.data.image_size, c.data.channels, c.data.num_classes) == (224, 3, 1000)
  assert tuple(c.data.crop_scale) == (0.2, 1.0) and c.data.flip
  assert c.data.eval_crop == 0.875  # resize 256, center crop 224
  assert c.batch_size == 4096 and c.total_steps == 1600 * steps_per_epoch
  assert c.optimizer.lr == pytest.approx(1.5e-4 * 4096 / 256)
  assert c.optimizer.warmup_steps == 40 * steps_per_epoch
  assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.weight_decay) == (0.9, 0.95, 0.05)
  assert c.task.mask_ratio == 0.75 and c.task.norm_pix_loss
  assert (c.task.decoder.width, c.task.decoder.depth, c.task.decoder.num_heads) == (512, 8, 16)
  m = c.model
  assert (m.patch_size, m.width, m.depth, m.num_heads) == MODELS[name]

  # The models it builds have exactly the parameters of those architectures.
  batch = {"image": jnp.zeros((1, 224, 224, 3)), "label": jnp.zeros((1,), jnp.int32)}
  params, _ = jax.eval_shape(get_task(c).init, jax.random.PRNGKey(0), batch)
  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  patch_in = m.patch_size ** 2 * 3
  assert count(params["encoder"]) == _vit_params(m.width, m.depth, patch_in, 1)
  # Decoder: its blocks, an embedding of the encoder's width, and a
  # prediction of each patch's pixels.
  assert count(params["decoder"]) == (_vit_params(512, 8, m.width, 1)
                                      + 512 * patch_in + patch_in)


def test_imagenet_config_trains_on_imagenet_shaped_tfds(tmp_path):
  """`imagenet_vit_b16.py` as written (bfloat16, random-resized-crop and
  flip of JPEGs of varying sizes, 1,000 classes, 224x224 patches of 16, the
  0.875 center crop for evals), only smaller in width, depth, batch, steps
  and warmup, and with a k-NN eval added."""
  pytest.importorskip("tensorflow_datasets")
  import tfds_mnist_local  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / "tfds")
  name = tfds_mnist_local.prepare(data_dir, tfds_mnist_local.ImagenetShapedLocal)
  proc = run_cli("--config", os.path.join(ROOT, "configs", "mae", "imagenet_vit_b16.py:1"),
                 "--workdir", str(tmp_path / "run"),
                 f"--config.data.name=tfds:{name}", f"--config.data.data_dir={data_dir}",
                 "--config.batch_size=8", "--config.total_steps=3", "--config.log_every=1",
                 "--config.optimizer.warmup_steps=1",
                 "--config.model.depth=1", "--config.model.width=64",
                 "--config.model.num_heads=2", "--config.task.decoder.depth=1",
                 "--config.task.decoder.width=32", "--config.task.decoder.num_heads=2",
                 "--config.evals.names=('knn',)", "--config.evals.batch_size=16")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The k-NN eval read the validation split through the ImageNet eval crop.
  assert re.search(r"final: knn_accuracy=[\d.]+", proc.stdout), proc.stdout
  losses = [float(x) for x in re.findall(r"step \d/3  loss (\S+)", proc.stdout)]
  assert len(losses) == 3 and np.isfinite(losses).all(), proc.stdout
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "3")


# Each zoo method's ImageNet recipe, from its official code (the config
# docstrings name the files): (config, default epochs, batch, lr, warmup
# epochs, b2, weight decay, clip, crop scale).
ZOO = {
    "simmim/imagenet_vit_b16.py": (800, 2048, 1e-4 * 2048 / 512, 10, 0.999, 0.05, 5.0, (0.67, 1.0)),
    "maskfeat/imagenet_vit_b16.py": (300, 2048, 2e-4 * 2048 / 256, 30, 0.999, 0.05, 0.02, (0.5, 1.0)),
    "hpm/imagenet_vit_b16.py": (800, 256, 1.5e-4, 40, 0.95, 0.05, 0.0, (0.2, 1.0)),
    "colormae/imagenet_vit_b16.py": (300, 4096, 1.5e-4 * 4096 / 256, 40, 0.95, 0.05, 0.0, (0.2, 1.0)),
    "cropmae/imagenet_vit_s16.py": (400, 2048, 8e-4, 20, 0.95, 0.05, 0.0, None),
    # lr = blr * sqrt(batch) / 4 in `main_lut.py`, = blr * batch / 256 at 4096.
    "lut/imagenet_vit_b16.py": (1600, 4096, 1.5e-4 * 4096 / 256, 40, 0.95, 0.05, 0.0, None),
    "spark/imagenet_convnext_b.py": (1600, 4096, 2e-4 * 4096 / 256, 40, 0.999, 0.04, 5.0, (0.67, 1.0)),
    # `configs/in1k_vith14_ep300.yaml`: 16 GPUs x 128, lr not scaled.
    "ijepa/imagenet_vit_h14.py": (300, 2048, 1e-3, 40, 0.999, 0.04, 0.0, (0.3, 1.0)),
    "dmtjepa/imagenet_vit_h14.py": (300, 2048, 1e-3, 40, 0.999, 0.04, 0.0, (0.3, 1.0)),
}


@pytest.mark.parametrize("path", sorted(ZOO))
def test_zoo_imagenet_recipes(path):
  epochs, batch, lr, warmup, b2, wd, clip, crop = ZOO[path]
  c = load_config(os.path.join(ROOT, "configs", path))
  config_lib.validate(c, 1)
  steps = 1_281_167 // batch
  assert (c.batch_size, c.total_steps) == (batch, epochs * steps)
  assert c.optimizer.lr == pytest.approx(lr)
  assert c.optimizer.warmup_steps == warmup * steps
  assert (c.optimizer.b2, c.optimizer.weight_decay, c.optimizer.grad_clip) == (b2, wd, clip)
  assert (tuple(c.data.crop_scale) if c.data.crop_scale else None) == crop
  assert (c.data.image_size, c.data.num_classes, c.model.dtype) == (224, 1000, "bfloat16")
  get_task(c)  # the task accepts the recipe (mask counts, HOG cells, views)


def test_zoo_recipe_details():
  simmim = load_config(os.path.join(ROOT, "configs", "simmim", "imagenet_vit_b16.py"))
  steps = 1_281_167 // 2048
  assert simmim.optimizer.schedule == "multistep"
  assert tuple(simmim.optimizer.milestones) == (700 * steps,)
  assert (simmim.task.mask_ratio, simmim.task.mask_patch_size) == (0.6, 32)
  maskfeat = load_config(os.path.join(ROOT, "configs", "maskfeat", "imagenet_vit_b16.py"))
  task = get_task(maskfeat)
  assert (task.num_hidden, task.num_hidden // 5) == (78, 15)  # round(0.4 * 196)
  hpm = load_config(os.path.join(ROOT, "configs", "hpm", "imagenet_vit_b16.py"))
  assert hpm.task.steps_per_epoch == 1_281_167 // 256 and not hpm.task.norm_pix_loss
  cropmae = get_task(load_config(os.path.join(ROOT, "configs", "cropmae", "imagenet_vit_s16.py")))
  assert cropmae.keep == 2  # int(196 * 0.015)
  lut = load_config(os.path.join(ROOT, "configs", "lut", "imagenet_vit_b16.py"))
  t = lut.task
  assert (t.mask_ratio, t.norm_pix_loss, t.bc_weight, t.ema_start) == (0.75, True, 0.25, 0.996)
  assert (t.head_hidden, t.crop_padding, t.color_jitter_prob) == (4096, 4, 0.8)
  assert tuple(t.color_jitter) == (0.4, 0.4, 0.2, 0.1) and lut.data.flip
  assert get_task(lut).keep == 49  # 196 // 4 per view, disjoint


def test_spark_convnext_b_recipe_and_network():
  """SparK's LAMB with weight decay 0.04 -> 0.2 (`pretrain/utils/arg_util.py`,
  `lr_control.py`), mask 0.6 on the 7 x 7 stride-32 grid (round(19.6) = 20
  cells active), and ConvNeXt-B with exactly its parameters (88,591,464
  with the 1,000-class head, as timm's `convnext_base`)."""
  c = load_config(os.path.join(ROOT, "configs", "spark", "imagenet_convnext_b.py"))
  assert (c.optimizer.name, c.optimizer.weight_decay_end) == ("lamb", 0.2)
  assert c.optimizer.min_lr == pytest.approx(0.001 * c.optimizer.lr)
  assert (c.task.mask_ratio, c.task.decoder_width) == (0.6, 768)
  task = get_task(c)
  assert (task.grid, task.keep, task.downsample) == ((7, 7), 20, 32)
  batch = {"image": jnp.zeros((1, 224, 224, 3))}
  params, _ = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(params["encoder"]))
  assert count + 1024 * 1000 + 1000 == 88_591_464
  # Densify at the 4 encoder scales, 5 decoder blocks up to 224 pixels.
  assert sorted(k for k in params if k.startswith("densify_proj")) == [
      f"densify_proj_{i}" for i in range(4)]
  assert sorted(k for k in params if k.startswith("decoder_")) == [
      f"decoder_{i}" for i in range(5)]


def test_ijepa_vit_h14_recipe_and_networks():
  """I-JEPA's ViT-H/14 yaml: lr from 2e-4 warmed up to 1e-3 then down to
  1e-6, weight decay 0.04 -> 0.4, EMA 0.996 -> 1, the multi-block mask
  settings, and the networks with exactly the parameters of the official
  `vit_huge` (no class token, fixed positions) and `vit_predictor` (width
  384, depth 12, 16 heads)."""
  c = load_config(os.path.join(ROOT, "configs", "ijepa", "imagenet_vit_h14.py"))
  o, t = c.optimizer, c.task
  assert (o.warmup_init, o.min_lr, o.weight_decay_end) == (2e-4, 1e-6, 0.4)
  assert tuple(t.ema) == (0.996, 1.0) and t.loss == "smooth_l1"
  assert (t.num_targets, tuple(t.target_scale), tuple(t.target_aspect)) == (
      4, (0.15, 0.2), (0.75, 1.5))
  assert (tuple(t.context_scale), t.min_keep, t.allow_overlap) == ((0.85, 1.0), 10, False)
  assert (t.mask_group_size, t.eval_encoder, c.data.flip) == (128, "target", False)
  assert t.context_length == 128   # of the largest block's 225
  task = get_task(c)
  assert task.grid == (16, 16)
  batch = {"image": jnp.zeros((1, 224, 224, 3))}
  params, state = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  assert count(params["encoder"]) == _vit_params(1280, 32, 14 * 14 * 3, 0)
  assert count(state["teacher"]) == count(params["encoder"])
  # Embedding to 384, 12 blocks and a norm (as `_vit_params` without input
  # projection), the mask token, the projection back to 1280.
  assert count(params["predictor"]) == (
      _vit_params(384, 12, 1280, 0) + 384 + 384 * 1280 + 1280)


def test_dmtjepa_vit_h14_is_ijepas_recipe_with_the_heads():
  """DMT-JEPA's ViT-H/14 yaml differs from I-JEPA's only by its `patch`
  section (4 neighbours of a 3 x 3 window)."""
  ijepa = load_config(os.path.join(ROOT, "configs", "ijepa", "imagenet_vit_h14.py"))
  dmt = load_config(os.path.join(ROOT, "configs", "dmtjepa", "imagenet_vit_h14.py"))
  assert (dmt.task.name, dmt.task.neighbours, dmt.task.window) == ("dmtjepa", 4, 3)
  rest = dict(dmt.task.to_dict())
  for key in ("name", "neighbours", "window"):
    rest.pop(key)
  assert rest == {k: v for k, v in ijepa.task.to_dict().items() if k != "name"}
  for part in ("optimizer", "data", "model"):
    assert dmt[part].to_dict() == ijepa[part].to_dict()
  assert (dmt.batch_size, dmt.total_steps) == (ijepa.batch_size, ijepa.total_steps)
