"""The task contract of `maskmodel/tasks/base.py`, through the one loop.

A toy task uses every optional hook: an EMA teacher updated in
`after_update`, a frozen subtree (`param_labels`), the step passed to
`loss`, two views of each image made on the host (`preprocess`), and an
evaluator of its own (`evaluators`). It must train in the real loop, on 8
simulated devices, resume bit-exactly, and never move its frozen leaves.
"""
import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, SMOKE, load_config, xla_env
from maskmodel import data, train
from maskmodel.tasks.base import TaskBase

MOMENTUM = 0.75
LOCAL = 14  # side of the local view, a window of the 28 x 28 global view


class EMATeacherTask(TaskBase):
  """Linear regression onto a frozen random projection of the pixels, with
  an EMA copy of the student as the teacher, and a local view (a window of
  the global one) regressed onto the student's output of the global view."""

  def preprocess(self, record, rng, train):
    example = super().preprocess(record, rng, train)
    if train:
      y, x = rng.integers(0, 28 - LOCAL + 1, size=2)
      example["local"] = example["image"][y:y + LOCAL, x:x + LOCAL]
    return example

  def init(self, rng, batch):
    dim = int(np.prod(batch["image"].shape[1:]))
    k1, k2, k3 = jax.random.split(rng, 3)
    params = {"student": 0.01 * jax.random.normal(k1, (dim, 4)),
              "frozen": jax.random.normal(k2, (dim, 4)) / dim**0.5,
              "local": jnp.zeros((LOCAL * LOCAL, 4))}
    return params, {"teacher": params["student"],
                    "steps_seen": jnp.zeros((), jnp.int32),
                    "frozen": {"offset": jax.random.normal(k3, (4,))}}

  def loss(self, params, state, batch, rng, step):
    del rng
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    local = batch["local"].reshape(x.shape[0], -1)
    student = x @ params["student"]
    target = x @ params["frozen"] + state["frozen"]["offset"]
    loss = (jnp.mean((student - target) ** 2) + jnp.mean(
        (local @ params["local"] - jax.lax.stop_gradient(student)) ** 2))
    # The step reaches the loss: it counts the steps taken so far.
    return loss, ({"loss": loss, "step": step.astype(jnp.float32)}, state)

  def after_update(self, params, state, step):
    teacher = MOMENTUM * state["teacher"] + (1 - MOMENTUM) * params["student"]
    return dict(state, teacher=teacher, steps_seen=step + 1)

  def param_labels(self, params):
    return {"student": 1.0, "frozen": 0.0, "local": 1.0}

  def evaluators(self):
    def teacher_gap(ctx, params, state, cache):
      del ctx, cache
      gap = jnp.abs(state["teacher"] - params["student"]).max()
      return {"teacher_gap": float(gap)}
    return {"teacher_gap": teacher_gap}


def _toy_config():
  c = load_config(SMOKE)
  c.task.name = "toy_ema"
  c.evals.names = ("teacher_gap",)  # The task's own evaluator.
  c.optimizer.warmup_steps = 0
  return c


def test_preprocess_makes_both_views_in_the_pipeline():
  task = EMATeacherTask(_toy_config())
  src = data.get_source("mnist5k", "train")
  ds = data.train_dataset(src, batch_size=8, seed=0,
                          preprocess=functools.partial(task.preprocess, train=True))
  batch = ds[0]
  assert batch["image"].shape == (8, 28, 28, 1)
  assert batch["local"].shape == (8, LOCAL, LOCAL, 1)
  offsets = set()
  for image, local in zip(batch["image"], batch["local"]):
    windows = np.lib.stride_tricks.sliding_window_view(image[..., 0], (LOCAL, LOCAL))
    hits = np.argwhere((windows == local[..., 0]).all(axis=(-1, -2)))
    assert len(hits), "the local view is not a window of the global view"
    offsets.add(tuple(hits[0]))
  assert len(offsets) > 1  # drawn per example
  # Evals get the default preprocessing: the image and label only.
  assert sorted(task.preprocess(src[0], None, False)) == ["image", "label"]


