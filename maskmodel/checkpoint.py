"""Orbax checkpoints of the whole run: params, optimizer state, step, RNG and
the data-iterator state.

Orbax writes each step into a temporary folder and renames it when complete,
so a kill mid-save never leaves a half-written step behind the latest good
one. On restore, a step that cannot be read is moved aside (`<step>.corrupt`)
with a warning and the newest readable step is used instead. A readable step
whose arrays differ from the config's (another `model.width`, say) is no
damage: restoring stops with a `CheckpointError` and nothing is moved.

Frozen weights (a frozen teacher, a tokenizer: leaves that never change
after `Task.load_pretrained`) are written once per run, into `frozen/` next
to the steps, and not into every step: each step holds the rest, with None in
their place. A resume reads both, so it never needs the pretraining workdir.

`PreemptionNotice` turns a scheduler's preemption notice (SIGTERM, as sent by
Cloud TPU, GKE and SLURM before they evict a job) into a step at which the
loop saves and stops, so a preempted run loses no steps.

Paths go through `etils.epath` (`maskmodel.paths`): a checkpoint folder may be
local or on cloud storage (`gs://BUCKET/run/checkpoints`).
"""
from __future__ import annotations

import signal
import threading
import warnings

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint._src.serialization import type_handler_registry  # pylint: disable=g-direct-orbax-import

from maskmodel.paths import workdir_path


FROZEN = "frozen"  # the folder of the frozen weights, beside the steps


class CheckpointError(RuntimeError):
  """No readable checkpoint where one was expected, or one that does not fit."""


def _shapes(tree):
  """{"params/encoder/...": shape} of a tree's leaves. Paths are spelled
  plainly, so a namedtuple's field and the dict key orbax stores it under
  read the same; empty nodes (optax's EmptyState, orbax's None) drop out."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
          for path, leaf in flat}


def shape_mismatch(saved, wanted, limit=3):
  """A short account of how the leaves of two trees differ in name or shape,
  or "" if they agree. `saved` is a checkpoint's, `wanted` the config's."""
  saved, wanted, diffs = _shapes(saved), _shapes(wanted), []
  # params first: they name the change (opt_state repeats them twice over).
  for key in sorted(saved.keys() | wanted.keys(),
                    key=lambda k: (not k.startswith("params/"), k)):
    if key not in wanted:
      diffs.append(f"{key} is only in the checkpoint")
    elif key not in saved:
      diffs.append(f"{key} is only in the config")
    elif saved[key] != wanted[key]:
      diffs.append(f"{key} has shape {saved[key]} there but {wanted[key]} in the config")
  more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
  return "; ".join(diffs[:limit]) + more


def split(tree, frozen):
  """(frozen leaves, other leaves) of `tree`, each with None in the other's
  places; `frozen` is a tree of bools with `tree`'s structure."""
  return (jax.tree.map(lambda f, x: x if f else None, frozen, tree),
          jax.tree.map(lambda f, x: None if f else x, frozen, tree))


def fill(tree, other):
  """`tree` with each None leaf taken from `other`: undoes `split`."""
  return jax.tree.map(lambda a, b: b if a is None else a, tree, other,
                      is_leaf=lambda x: x is None)


def _single_process_array_handler():
  """Orbax's `jax.Array` handler without replica-parallel saving, registered
  once when the run has one process.

  Replica-parallel saving splits each replicated array into one slice per
  replica so that many hosts share the writing. With one process every
  replica is local, so the split only adds an eagerly dispatched slice per
  device and array: a third of a small model's save time on 8 devices.
  Several processes keep orbax's default. The on-disk format is the same.
  """
  if jax.process_count() != 1:
    return
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  if not getattr(handler, "_use_replica_parallel", False):
    return
  # `register_type_handler` would log a warning for the override, on every
  # run's stderr; the registry itself can take it quietly.
  type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
      jax.Array,
      ocp.type_handlers.ArrayHandler(
          use_replica_parallel=False,
          # The default handler's store (typed PRNG keys' metadata).
          array_metadata_store=handler._array_metadata_store),  # pylint: disable=protected-access
      override=True, ignore_warnings=True)


