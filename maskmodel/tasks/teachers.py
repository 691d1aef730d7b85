"""Teachers that no gradient reaches: EMA teachers and frozen teachers.

EMA teachers: a slow copy of (part of) the student, kept in the task
state, updated after each optimizer step and never by a gradient.

The teacher lives in the task state (never in the params), so the optimizer
neither updates it nor keeps moments for it, and the loop's `value_and_grad`
over the params cannot reach it. Its leaves have the paths and shapes of the
student's (`{"encoder": ...}` mirrors `params["encoder"]`), so the
partitioner gives them the same shardings (`partitioning.mirror_specs`).

Momentum schedules, as functions of the optimizer step `step` (0 for the
first update):
- `linear_momentum`: I-JEPA's `momentum_scheduler` (facebookresearch/ijepa
  `src/train.py`): start + step (end - start) / total_steps.
- `cosine_momentum`: BYOL/DINO's cosine (LUT's `cosine_scheduler`).

Frozen teachers (SALT's, `maskmodel.tasks.salt`): an encoder trained by an
earlier run, read from that run's workdir by `load_frozen_teacher` in the
task's `load_pretrained` and kept under `task_state["frozen"]["teacher"]`.
The loop checkpoints that subtree once per run, into `frozen/` beside the
steps (`maskmodel.checkpoint`), and a resume reads it back from there, so the
earlier run's workdir is needed only once. It is not in the params, so the
optimizer never sees it, and the task reads it through `frozen` (a stop
gradient), so no gradient flows into it even when one is taken with respect
to the task state. Its leaves are sharded by the partitioner as the task
state is (`partitioning.mirror_specs`): a teacher of the student's
architecture gets exactly the student's shardings; leaves of a teacher of
another size, which no param mirrors, are replicated.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskmodel import checkpoint
from maskmodel.config import ConfigError


def ema_update(teacher, student, momentum):
  """teacher <- m * teacher + (1 - m) * student, leaf by leaf (the
  `param_k.mul_(m).add_((1 - m) * param_q)` of I-JEPA, MoCo, BYOL, DINO).
  `student` is read without gradient."""
  student = jax.lax.stop_gradient(student)
  return jax.tree.map(lambda t, s: momentum * t + (1 - momentum) * s,
                      teacher, student)


def linear_momentum(step, total_steps: int, start: float = 0.996,
                    end: float = 1.0):
  """I-JEPA's momentum at optimizer step `step`: the i-th value of the
  official generator `ema[0] + i * (ema[1] - ema[0]) / (ipe * num_epochs *
  ipe_scale)`, i = step, with total_steps = ipe * num_epochs * ipe_scale
  (every released config has ipe_scale 1.0). `start` at the first update;
  the last update of a run (step total_steps - 1) uses end - (end - start) /
  total_steps, and `end` is reached at step total_steps."""
  step = jnp.asarray(step, jnp.float32)
  return start + step * ((end - start) / total_steps)


def cosine_momentum(step, total_steps: int, start: float):
  """start + (1 - start) (1 - cos(pi step / total)) / 2: `cosine_scheduler
  (start, 1, epochs, niter_per_ep)` (naver-ai/lut `util/augs.py`, from
  DINO) at iteration `step`; 1 at `total_steps`."""
  return 1 + 0.5 * (start - 1) * (1 + jnp.cos(jnp.pi * step / total_steps))


def frozen(teacher):
  """The teacher's params as a computation reads them: with no gradient."""
  return jax.lax.stop_gradient(teacher)


def load_frozen_teacher(workdir, template, option: str = "task.teacher_workdir",
                        fit: str = "task.teacher"):
  """The encoder params of the newest checkpoint in `workdir` (a finished
  run's workdir or its `checkpoints/` folder), checked against `template`
  (the teacher the config builds: arrays or shapes) and cast to its dtypes.

  `option` names the config key that gave `workdir` and `fit` the one that
  sets the teacher's shape, for the one-line errors: an unset `workdir` is
  a `ConfigError`; a missing or unreadable checkpoint, or an encoder of
  other shapes, a `checkpoint.CheckpointError`.
  """
  if not workdir:
    raise ConfigError(f"{option} is not set; pass the workdir of a finished "
                      f"teacher run (--config.{option}=DIR).")
  loaded = checkpoint.load_encoder_params(workdir, option=option)
  diff = checkpoint.shape_mismatch(loaded, template)
  if diff:
    raise checkpoint.CheckpointError(
        f"the encoder in {option}={str(workdir)!r} does not fit the teacher "
        f"this config builds: {diff}. Set {fit} to the model config of the "
        "run that trained it.")
  return jax.tree.map(lambda t, x: jnp.asarray(x, t.dtype), template, loaded)