def test_after_update_is_the_closed_form_ema():
  config = _toy_config()
  task = EMATeacherTask(config)
  rand = np.random.default_rng(0).random
  batch = {"image": jnp.asarray(rand((8, 28, 28, 1)), jnp.float32),
           "local": jnp.asarray(rand((8, LOCAL, LOCAL, 1)), jnp.float32),
           "label": jnp.zeros((8,), jnp.int32)}
  state, tx, schedule = train.initial_state(config, task, batch)
  frozen = np.asarray(state["params"]["frozen"])
  step = jax.jit(lambda s, b: train.train_step(task, tx, schedule, s, b))
  students = [np.asarray(state["params"]["student"])]
  for i in range(4):
    state, metrics = step(state, batch)
    assert float(metrics["step"]) == i
    students.append(np.asarray(state["params"]["student"]))
  # teacher_T = m^T s_0 + sum_t (1 - m) m^(T - t) s_t over the new params.
  t = len(students) - 1
  want = MOMENTUM**t * students[0] + sum(
      (1 - MOMENTUM) * MOMENTUM**(t - i) * students[i] for i in range(1, t + 1))
  np.testing.assert_allclose(state["task_state"]["teacher"], want, rtol=1e-5,
                             atol=1e-7)
  assert int(state["task_state"]["steps_seen"]) == 4
  np.testing.assert_array_equal(state["params"]["frozen"], frozen)
  assert not np.allclose(students[-1], students[0])
  # The optimizer keeps no moments for the frozen projection.
  moments = sum(x.size for x in jax.tree.leaves(state["opt_state"])
                if getattr(x, "ndim", 0) > 0)
  assert moments == 2 * (students[0].size + state["params"]["local"].size)


RESUME_SCRIPT = textwrap.dedent("""
    import os, shutil, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import load_config
    from maskmodel import tasks, train
    from test_task_contract import EMATeacherTask, _toy_config

    assert jax.device_count() == 8
    tasks.TASKS["toy_ema"] = EMATeacherTask
    config = _toy_config()
    config.total_steps, config.checkpoint_every = 6, 3
    workdir = sys.argv[1]
    result = train.train_and_evaluate(config, workdir)
    assert 0 < result["final"]["teacher_gap"] < 1, result["final"]
    first = jax.device_get(result["state"])
    # Frozen params and state are written once, beside the steps, not in them.
    import orbax.checkpoint as ocp
    steps = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
        item_handlers={{"state": ocp.StandardCheckpointHandler()}})
    saved = steps.item_metadata(3)["state"].tree
    assert saved["params"]["frozen"] is None and saved["task_state"]["frozen"]["offset"] is None
    assert saved["params"]["student"] is not None
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "frozen"))
    # Drop the last checkpoint: the rerun resumes from step 3.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    again = jax.device_get(train.train_and_evaluate(config, workdir)["state"])
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
      np.testing.assert_array_equal(a, b)
    init = jax.jit(EMATeacherTask(config).init)(
        jax.random.split(jax.random.PRNGKey(config.seed))[0],
        {{"image": np.zeros((1, 28, 28, 1), np.float32)}})[0]
    np.testing.assert_array_equal(again["params"]["frozen"], init["frozen"])
    assert int(again["task_state"]["steps_seen"]) == 6
    print("OK")
""")


def test_unknown_or_clashing_evaluator_names():
  from maskmodel import evaluators  # pylint: disable=g-import-not-at-top
  from maskmodel.config import ConfigError  # pylint: disable=g-import-not-at-top
  config = _toy_config()
  task = EMATeacherTask(config)
  assert evaluators.due(config, 1, final=True, task=task) == ["teacher_gap"]
  config.evals.names = ("teacher_gapp",)
  with pytest.raises(ConfigError, match="'teacher_gapp'.*teacher_gap"):
    evaluators.due(config, 1, final=True, task=task)
  task.evaluators = lambda: {"knn": None}
  with pytest.raises(ConfigError, match="reuse built-in names"):
    evaluators.registry(task)


def test_toy_task_resumes_bit_exactly_on_8_devices(tmp_path):
  script = RESUME_SCRIPT.format(tests=os.path.join(ROOT, "tests"))
  env = xla_env(8)
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "w")],
                        env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK" in proc.stdout
