"""THE train/eval loop. Tasks plug in through `init` and `loss`; the loop owns
the mesh, the input pipeline, the optimizer, the jitted step, evals,
checkpoints and metrics.

The workdir may be local or on cloud storage (`gs://BUCKET/run`): every file
goes through `etils.epath` (`maskmodel.paths`).

Divergence guard: the first step whose loss or gradient norm is NaN or Inf is
tracked on device (one small asynchronous op per step, no host sync) and
checked where the loop waits for the device anyway: at log steps, and before
evals and checkpoints (which also check that the params are finite). A
diverged run stops with `Diverged`, naming the step, and never saves the
bad state: the last checkpoint on disk is the last good one.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maskmodel import checkpoint, config as config_lib, evaluators, optim
from maskmodel import partitioning, sharding
from maskmodel import data as data_lib
from maskmodel import report as report_lib
from maskmodel.metrics import MetricWriter
from maskmodel.paths import workdir_path
from maskmodel.tasks import get_task


class Preempted(Exception):
  """A preemption notice stopped the run after checkpointing its step."""


class Diverged(Exception):
  """The loss or gradient norm became NaN or Inf; the bad state was not saved."""


@jax.jit
def _first_nonfinite(first, step, loss, grad_norm):
  """`step` if it is the first whose loss or gradient norm is not finite."""
  bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
  return jnp.where((first == 0) & bad, step, first)


@jax.jit
def _all_finite(tree):
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else True


def diverged_message(config, step, last_saved):
  """One line: where it diverged, what was kept, and what to try."""
  kept = (f"the last checkpoint (step {last_saved}) is untouched"
          if last_saved else "no checkpoint was written")
  o = config.optimizer
  fixes = [f"lower optimizer.lr (now {o.lr:g})",
           f"lower optimizer.grad_clip (now {o.grad_clip:g})" if o.grad_clip
           else "clip gradients (optimizer.grad_clip=1.0)"]
  if config.model.get("dtype", "float32") != "float32":
    fixes.append(f"train in float32 (model.dtype=float32, now {config.model.dtype})")
  return (f"training diverged: the loss or gradient norm is NaN or Inf at step "
          f"{step}; stopped without saving it, {kept}. Try to "
          + ", ".join(fixes[:-1]) + f" or {fixes[-1]}.")


def log(msg):
  if jax.process_index() == 0:
    print(msg, flush=True)


def sources(config):
  d = config.data
  kw = dict(data_dir=d.data_dir, image_size=d.image_size, channels=d.channels,
            num_classes=d.num_classes)
  # The sequence corpora's options, where the config sets them.
  kw.update({k: d[k] for k in ("seq_len", "tokenizer", "label") if k in d})
  return (data_lib.get_source(d.name, d.train_split, limit=d.train_examples, **kw),
          data_lib.get_source(d.name, d.test_split, limit=d.test_examples, **kw))


def train_step(task, tx, schedule, state, batch):
  """One optimizer step; the per-step RNG is fold_in(rng, step). The task's
  `after_update` sees the new params (`maskmodel/tasks/base.py`). Under a
  mesh (`jax.set_mesh`) the batch stays split over ("data", "fsdp")."""
  step = state["step"]
  rng = jax.random.fold_in(state["rng"], step)
  batch = sharding.constrain_batch(batch)
  grad_fn = jax.value_and_grad(task.loss, has_aux=True)
  (_, (metrics, task_state)), grads = grad_fn(state["params"], state["task_state"],
                                              batch, rng, step)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  task_state = task.after_update(params, task_state, step)
  # The barrier gives the norm its own g * g. Shared with AdamW's second
  # moment (no gradient clip), XLA's CPU backend wrote that square out in
  # full and read it back (the ViT-B/16 MAE step in benchmarks/README.md).
  grad_norm = optax.tree.norm(jax.lax.optimization_barrier(grads))
  metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state["step"]))
  new_state = dict(state, step=state["step"] + 1, params=params,
                   opt_state=opt_state, task_state=task_state)
  return new_state, metrics


def _own_buffers(params, task_state):
  """Task state that reuses a params array (an EMA teacher that starts as
  the student) gets its own copy: the step donates params and state, and one
  buffer cannot be donated twice."""
  ids = {id(x) for x in jax.tree.leaves(params)}
  return jax.tree.map(lambda x: jnp.copy(x) if id(x) in ids else x,
                      task_state)


def frozen_leaves(task, state):
  """True for each train-state leaf that never changes after
  `Task.load_pretrained`: params the task freezes (`param_labels` 0.0) and
  the task state under "frozen". The checkpointer writes them once."""
  mask = jax.tree.map(lambda _: False, state)
  labels = task.param_labels(state["params"])
  if labels is not None:
    mask["params"] = jax.tree.map(
        lambda s, sub: jax.tree.map(lambda _: s == 0.0, sub),
        labels, state["params"])
  task_state = state["task_state"]
  if isinstance(task_state, dict) and "frozen" in task_state:
    mask["task_state"] = dict(mask["task_state"], frozen=jax.tree.map(
        lambda _: True, task_state["frozen"]))
  return mask


def _state_init(config, task, example_batch):
  """`(init, tx, schedule)`: `init(rng, batch)` makes the fresh train state. Only
  shapes are traced here (`jax.eval_shape`); nothing is computed."""
  # The key is made inside: under a mesh of compile-only devices
  # (`abstract_state`) nothing may run eagerly.
  abstract_params, _ = jax.eval_shape(
      lambda batch: task.init(jax.random.PRNGKey(config.seed), batch),
      example_batch)
  tx, schedule = optim.make_optimizer(config, abstract_params,
                                      task.param_labels(abstract_params))

  def init(rng, batch):
    init_rng, train_rng = jax.random.split(rng)
    params, task_state = task.init(init_rng, batch)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": tx.init(params), "task_state": task_state,
            "rng": train_rng}
  return init, tx, schedule


def initial_state(config, task, example_batch, mesh=None):
  """Fresh params, task state and optimizer; no pretrained weights yet
  (`Task.load_pretrained` runs only when the run does not resume).

  With a `mesh`, the state is created sharded (`state_shardings`): one jit
  whose outputs land on their shards, so no device ever holds the whole
  model. Returns `(state, tx, schedule)`.
  """
  rng = jax.random.PRNGKey(config.seed)
  init, tx, schedule = _state_init(config, task, example_batch)
  init = functools.partial(init, batch=example_batch)
  # Jitted: run op by op, a model's init compiles each of its ops apart.
  out_shardings = None if mesh is None else state_shardings(
      config, jax.eval_shape(init, rng), mesh)
  state = jax.jit(init, out_shardings=out_shardings)(rng)
  state["task_state"] = _own_buffers(state["params"], state["task_state"])
  return state, tx, schedule


def abstract_state(config, task, example_batch, mesh):
  """What `initial_state` would make on `mesh`, as ShapeDtypeStructs that
  carry their shardings; no array is created, so `mesh` may be made of
  compile-only devices (`maskmodel.planner`). Returns `(state, tx,
  schedule)`."""
  init, tx, schedule = _state_init(config, task, example_batch)
  shapes = jax.eval_shape(
      lambda batch: init(jax.random.PRNGKey(config.seed), batch), example_batch)
  shardings = state_shardings(config, shapes, mesh)
  state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes, shardings)
  return state, tx, schedule


def jit_train_step(task, tx, schedule, state_sharding, mesh):
  """`train_step` jitted as the loop runs it: the state keeps
  `state_sharding` and is donated, the batch is split over the batch axes,
  the metrics are replicated. The loop and `maskmodel.planner` both use it."""
  return jax.jit(functools.partial(train_step, task, tx, schedule),
                 in_shardings=(state_sharding, sharding.batch_sharded(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=(0,))


def state_shardings(config, state, mesh):
  """NamedShardings for a train state (arrays or shapes) on `mesh`, by
  `config.partition_rules` (`maskmodel.partitioning`); a rule that does
  not fit stops with a `ConfigError`."""
  rules, given = partitioning.rules_from_config(config)
  return partitioning.to_shardings(
      partitioning.state_specs(state, mesh, rules, check_unused=given), mesh)


def _fmt_time(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def train_and_evaluate(config, workdir):
  """Runs (or resumes) the run described by `config` in `workdir`.

  Returns {"final": eval metrics, "random_init": the feature evals of the
  initial params (when `evals.compare_random_init`), "pixels": the feature
  evals on raw pixels (when `evals.compare_pixels`), "state": train state}.
  On a preemption notice (SIGTERM) it checkpoints the step it is at and
  raises `Preempted`. A NaN or Inf loss or gradient norm raises `Diverged`
  and leaves the last good checkpoint as the newest. `workdir` may be local
  or a `gs://` URI.
  """
  mesh = sharding.make_mesh(mesh_config=config.get("mesh"))
  # Set as the ambient mesh so that Pallas kernels run per device on their
  # rows of the batch (`maskmodel.kernels.dispatch.per_device_batch`).
  with jax.set_mesh(mesh):
    return _train_and_evaluate(config, workdir, mesh)


def _train_and_evaluate(config, workdir, mesh):
  workdir = workdir_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config_lib.validate(config, mesh.size, sharding.data_parallel_size(mesh))
  task = get_task(config)
  train_src, test_src = sources(config)

  local_batch = config.batch_size // jax.process_count()
  ds = data_lib.train_dataset(train_src, batch_size=local_batch, seed=config.seed,
                              preprocess=functools.partial(task.preprocess,
                                                           train=True))
  example = ds[0]
  repl, data_sharding = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state, tx, schedule = initial_state(config, task, example, mesh)
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  # A copy: the step donates `state`, and the report compares against init.
  init_params = (jax.tree.map(jnp.copy, task.eval_params(
      state["params"], state["task_state"]))
                 if config.evals.compare_random_init else None)

  ckpt = checkpoint.Checkpointer(workdir / "checkpoints",
                                 max_to_keep=config.checkpoint_keep,
                                 frozen=frozen_leaves(task, state))
  data_iter = data_lib.train_iterator(ds)
  writer = MetricWriter(workdir)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, data_state = restored
    data_iter.set_state(data_state)
    writer.truncate_after(int(state["step"]))
    log(f"resumed from step {int(state['step'])} in {workdir}")
  else:  # Pretrained weights only for a fresh run: a resume has its own.
    params, task_state = task.load_pretrained(state["params"], state["task_state"])
    state = jax.device_put(dict(state, params=params,
                                task_state=_own_buffers(params, task_state)),
                           state_sh)
  start = int(state["step"])

  step_fn = jit_train_step(task, tx, schedule, state_sh, mesh)
  ctx = evaluators.Context(config, task, mesh, train_src, test_src,
                           data_lib.image_spec(config.data), workdir)
  total = config.total_steps
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  log(f"task={config.task.name} data={config.data.name} params={n_params / 1e6:.2f}M "
      f"devices={mesh.size} mesh={dict(mesh.shape)} batch={config.batch_size} steps={start}->{total}")

  first_bad = jax.device_put(np.int32(0), repl)  # 0: no step diverged yet
  last_saved = start if restored is not None else None

  def stop_if_diverged(step, params=None):
    bad = int(first_bad)
    if not bad and params is not None and not bool(_all_finite(params)):
      bad = step  # this step's update made the params NaN or Inf
    if bad:
      ckpt.wait()  # the last good step's save finishes; nothing newer starts
      writer.close()
      raise Diverged(diverged_message(config, bad, last_saved))

  t_last, s_last, t_start = time.time(), start, time.time()
  with checkpoint.PreemptionNotice() as preemption:
    for step in range(start + 1, total + 1):
      batch = sharding.shard_batch(next(data_iter), data_sharding)
      # The batch is placed explicitly above; the step itself moves nothing
      # between host and devices, and an implicit transfer (a host array
      # reaching the step) is an error rather than a silent copy per step.
      with jax.transfer_guard("disallow"):
        state, metrics = step_fn(state, batch)
      first_bad = _first_nonfinite(first_bad, step, metrics["loss"],
                                   metrics["grad_norm"])
      if step % config.log_every == 0 or step == total:
        metrics = jax.device_get(metrics)
        stop_if_diverged(step)
        now = time.time()
        rate = (step - s_last) / max(now - t_last, 1e-9)
        t_last, s_last = now, step
        writer.write(step, {f"train/{k}": v for k, v in metrics.items()})
        log(f"step {step}/{total}  loss {float(metrics['loss']):.4f}  "
            f"{rate:.1f} steps/s  ETA {_fmt_time((total - step) / max(rate, 1e-9))}")
      names = evaluators.due(config, step, final=False, task=task) if step < total else []
      if names:
        stop_if_diverged(step)
        results = evaluators.run(ctx, names, task.eval_params(
            state["params"], state["task_state"]), state["task_state"])
        writer.write(step, {f"eval/{k}": v for k, v in results.items()})
        log(f"eval @ {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in results.items()))
      preempted = step < total and preemption.reached(step)
      if (preempted or step == total or
          (config.checkpoint_every and step % config.checkpoint_every == 0)):
        stop_if_diverged(step, state["params"])
        ckpt.save(step, state, data_iter.get_state())
        last_saved = step
      if preempted:
        ckpt.wait()
        writer.close()
        raise Preempted(f"preempted: saved a checkpoint at step {step} of "
                        f"{total}; rerun the same command to resume.")
  ckpt.wait()
  train_seconds = time.time() - t_start

  final_names = evaluators.due(config, total, final=True, task=task)
  final = evaluators.run(ctx, final_names, task.eval_params(
      state["params"], state["task_state"]), state["task_state"])
  log("final: " + ", ".join(f"{k}={v:.4f}" for k, v in final.items()))
  # The feature evals again on what the trained encoder has to beat: the same
  # encoder at init, and the raw pixels with no encoder at all.
  feature_names = [n for n in final_names if n in evaluators.FEATURE_EVALUATORS]
  baselines = {}
  if feature_names and config.evals.compare_random_init:
    baselines["random_init"] = evaluators.run(ctx, feature_names, init_params,
                                              state["task_state"])
  if feature_names and config.evals.compare_pixels:
    baselines["pixels"] = evaluators.run_on_pixels(ctx, feature_names)
  for name, values in baselines.items():
    log(f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
  writer.write(total, {**{f"eval/{k}": v for k, v in final.items()},
                       **{f"{name}/{k}": v for name, values in baselines.items()
                          for k, v in values.items()}})
  writer.close()
  if jax.process_index() == 0:
    report_lib.write(workdir, config, final, baselines,
                     train_seconds=train_seconds, steps_run=total - start)
  return {"final": final, "random_init": baselines.get("random_init", {}),
          "pixels": baselines.get("pixels", {}), "state": state}
