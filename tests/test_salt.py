"""SALT: the frozen teacher (loaded once, never moved, no gradient, written
once into `frozen/`, restored on resume, sharded like the student), the
loss target against a direct computation and the L1 loss against a port of
V-JEPA's `loss_fn`, the teacher errors, and both
stages trained and resumed on 8 devices."""
import os

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel import checkpoint, partitioning, train
from maskmodel.config import ConfigError
from maskmodel.tasks import get_task, ijepa

TEACHER_SMOKE = os.path.join(ROOT, "configs", "salt", "mnist_vit_tiny_teacher.py") + ":smoke"
STUDENT = os.path.join(ROOT, "configs", "salt", "mnist_vit_tiny.py")


def student_config(teacher_workdir="", **teacher):
  config = load_config(f"{STUDENT}:smoke")
  config.task.teacher_workdir = str(teacher_workdir)
  config.task.teacher.update(teacher)
  return config


@pytest.fixture(scope="module")
def salt(tmp_path_factory):
  """A stage-2 task, a teacher checkpoint written in-process (a stage-1
  state whose encoder has the smoke teacher's shapes, with weights unlike
  the task's placeholder), the fresh train state with the teacher loaded,
  and a batch."""
  teacher_dir = tmp_path_factory.mktemp("teacher")
  config = student_config(teacher_dir)
  task = get_task(config)
  images = jax.random.normal(jax.random.PRNGKey(0), (32, 28, 28, 1))
  batch = {"image": images, "label": jnp.zeros((32,), jnp.int32)}
  encoder = jax.jit(task.teacher.init)(jax.random.PRNGKey(42), images)["params"]
  ckpt = checkpoint.Checkpointer(teacher_dir / "checkpoints")
  ckpt.save(10, {"step": jnp.int32(10), "params": {"encoder": encoder}}, {})
  ckpt.wait()
  state, tx, schedule = train.initial_state(config, task, batch)
  params, task_state = task.load_pretrained(state["params"], state["task_state"])
  state = dict(state, params=params, task_state=task_state)
  return config, task, batch, encoder, state, tx, schedule


def test_teacher_is_loaded_frozen_gets_no_gradient_and_never_moves(salt):
  config, task, batch, encoder, state, tx, schedule = salt
  teacher = state["task_state"]["frozen"]["teacher"]["encoder"]
  for a, b in zip(jax.tree.leaves(teacher), jax.tree.leaves(encoder)):
    np.testing.assert_array_equal(a, b)
  # The loop checkpoints exactly the teacher once per run.
  marks = train.frozen_leaves(task, state)
  assert all(jax.tree.leaves(marks["task_state"]["frozen"]))
  assert not any(jax.tree.leaves(marks["params"]))
  # Three optimizer steps, each with the loss's gradient with respect to the
  # task state (one program): no gradient reaches the teacher, even taken
  # with respect to it; the student moves, the teacher stays bit-identical.
  @jax.jit
  def step(state, batch):
    grads = jax.grad(lambda s: task.loss(
        state["params"], s, batch, jax.random.PRNGKey(3), 0)[0])(state["task_state"])
    return train.train_step(task, tx, schedule, state, batch) + (grads,)

  new = jax.tree.map(jnp.copy, state)
  for _ in range(3):
    new, metrics, grads = step(new, batch)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads))
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  for a, b in zip(jax.tree.leaves(new["task_state"]), jax.tree.leaves(state["task_state"])):
    np.testing.assert_array_equal(a, b)
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(new["params"]), jax.tree.leaves(state["params"]))]
  assert all(moved)
  # Evaluation reads the student.
  assert task.eval_params(new["params"], new["task_state"]) is new["params"]


def _layer_norm(x, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps)


