"""How much the pooled features of a zoo encoder vary across images: the
diagnosis of the mask-token encoders' weak low-label fine-tunes.

For each finished run (seed 0) it pools the encoder's features of the first
512 test images, trained and at the run's random init, and prints per
feature dimension the mean absolute mean and the mean standard deviation
across images, and their ratio. The linear probe standardizes each
dimension before fitting, so a small spread costs it nothing; the low-label
fine-tune puts a zero-initialized linear head on the raw features, so with
a spread ~30x below the common level its head learns slowly, whatever the
rates.

  python experiments/mim_zoo/feature_spread.py --workdir workdirs/mim_zoo/runs --dataset mnist5k --methods mae,simmim,maskfeat,cropmae
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import run as zoo  # pylint: disable=g-import-not-at-top,wrong-import-position

from maskmodel import sharding, train  # pylint: disable=g-import-not-at-top,wrong-import-position
from maskmodel.data import pipeline as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from maskmodel.tasks import get_task  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_IMAGES = 512


def saved_state(folder, state):
  """The newest checkpoint's params and task state in `folder`, shaped as
  `state`'s. The task state matters where features come from a teacher
  (I-JEPA's and DMT-JEPA's EMA encoder); its frozen part (SALT's teacher,
  CCViT's codebook) is not in the step's files, and is the one `state` was
  built with, as when the run started.
  Runs written before the ViT's qkv got its explicit head axis store it
  flat ([D, 3 H Dh]); the reshape restores the same values."""
  mngr = ocp.CheckpointManager(folder, item_handlers={
      "state": ocp.StandardCheckpointHandler(),
      "data": ocp.JsonCheckpointHandler()})
  step = max(mngr.all_steps())
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                          mngr.item_metadata(step)["state"].tree)
  saved = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))["state"]
  like = lambda new, old: jax.tree.map(
      lambda n, o: jnp.asarray(np.asarray(o).reshape(n.shape), n.dtype),
      new, old)
  task_state = state["task_state"]
  if isinstance(task_state, dict):
    saved_task = saved.get("task_state") or {}
    task_state = {k: v if k == "frozen" or k not in saved_task
                  else like(v, saved_task[k]) for k, v in task_state.items()}
  return like(state["params"], saved["params"]), task_state


def spread(features):
  level = np.abs(features.mean(0)).mean()
  std = features.std(0).mean()
  return level, std, std / level


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="the zoo's runs folder")
  p.add_argument("--dataset", default="mnist5k")
  p.add_argument("--methods", default="mae,simmim,maskfeat,cropmae")
  a = p.parse_args()
  print("| encoder | weights | mean abs level | mean std across images | ratio |")
  print("|---|---|---|---|---|")
  for variant in a.methods.split(","):
    folder = (pathlib.Path(a.workdir) / a.dataset / variant / "seed0" /
              "checkpoints").resolve()
    if not folder.is_dir():
      sys.exit(f"error: no finished run at {folder}; run the zoo first.")
    config = zoo.run_config(variant, a.dataset, 0, 500)
    mesh = sharding.make_mesh(mesh_config=config.get("mesh"))
    with jax.set_mesh(mesh):
      task = get_task(config)
      train_src, test_src = train.sources(config)
      ds = data_lib.train_dataset(train_src, batch_size=zoo.BATCH, seed=0,
                                  preprocess=functools.partial(
                                      task.preprocess, train=True))
      state, _, _ = train.initial_state(config, task, ds[0], mesh)
      images = np.stack([task.preprocess(test_src[i], None, False)["image"]
                         for i in range(NUM_IMAGES)])
      features = jax.jit(task.features)
      for which, (params, task_state) in (
          ("trained", saved_state(folder, state)),
          ("random init", (state["params"], state["task_state"]))):
        f = np.asarray(features(task.eval_params(params, task_state),
                                task_state, images))
        level, std, ratio = spread(f)
        print(f"| {variant} | {which} | {level:.3f} | {std:.3f} | {ratio:.3f} |",
              flush=True)


if __name__ == "__main__":
  main()
