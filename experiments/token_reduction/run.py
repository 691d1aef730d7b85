"""Token reduction without retraining: accuracy, GFLOPs and img/s of every
reducer in `maskmodel.tokens` at matched keep rates, on the embedded MNIST
sample (`--dataset mnist5k`, the default) or on Fashion-MNIST
(`--dataset fashion_mnist`: the data settings of
`configs/mae/fashion_mnist_vit_tiny.py`, on the first 10,000 training and
2,000 test images by default, `--train-examples` / `--test-examples`).

1. Trains the tiny ViT classifier of `configs/classify/mnist_vit_tiny.py`
   from scratch through the project's loop (`train.train_and_evaluate`),
   once per seed (`--seeds`); a finished workdir is reused, so a rerun only
   re-measures.
2. Applies every reducer to the same trained params at ToMe's constant
   schedules r = 4, 8, 12 (tokens removed per block, capped at half of the
   non-class tokens as in ToMe). The resulting tokens-kept list is shared by
   all methods, so they run at identical token counts and FLOPs.
3. Records test accuracy (the 1,000 held-out digits, or the Fashion-MNIST
   test images; mean and spread over the seeds), analytic GFLOPs per image
   (`maskmodel.tokens.vit_flops`) and measured img/s (seed 0's params,
   jitted, warm, median of repeats) into results.md, results.json and
   tradeoff.png (for Fashion-MNIST results_fashion_mnist.md and so on, so
   both datasets are recorded side by side; results.json's meta names the
   dataset). Each method runs with
   proportional attention as its official code has it off the shelf (on for
   ToMe and ATC, off for the others); methods named in `--flip-prop-attn`
   also run with it the other way.
4. With `--trained-with METHOD:R,...`, also trains one classifier per seed
   with that reducer in its blocks (the same recipe otherwise) and reports
   its accuracy under the same reduction next to the off-the-shelf one
   (trained_with.md, and "trained_with" in results.json).

  python experiments/token_reduction/run.py --workdir workdirs/token_reduction \
      --trained-with tome:12,topk:12
  python experiments/token_reduction/run.py --workdir workdirs/token_reduction \
      --trained-with tome:12,topk:12 --dataset fashion_mnist

(Fashion-MNIST's classifiers train under WORKDIR/fashion_mnist, so the two
datasets never reuse each other's runs.)

Hardware / time: 2 CPU cores, otherwise idle: 19 minutes (7 training the
three classifiers, 3 evaluating and timing, 9 training the six of
`--trained-with`); 10 to 11 minutes without that flag.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import numpy as np

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

from maskmodel import data as data_lib  # pylint: disable=g-import-not-at-top
from maskmodel import tokens, train  # pylint: disable=g-import-not-at-top
from maskmodel.experiments import seed_list  # pylint: disable=g-import-not-at-top
from maskmodel.models import build  # pylint: disable=g-import-not-at-top

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = ROOT / "configs" / "classify" / "mnist_vit_tiny.py"
FASHION_CONFIG = ROOT / "configs" / "mae" / "fashion_mnist_vit_tiny.py"
METHODS = tuple(sorted(tokens.REDUCERS))
R_VALUES = (4, 8, 12)
# dataset -> (title, what the test images are, default train / test
# examples, output-file suffix)
DATASETS = {
    "mnist5k": ("the embedded MNIST sample", "held-out digits", (0, 0), ""),
    "fashion_mnist": ("Fashion-MNIST", "Fashion-MNIST test images",
                      (10_000, 2_000), "_fashion_mnist"),
}
# The data settings Fashion-MNIST takes from FASHION_CONFIG.
FASHION_DATA_KEYS = ("name", "image_size", "channels", "num_classes", "mean",
                     "std", "crop_scale", "flip")


def _load_config(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def set_dataset(config, dataset, train_examples=None, test_examples=None):
  """Points `config.data` at `dataset`: mnist5k as the classifier config has
  it; fashion_mnist with the data settings of
  `configs/mae/fashion_mnist_vit_tiny.py` (name, normalization mean 0.2860 /
  std 0.3530, crop and flip). `data.train_examples` / `data.test_examples`
  keep the first N records of each split (0 = all; None = the dataset's
  default above)."""
  if dataset not in DATASETS:
    raise ValueError(f"dataset {dataset!r} is unknown; use one of "
                     f"{sorted(DATASETS)}.")
  if dataset == "fashion_mnist":
    fashion = _load_config(FASHION_CONFIG).data
    for key in FASHION_DATA_KEYS:
      config.data[key] = fashion[key]
  default_train, default_test = DATASETS[dataset][2]
  config.data.train_examples = (default_train if train_examples is None
                                else train_examples)
  config.data.test_examples = (default_test if test_examples is None
                               else test_examples)
  return config


def classifier_config(steps, dataset="mnist5k", train_examples=None,
                      test_examples=None):
  """`configs/classify/mnist_vit_tiny.py`, trained from scratch, pooled on
  the class token: top-k, EViT and GTP rank tokens by the [CLS] row of the
  attention, which carries no signal in a model trained with average
  pooling (there the [CLS] output feeds no loss)."""
  c = set_dataset(_load_config(CONFIG), dataset, train_examples,
                  test_examples)
  c.task.init_from = ""
  c.optimizer.layer_decay = 1.0
  c.model.pool = "cls"
  c.total_steps = steps
  c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, steps // 10)
  c.checkpoint_every = 0
  c.evals.names = ("accuracy",)
  c.evals.accuracy.every = 0
  return c


def train_classifiers(seeds, steps, workdir, model_config=None,
                      dataset="mnist5k", train_examples=None,
                      test_examples=None):
  """Trains (or reloads) one classifier per seed; returns their params and
  the config of the last one."""
  params = []
  for seed in seeds:
    config = classifier_config(steps, dataset, train_examples, test_examples)
    config.seed = seed
    if model_config is not None:
      config.model = model_config
    t0 = time.time()
    result = train.train_and_evaluate(config, os.path.join(workdir, f"seed{seed}"))
    print(f"{workdir} seed {seed}: trained / loaded in {time.time() - t0:.0f}s: "
          f"{result['final']}", flush=True)
    params.append(jax.device_get(result["state"]["params"]))
  return params, config


def test_set(config):
  """The test images and labels, and the number of training images."""
  train_src, test_src = train.sources(config)
  images, labels = [], []
  for batch, n in data_lib.eval_batches(test_src, batch_size=500,
                                        spec=data_lib.image_spec(config.data)):
    images.append(batch["image"][:n])
    labels.append(batch["label"][:n])
  return np.concatenate(images), np.concatenate(labels), len(train_src)


def schedule(keep):
  return ("keep", list(keep)) if keep else 0


def reduced_model(config, method, keep, prop_attn=None, off_the_shelf=True):
  """The classifier with `method` at `keep`; prop_attn None is the method's
  official default for a model evaluated off the shelf (or trained with the
  reduction, `off_the_shelf=False`)."""
  m = build.with_token_reduction(config.model, method, schedule(keep),
                                 prop_attn=prop_attn,
                                 off_the_shelf=off_the_shelf)
  return build.vit(m, num_classes=config.data.num_classes,
                   num_tokens=build.num_tokens(config))


def official_prop_attn(method, off_the_shelf=True):
  if method == "none":
    return False
  return tokens.REDUCERS[method].default_prop_attn(off_the_shelf)


def predictor(model):
  """Jitted `(params, images) -> predicted labels`."""
  return jax.jit(lambda p, x: model.apply({"params": p}, x)["logits"]
                 .argmax(-1))


def accuracy(predict, params, images, labels, batch):
  n = len(images) // batch * batch
  correct = 0
  for start in range(0, n, batch):
    pred = np.asarray(predict(params, images[start:start + batch]))
    correct += int((pred == labels[start:start + batch]).sum())
  return correct / n


def throughput(predicts, params, x, repeats):
  """img/s of each jitted, warm predictor on batch `x`: median of `repeats`.

  The predictors are timed in turn, round-robin, so a change in the
  machine's load hits all of them alike.
  """
  for predict in predicts:
    predict(params, x).block_until_ready()
  rates = [[] for _ in predicts]
  for _ in range(repeats):
    for i, predict in enumerate(predicts):
      t0 = time.perf_counter()
      predict(params, x).block_until_ready()
      rates[i].append(len(x) / (time.perf_counter() - t0))
  return [(statistics.median(r), r) for r in rates]


def gflops(config, keep):
  m = config.model
  return tokens.vit_flops(config.data.image_size, m.patch_size, m.depth,
                          m.width, m.mlp_ratio, m.num_heads,
                          list(keep) if keep else None,
                          in_chans=config.data.channels,
                          num_classes=config.data.num_classes) / 1e9


def label(row):
  if row["method"] == "none" or row["prop_attn"] == official_prop_attn(
      row["method"]):
    return row["method"]
  return row["method"] + (" (prop. attn on)" if row["prop_attn"]
                          else " (prop. attn off)")


def write_table(path, rows, meta):
  base = rows[0]
  seeds = meta["seeds"]
  title, test_images = DATASETS[meta["dataset"]][:2]
  lines = [
      f"# Token reduction on {title}",
      "",
      f"Dataset: `{meta['dataset']}` ({meta['train_images']} training "
      f"images, {meta['test_images']} test images). "
      f"ViT width {meta['width']}, depth {meta['depth']}, {meta['pool']} "
      f"pooling, patch "
      f"{meta['patch_size']} ({meta['num_tokens']} tokens with [CLS]), trained "
      f"{meta['train_steps']} steps from scratch with seeds "
      f"{', '.join(map(str, seeds))}, then reduced at eval time without "
      f"retraining. Accuracy on {meta['test_images']} {test_images}: mean "
      f"over the {len(seeds)} seeds, +- their standard deviation. img/s "
      f"(seed {seeds[0]}'s params): median and best of {meta['repeats']} "
      f"timed batches of {meta['batch']} (jitted, warm, all configurations "
      f"timed in turn each round) on {meta['cpu_count']} CPU cores; the best "
      "is the least disturbed by other processes. r is ToMe's tokens removed "
      "per block; every method keeps the same number of tokens, so GFLOPs "
      "(analytic, matmuls only) match. Proportional attention follows each "
      "method's official code off the shelf (on for ToMe and ATC, off for "
      "the others) unless the row says otherwise.",
      "",
      "| method | r | tokens after each block | GFLOPs | accuracy "
      "| img/s (median) | speed-up | img/s (best) | speed-up (best) |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    best = max(row["img_per_s_runs"])
    lines.append(
        f"| {label(row)} | {row['r']} | "
        f"{'/'.join(map(str, row['keep']))} | {row['gflops']:.4f} | "
        f"{row['accuracy']:.3f} +- {row['accuracy_std']:.3f} | "
        f"{row['img_per_s']:.0f} | "
        f"{row['img_per_s'] / base['img_per_s']:.2f}x | {best:.0f} | "
        f"{best / max(base['img_per_s_runs']):.2f}x |")
  path.write_text("\n".join(lines) + "\n")


def write_trained_with(path, entries, base, meta):
  lines = [
      "# Trained with the reduction, or reduced off the shelf",
      "",
      f"Dataset: `{meta['dataset']}`. The same ViT and recipe "
      f"({meta['train_steps']} steps, seeds "
      f"{', '.join(map(str, meta['seeds']))}), trained with the reducer in "
      "its blocks; accuracy under the same reduction, mean +- std over the "
      "seeds, next to the classifiers trained without it and reduced at "
      f"eval time. Unreduced: {base['accuracy']:.3f} +- "
      f"{base['accuracy_std']:.3f}.",
      "",
      "| method | r | GFLOPs | off the shelf | trained with it |",
      "|---|---|---|---|---|",
  ]
  for e in entries:
    shelf = ("–" if e["off_the_shelf"] is None else
             f"{e['off_the_shelf']:.3f} +- {e['off_the_shelf_std']:.3f}")
    lines.append(f"| {e['method']} | {e['r']} | {e['gflops']:.4f} | {shelf} | "
                 f"{e['accuracy']:.3f} +- {e['accuracy_std']:.3f} |")
  path.write_text("\n".join(lines) + "\n")


def plot(path, rows, dataset="mnist5k"):
  fig = Figure(figsize=(7, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  base = rows[0]
  ax.scatter([base["img_per_s"]], [base["accuracy"]], marker="*", s=160,
             color="black", zorder=3, label="no reduction")
  for name in dict.fromkeys(label(r) for r in rows[1:]):
    pts = [r for r in rows[1:] if label(r) == name]
    ax.plot([p["img_per_s"] for p in pts], [p["accuracy"] for p in pts],
            marker="o", label=name, linestyle="-" if label(pts[0]) ==
            pts[0]["method"] else "--")
    for p in pts:
      ax.annotate(f"r{p['r']}", (p["img_per_s"], p["accuracy"]),
                  fontsize=6, xytext=(2, 2), textcoords="offset points")
  ax.set_xlabel("img/s (median, measured on CPU)")
  ax.set_ylabel("test accuracy (mean over seeds)")
  ax.set_title(f"{DATASETS[dataset][0]}: accuracy vs throughput, same "
               "params, r = tokens removed per block", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, format="png")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default=str(ROOT / "workdirs" /
                                               "token_reduction"),
                      help="one training workdir per seed goes below it")
  parser.add_argument("--out", default=str(HERE),
                      help="where results.{md,json} and tradeoff.png go")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--seeds", type=seed_list, default="0,1,2")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--flip-prop-attn", default="tome,topk",
                      help="methods also run with proportional attention the "
                           "other way than their official default")
  parser.add_argument("--r", default=",".join(map(str, R_VALUES)))
  parser.add_argument("--trained-with", default="",
                      help="METHOD:R,...: also train with that reduction "
                           "in the blocks, e.g. tome:12,topk:12")
  parser.add_argument("--dataset", default="mnist5k", choices=sorted(DATASETS),
                      help="mnist5k (the embedded sample) or fashion_mnist "
                           "(the data settings of configs/mae/"
                           "fashion_mnist_vit_tiny.py); results go to "
                           "separate files")
  parser.add_argument("--train-examples", type=int, default=None,
                      help="first N training images (0 = all; default: "
                           "all for mnist5k, 10000 for fashion_mnist)")
  parser.add_argument("--test-examples", type=int, default=None,
                      help="first N test images (0 = all; default: all for "
                           "mnist5k, 2000 for fashion_mnist)")
  parser.add_argument("--batch", type=int, default=250)
  parser.add_argument("--repeats", type=int, default=21)
  args = parser.parse_args(argv)
  split = lambda text: [x for x in text.split(",") if x]
  methods, seeds = split(args.methods), args.seeds
  unknown = set(methods + split(args.flip_prop_attn)) - set(METHODS)
  if unknown or not seeds:
    parser.error(f"unknown methods {sorted(unknown)} (known: "
                 f"{', '.join(METHODS)})" if unknown else "--seeds is empty")
  r_values = [int(r) for r in split(args.r)]
  trained_with_specs = []
  for spec in split(args.trained_with):
    method, _, r = spec.partition(":")
    if method not in METHODS or not r.isdigit() or int(r) <= 0:
      parser.error(f"--trained-with {spec!r}: expected METHOD:R with R > 0 "
                   f"and METHOD one of {', '.join(METHODS)}")
    trained_with_specs.append((method, int(r)))
  for flag in ("train_examples", "test_examples"):
    if getattr(args, flag) is not None and getattr(args, flag) < 0:
      parser.error(f"--{flag.replace('_', '-')} must be >= 0 (0 = all)")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  suffix = DATASETS[args.dataset][3]
  workdir = (args.workdir if args.dataset == "mnist5k"
             else os.path.join(args.workdir, args.dataset))
  data_args = dict(dataset=args.dataset, train_examples=args.train_examples,
                   test_examples=args.test_examples)

  params, config = train_classifiers(seeds, args.steps, workdir, **data_args)
  images, labels, train_images = test_set(config)
  n0 = build.num_tokens(config)

  runs = [("none", 0, (), False)]
  for r in r_values:
    keep = tuple(tokens.tokens_per_layer(r, config.model.depth, n0))
    runs += [(m, r, keep, official_prop_attn(m)) for m in methods]
    runs += [(m, r, keep, not official_prop_attn(m))
             for m in split(args.flip_prop_attn)]
  rows, predicts = [], []
  for method, r, keep, prop_attn in runs:
    t = time.time()
    predict = predictor(reduced_model(config, method, keep, prop_attn))
    accs = [accuracy(predict, p, images, labels, args.batch) for p in params]
    predicts.append(predict)
    rows.append(dict(method=method, r=r, prop_attn=prop_attn,
                     keep=list(keep) or [n0] * config.model.depth,
                     gflops=gflops(config, keep),
                     accuracy=float(np.mean(accs)),
                     accuracy_std=float(np.std(accs)),
                     accuracy_per_seed=accs))
    print(f"{label(rows[-1]):28s} r={r:2d} keep={rows[-1]['keep']} "
          f"acc={' '.join(f'{a:.3f}' for a in accs)} "
          f"GFLOPs={rows[-1]['gflops']:.4f} ({time.time() - t:.0f}s)",
          flush=True)
  x = jax.device_put(images[:args.batch])
  for row, (rate, rates) in zip(rows, throughput(predicts, params[0], x,
                                                 args.repeats)):
    row.update(img_per_s=rate, img_per_s_runs=rates)
    print(f"{label(row):28s} r={row['r']:2d} {rate:8.0f} img/s", flush=True)

  trained_with = []
  for method, r in trained_with_specs:
    keep = tuple(tokens.tokens_per_layer(r, config.model.depth, n0))
    model_config = build.with_token_reduction(config.model, method,
                                              schedule(keep))
    trained, _ = train_classifiers(seeds, args.steps,
                                   os.path.join(workdir, f"{method}_r{r}"),
                                   model_config, **data_args)
    # Evaluated as trained (the method's training default for prop_attn),
    # next to the off-the-shelf row with its official default. When both
    # defaults agree the jitted predictor is the same program and is reused.
    trained_prop = official_prop_attn(method, off_the_shelf=False)
    shelf = next((row for row in rows if row["method"] == method and
                  row["r"] == r and row["prop_attn"] == official_prop_attn(
                      method)), None)
    i = next((i for i, row in enumerate(rows) if row["method"] == method and
              row["r"] == r and row["prop_attn"] == trained_prop), None)
    predict = (predictor(reduced_model(config, method, keep,
                                       off_the_shelf=False)) if i is None
               else predicts[i])
    accs = [accuracy(predict, p, images, labels, args.batch) for p in trained]
    trained_with.append(dict(
        method=method, r=r, keep=list(keep), gflops=gflops(config, keep),
        accuracy=float(np.mean(accs)), accuracy_std=float(np.std(accs)),
        accuracy_per_seed=accs, prop_attn=trained_prop,
        off_the_shelf=None if shelf is None else shelf["accuracy"],
        off_the_shelf_std=None if shelf is None else shelf["accuracy_std"]))
    print(f"{method} trained with r={r}: acc={' '.join(f'{a:.3f}' for a in accs)}",
          flush=True)

  m = config.model
  meta = dict(dataset=args.dataset, data=config.data.name,
              train_images=train_images,
              width=m.width, depth=m.depth, patch_size=m.patch_size,
              pool=m.pool,
              num_heads=m.num_heads, num_tokens=n0, train_steps=args.steps,
              seeds=seeds,
              test_images=len(images) // args.batch * args.batch,
              batch=args.batch, repeats=args.repeats,
              cpu_count=os.cpu_count(), jax=jax.__version__,
              platform=platform.processor() or platform.machine())
  (out / f"results{suffix}.json").write_text(json.dumps(
      dict(meta=meta, rows=rows, trained_with=trained_with), indent=1) + "\n")
  write_table(out / f"results{suffix}.md", rows, meta)
  if trained_with:
    write_trained_with(out / f"trained_with{suffix}.md", trained_with,
                       rows[0], meta)
    print((out / f"trained_with{suffix}.md").read_text())
  plot(out / f"tradeoff{suffix}.png", rows, args.dataset)
  print((out / f"results{suffix}.md").read_text())


if __name__ == "__main__":
  main()
