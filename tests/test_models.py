"""The model registry: `config.model.name` picks the builder, and nothing
outside the model (tasks, optimizer labels, evaluators, report) assumes a
ViT."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SMOKE, load_config
from maskmodel import evaluators, models, report
from maskmodel.config import ConfigError
from maskmodel.models import build, registry
from maskmodel.models.patches import patchify
from maskmodel.tasks import get_task

CLASSIFY_SMOKE = "configs/classify/mnist_vit_tiny.py:smoke"


def test_unknown_model_name_is_one_config_error_naming_the_known_ones():
  config = load_config(SMOKE)
  config.model.name = "resnet"
  with pytest.raises(ConfigError) as e:
    get_task(config)
  assert str(e.value) == ("model.name='resnet' is unknown; use one of "
                          f"{sorted(models.MODELS)}.")
  assert "\n" not in str(e.value) and "'vit'" in str(e.value)


def test_vit_is_registered_and_builds_what_build_vit_builds():
  config = load_config(CLASSIFY_SMOKE)
  family = models.get_model("vit")
  a = family.build(config.model, num_classes=10, num_tokens=family.num_tokens(config))
  b = build.vit(config.model, num_classes=10, num_tokens=build.num_tokens(config))
  assert a == b
  assert family.num_tokens(config) == 7 * 7 + 1
  assert family.describe(config) == "ViT width 32, depth 1, patch 4, image 28"


class _MLP(nn.Module):
  """A model with no patches, tokens or blocks."""
  num_classes: int = 0
  width: int = 8

  @nn.compact
  def __call__(self, images):
    h = nn.relu(nn.Dense(self.width, name="hidden")(images.reshape(images.shape[0], -1)))
    out = {"pooled": h}
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, name="head")(h)
    return out


@pytest.fixture
def mlp_family(monkeypatch):
  built = []
  def build_mlp(model_config, *, num_classes=0, num_tokens=None):
    built.append(num_tokens)
    return _MLP(num_classes=num_classes, width=model_config.width)
  family = registry.ModelFamily(
      "mlp", build_mlp, num_tokens=lambda config: None,
      describe=lambda config: f"MLP width {config.model.width}")
  monkeypatch.setitem(registry.MODELS, "mlp", family)
  return built


def test_classify_trains_any_registered_model(mlp_family, tmp_path):
  """A model that is not a ViT runs through the classify task, its
  optimizer labels and the report, from its own registry entry."""
  config = load_config(CLASSIFY_SMOKE)
  config.model.name = "mlp"
  config.model.patch_size = 5  # no ViT geometry is checked for this model
  config.optimizer.layer_decay = 1.0
  task = get_task(config)
  assert mlp_family == [None] and isinstance(task.model, _MLP)
  batch = {"image": jnp.ones((4, 28, 28, 1)), "label": jnp.arange(4)}
  params, state = task.init(jax.random.PRNGKey(0), batch)
  assert set(params) == {"hidden", "head"}
  loss, (metrics, _) = task.loss(params, state, batch, jax.random.PRNGKey(1), 0)
  assert np.isfinite(float(loss)) and "accuracy" in metrics
  assert task.param_labels(params) is None

  # Layer-wise lr decay needs depths the model does not define.
  config.optimizer.layer_decay = 0.75
  with pytest.raises(ConfigError, match=r"model.name='mlp' has no layer depths "
                     r"for optimizer.layer_decay; set it to 1.0."):
    get_task(config).param_labels(params)

  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 1.0}) + "\n")
  report.write(str(tmp_path), config, {"test_accuracy": 0.5}, {},
               train_seconds=1.0, steps_run=1)
  text = (tmp_path / "report.md").read_text()
  assert "- model: MLP width 32\n" in text and "ViT" not in text


def test_classify_layer_decay_comes_from_the_family():
  config = load_config(CLASSIFY_SMOKE)  # layer_decay 0.75, depth 1
  task = get_task(config)
  params, _ = jax.eval_shape(task.init, jax.random.PRNGKey(0),
                             {"image": jnp.ones((2, 28, 28, 1))})
  scales = task.param_labels(params)
  # Embeddings are layer 0 of 2, block_0 layer 1, the head layer 2.
  assert scales["patch_embed"]["kernel"] == pytest.approx(0.75 ** 2)
  assert scales["encoder"]["block_0"]["attn"]["qkv"]["kernel"] == pytest.approx(0.75)
  assert scales["encoder"]["norm"]["scale"] == 1.0
  assert scales["head"]["kernel"] == 1.0


def test_mae_reconstruct_returns_images_and_the_eval_needs_no_patches(tmp_path):
  config = load_config(SMOKE)
  task = get_task(config)
  images = jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 1))
  params, state = jax.jit(task.init)(jax.random.PRNGKey(1), {"image": images})
  rng = jax.random.PRNGKey(2)
  out = {k: np.asarray(v) for k, v in
         jax.jit(task.reconstruct)(params, state, images, rng).items()}
  for k in ("original", "masked", "reconstruction"):
    assert out[k].shape == images.shape, k
  assert out["mask"].shape == (3, 28, 28, 1)
  predict = jax.jit(task.predict)
  _, mask = predict(params, images, rng)
  hidden = np.kron(np.asarray(mask.mask).reshape(3, 7, 7), np.ones((4, 4)))[..., None]
  np.testing.assert_array_equal(out["mask"], hidden)
  np.testing.assert_array_equal(out["original"], np.asarray(images))
  visible = hidden == 0
  np.testing.assert_allclose(out["masked"], np.where(visible, images, 0), atol=0)
  np.testing.assert_allclose(out["reconstruction"][visible[..., 0]],
                             np.asarray(images)[visible[..., 0]], atol=0)
  # At hidden pixels: the prediction, mapped back with each patch's stats.
  pred, _ = predict(params, images, rng)
  target = patchify(images, 4)
  mean, std = target.mean(-1, keepdims=True), jnp.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6)
  want = np.asarray(pred * std + mean)[np.asarray(mask.mask) == 1]
  got = np.asarray(patchify(jnp.asarray(out["reconstruction"]), 4))[np.asarray(mask.mask) == 1]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  # The evaluator's MSE is the mean over hidden pixels, as the patch-wise
  # mean over hidden patches was.
  config.evals.reconstruction.num_images = 3
  test_src = [{"image": np.full((28, 28, 1), 40 * i, np.uint8), "label": np.int32(i)}
              for i in range(3)]
  from maskmodel import data  # pylint: disable=g-import-not-at-top
  spec = data.image_spec(config.data)
  ctx = evaluators.Context(config, task, None, None, test_src, spec, str(tmp_path))
  got = evaluators.reconstruction(ctx, params, state, {})["reconstruction_mse_pixels"]
  x = np.stack([evaluators.eval_preprocess(r, spec)["image"] for r in test_src])
  pred, m = predict(params, jnp.asarray(x), jax.random.PRNGKey(config.seed))
  t = patchify(jnp.asarray(x), 4)
  mean, std = t.mean(-1, keepdims=True), jnp.sqrt(t.var(-1, keepdims=True, ddof=1) + 1e-6)
  per_patch = (((pred * std + mean) - t) ** 2).mean(-1)
  want = float((per_patch * m.mask).sum() / m.mask.sum())
  assert got == pytest.approx(want, rel=1e-4)
  assert (tmp_path / "reconstructions.png").exists()


def test_models_tasks_and_data_never_import_the_loop():
  """Imports run one way: the loop imports tasks; tasks, models, masking,
  tokens and data import none of the loop, its evaluators or its report."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import ROOT  # pylint: disable=g-import-not-at-top
  code = ("import sys\n"
          "import maskmodel.tasks, maskmodel.models, maskmodel.masking, "
          "maskmodel.tokens, maskmodel.data\n"
          "print(' '.join(sorted(m for m in sys.modules if m.startswith('maskmodel'))))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout.split()
  assert "maskmodel.models.registry" in out and "maskmodel.tasks.mae" in out
  loop = [m for m in out if m.split(".")[1:2] and m.split(".")[1] in
          ("train", "main", "evaluators", "report", "experiments")]
  assert not loop, loop


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_keeps_params_and_gradients_and_recomputes_the_blocks(policy):
  """`model.remat` rematerializes the encoder blocks: the same params (names
  and values), the same loss and gradients, and a `checkpoint` (remat) in the
  gradient's program, which plain blocks do not have."""
  m = load_config("configs/mae/mnist_vit_tiny.py:smoke").model
  plain = build.vit(m, num_classes=10)
  with m.unlocked():
    m.remat = policy
  remat = build.vit(m, num_classes=10)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
  params = jax.jit(plain.init)(jax.random.PRNGKey(1), images)
  assert (jax.tree.structure(jax.eval_shape(remat.init, jax.random.PRNGKey(1), images))
          == jax.tree.structure(params))
  loss = lambda model: lambda p: (model.apply(p, images)["logits"] ** 2).sum()
  grads = [jax.jit(jax.grad(loss(model)))(params) for model in (plain, remat)]
  for a, b in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  programs = [str(jax.make_jaxpr(jax.grad(loss(model)))(params))
              for model in (plain, remat)]
  assert "checkpoint" not in programs[0] and "remat" not in programs[0]
  assert "checkpoint" in programs[1] or "remat" in programs[1]


def test_unknown_remat_policy_is_a_config_error():
  m = load_config("configs/mae/mnist_vit_tiny.py:smoke").model
  with m.unlocked():
    m.remat = "everything"
  with pytest.raises(ConfigError, match="model.remat='everything' is unknown"):
    build.vit(m)