def test_loss_regresses_the_frozen_teachers_latents_at_the_targets(salt):
  """The target is the teacher on the whole image, layer-normed without
  affine, at each target block's patches; the loss the mean absolute error
  over the valid entries. Both against a direct numpy computation."""
  config, task, batch, encoder, state, _, _ = salt
  images = batch["image"]

  @jax.jit
  def run(state):
    masks = task.masks(jax.random.PRNGKey(5), images.shape[0])
    return (masks, task.teacher.apply({"params": encoder}, images)["tokens"],
            task.targets(state["task_state"], images, masks),
            task.model.apply({"params": state["params"]}, images, masks),
            task.loss(state["params"], state["task_state"], batch,
                      jax.random.PRNGKey(5), 0))

  masks, tokens, got, pred, (loss, (metrics, _)) = run(state)
  want = _layer_norm(np.asarray(tokens, np.float64))[
      np.arange(images.shape[0])[None, :, None], np.asarray(masks.targets)]
  assert got.shape == want.shape == masks.targets.shape + (32,)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  valid = np.asarray(masks.targets_valid)
  assert 0 < valid.sum() < valid.size   # padding exists and is left out
  want_loss = np.abs(np.asarray(pred) - want)[valid].mean()
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-4)
  assert float(metrics["target_patches"]) == pytest.approx(valid[0].sum(1).mean())


def test_stage1_regresses_normalized_pixels_at_the_targets(salt):
  """Stage 1's target: each target patch's pixels, normalized by the
  patch's mean and unbiased std (MAE's norm_pix_loss); its loss the mean
  squared error over the valid entries. Against numpy."""
  images = salt[2]["image"]
  task = get_task(load_config(TEACHER_SMOKE))
  params, state = jax.jit(task.init)(jax.random.PRNGKey(0), salt[2])

  @jax.jit
  def run(params):
    masks = task.masks(jax.random.PRNGKey(5), images.shape[0])
    return (masks, task.targets(state, images, masks),
            task.model.apply({"params": params}, images, masks),
            task.loss(params, state, salt[2], jax.random.PRNGKey(5), 0)[0])

  masks, got, pred, loss = run(params)
  x = np.asarray(images, np.float64).reshape(32, 7, 4, 7, 4, 1)
  patches = x.transpose(0, 1, 3, 2, 4, 5).reshape(32, 49, 16)
  patches = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(
      patches.var(-1, ddof=1, keepdims=True) + 1e-6)
  want = patches[np.arange(32)[None, :, None], np.asarray(masks.targets)]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  valid = np.asarray(masks.targets_valid)
  np.testing.assert_allclose(
      float(loss), ((np.asarray(pred) - want) ** 2)[valid].mean(), rtol=1e-4)


def test_teacher_is_sharded_like_the_student(salt):
  """On an fsdp = 8 mesh a teacher of the student's size gets the
  student encoder's specs, FSDP-sharded where the params are."""
  config, task, batch, *_ = salt
  init, _, _ = train._state_init(config, task, batch)  # pylint: disable=protected-access
  shapes = jax.eval_shape(lambda b: init(jax.random.PRNGKey(0), b), batch)
  mesh = jax.sharding.AbstractMesh((1, 8, 1), ("data", "fsdp", "tensor"))
  specs = partitioning.state_specs(shapes, mesh)
  leaves = lambda t: jax.tree.leaves(t, is_leaf=lambda x: isinstance(x, P))
  teacher = leaves(specs["task_state"]["frozen"]["teacher"]["encoder"])
  assert teacher == leaves(specs["params"]["encoder"])
  assert any("fsdp" in spec for spec in teacher)