class Checkpointer:
  """Saves and restores `(train_state, data_state)` under `directory`.

  `frozen`, a tree of bools with the train state's structure, marks the
  leaves that are saved once into `frozen/` rather than at every step.
  """

  def __init__(self, directory, max_to_keep: int = 3, frozen=None):
    self.directory = workdir_path(directory)
    self.frozen_dir = self.directory / FROZEN
    self._frozen = frozen if frozen is not None and any(jax.tree.leaves(frozen)) else None
    self._frozen_saved = False
    _single_process_array_handler()
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        # Named handlers let `item_metadata` read a step's shapes unrestored.
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()})

  def save(self, step: int, train_state, data_state: dict):
    if self._frozen is not None:
      frozen, train_state = split(train_state, self._frozen)
      if not self._frozen_saved:  # Once per run; a resumed run has them.
        writer = ocp.StandardCheckpointer()
        writer.save(self.frozen_dir, frozen, force=True)
        writer.wait_until_finished()
        self._frozen_saved = True
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state),
        data=ocp.args.JsonSave(data_state)))

  def wait(self):
    self._mngr.wait_until_finished()

  def restore_latest(self, target):
    """Returns `(train_state, data_state)` from the newest readable step, or None.

    `target` is a train state (arrays or `jax.ShapeDtypeStruct`s with
    shardings) giving the structure, dtypes and shardings to restore into.
    Raises `CheckpointError` if the newest readable step holds other arrays
    or shapes than `target`: that run had another config.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    frozen = None
    if self._frozen is not None:
      frozen, abstract = split(abstract, self._frozen)
    steps = sorted(self._mngr.all_steps(), reverse=True)
    for step in steps:
      try:
        saved = self._mngr.item_metadata(step)["state"].tree
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      diff = shape_mismatch(saved, abstract)
      if diff:
        raise CheckpointError(
            f"checkpoint step {step} in {self.directory} does not fit this "
            f"config: {diff}. Resume with the config that wrote it, or pass a "
            "new --workdir to start a new run.")
      try:
        out = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        # Its shapes fit, so a failure to read means damaged files.
        self._set_aside(step, e)
        continue
      state = out["state"]
      if frozen is not None:
        state = fill(state, self._restore_frozen(step, frozen))
        self._frozen_saved = True
      return state, out["data"]
    return None

  def _restore_frozen(self, step, abstract):
    """The frozen leaves that step `step` needs, from `frozen/`."""
    reader = ocp.StandardCheckpointer()
    fix = ("Resume with the config that wrote it, or pass a new --workdir to "
           "start a new run.")
    try:
      saved = reader.metadata(self.frozen_dir).item_metadata.tree
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} needs the frozen "
          f"weights in {self.frozen_dir}, which cannot be read "
          f"({type(e).__name__}). {fix}") from None
    diff = shape_mismatch(saved, abstract)
    if diff:
      raise CheckpointError(f"the frozen weights in {self.frozen_dir} do not "
                            f"fit this config: {diff}. {fix}")
    return reader.restore(self.frozen_dir, abstract)

  def _set_aside(self, step, error):
    path = self.directory / str(step)
    aside = self.directory / f"{step}.corrupt"
    warnings.warn(f"checkpoint step {step} in {self.directory} is unreadable "
                  f"({type(error).__name__}: {str(error)[:200]}); moved it to "
                  f"{aside} and trying the previous step.", stacklevel=2)
    if jax.process_index() == 0 and path.exists():
      path.replace(aside)
    self._mngr.reload()


class PreemptionNotice:
  """`with PreemptionNotice() as notice:` ... `notice.reached(step)`.

  `reached(step)` is True once a preemption notice has arrived and every
  process is at `step`, the step to checkpoint and stop at:
  - one process: SIGTERM sets a flag (the handler is installed from the main
    thread only, and the previous one is restored on exit);
  - several processes: JAX's preemption sync manager (started by
    `jax.distributed.initialize`) catches SIGTERM on any host and agrees on a
    step all hosts reach (`multihost_utils.reached_preemption_sync_point`),
    so `reached` must be called at every step on every host.
  """

  def __init__(self):
    self._noticed = False
    self._previous = None

  def __enter__(self):
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._noticed = True

  def reached(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self._noticed
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # the preemption service is disabled
      return False


def _on_this_host(metadata):
  """Restore targets for a checkpoint's array metadata, on this process's
  first device, whatever mesh wrote them (a pod's run read by a fine-tune
  on one host)."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata,
      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def load_encoder_params(workdir, option: str = "task.init_from"):
  """The pretrained encoder params of the newest readable checkpoint in `workdir`.

  Accepts a run's workdir or its `checkpoints/` folder. MAE-style params keep
  the encoder under "encoder"; classifier params are the encoder (+ head).
  `option` is the config key that named `workdir`, for the errors.
  """
  params = load_params(workdir, option)
  return params["encoder"] if "patch_embed" not in params else params


def load_params(workdir, option: str = "task.init_from"):
  """All the params of the newest readable checkpoint in `workdir` (a run's
  workdir or its `checkpoints/` folder), frozen leaves included; `option`
  is the config key that named `workdir`, for the errors."""
  directory = workdir_path(workdir)
  if (directory / "checkpoints").is_dir():
    directory = directory / "checkpoints"
  if not directory.is_dir():
    raise CheckpointError(f"no checkpoint folder at {workdir!r}; set "
                          f"{option} to the workdir of a finished run.")
  mngr = ocp.CheckpointManager(
      directory, item_handlers={"state": ocp.StandardCheckpointHandler()})
  errors = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      abstract = _on_this_host(mngr.item_metadata(step)["state"].tree)
      state = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f"step {step}: {type(e).__name__}")
      continue
    frozen_dir = directory / FROZEN
    if frozen_dir.is_dir():
      reader = ocp.StandardCheckpointer()
      state = fill(state, reader.restore(frozen_dir, _on_this_host(
          reader.metadata(frozen_dir).item_metadata.tree)))
    return state["params"]
  raise CheckpointError(
      f"no readable checkpoint in {str(directory)!r} ({'; '.join(errors) or 'empty'}); "
      f"point {option} at a finished run's workdir.")