def test_teacher_errors_are_one_line(salt, tmp_path):
  _, task, _, _, state, _, _ = salt
  cases = ((student_config(""), ConfigError,
            r"^task.teacher_workdir is not set; .*--config.task.teacher_workdir=DIR"),
           (student_config(tmp_path / "nowhere"), checkpoint.CheckpointError,
            r"no checkpoint folder .*set task.teacher_workdir"),
           (student_config(tmp_path), checkpoint.CheckpointError,
            r"no readable checkpoint .*point task.teacher_workdir"))
  for config, error, match in cases:
    with pytest.raises(error, match=match) as e:
      get_task(config).load_pretrained(state["params"], state["task_state"])
    assert "\n" not in str(e.value)
  # A teacher of another width than the checkpoint's: the fix is named.
  workdir = salt[0].task.teacher_workdir
  wide = get_task(student_config(workdir, width=48))
  params, task_state = jax.eval_shape(wide.init, jax.random.PRNGKey(0), salt[2])
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"does not fit the teacher .*has shape .*Set task.teacher") as e:
    wide.load_pretrained(params, task_state)
  assert "\n" not in str(e.value)
  bad = student_config(workdir, width=30, num_heads=4)
  with pytest.raises(ConfigError, match="task.teacher.width=30"):
    get_task(bad)


def test_stage2_trains_and_resumes_bit_exactly_on_8_devices(salt, tmp_path):
  """Stage 2 reads its teacher from the fixture's teacher workdir (the
  config argument `teacher=DIR`), trains on 8 devices and resumes
  bit-exactly from its step-3 checkpoint, restoring the teacher from its
  own `frozen/`. The teacher is written there once (at step 3, after three
  steps: equal to the checkpointed encoder, so it had not moved) and into
  no step."""
  teacher_dir = salt[0].task.teacher_workdir
  student_dir = tmp_path / "student"
  final = assert_resumes_bit_exactly(f"{STUDENT}:smoke,teacher={teacher_dir}",
                                     student_dir)
  assert 0.1 < final["knn_accuracy"] <= 1.0
  ckpts = student_dir / "checkpoints"
  assert sorted(os.listdir(ckpts)) == ["3", "6", "frozen"]
  steps = ocp.CheckpointManager(
      ckpts, item_handlers={"state": ocp.StandardCheckpointHandler()})
  for step in (3, 6):
    meta = steps.item_metadata(step)["state"].tree
    assert all(x is None for x in jax.tree.leaves(
        meta["task_state"]["frozen"], is_leaf=lambda x: x is None))
    assert meta["params"]["encoder"]["patch_embed"]["kernel"] is not None
  reader = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      reader.metadata(ckpts / "frozen").item_metadata.tree,
      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
  frozen = reader.restore(ckpts / "frozen", target)
  for a, b in zip(jax.tree.leaves(frozen["task_state"]["frozen"]["teacher"]["encoder"]),
                  jax.tree.leaves(salt[3])):
    np.testing.assert_array_equal(a, b)


def _vjepa_loss_fn(z, h, loss_exp=1.0):
  """`loss_fn` of facebookresearch/jepa `app/vjepa/train.py`, in numpy:
  for each (prediction, target) pair of a mask, mean(|z - h|**loss_exp) /
  loss_exp, summed and divided by the number of masks."""
  loss = 0.0
  for zi, hi in zip(z, h):
    loss += np.mean(np.abs(zi - hi) ** loss_exp) / loss_exp
  return loss / len(z)


def test_l1_loss_is_vjepas_loss_fn():
  """SALT's default loss (`task.loss="l1"`) on unpadded target blocks, the
  official lists' case, against a port of V-JEPA's `loss_fn`
  (`loss_exp: 1.0`)."""
  config = load_config(f"{STUDENT}:smoke")
  assert config.task.loss == "l1"
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(4, 3, 7, 16)).astype(np.float32)    # [M, B, Kt, D]
  target = rng.normal(size=(4, 3, 7, 16)).astype(np.float32)
  got = ijepa.prediction_loss(jnp.asarray(pred), jnp.asarray(target),
                              jnp.ones((4, 3, 7), bool), config.task.loss)
  np.testing.assert_allclose(float(got), _vjepa_loss_fn(pred, target),
                             rtol=1e-6)
