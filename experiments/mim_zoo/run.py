"""The masked-image-modeling zoo on one budget: every method of part 1
pretrains the same tiny ViT (SparK its convnet) for the same steps, on the
embedded MNIST sample and on Fashion-MNIST, with 3 seeds, and each encoder
is scored by k-NN, a linear probe and fine-tuning on 1% and 10% of the
labels, next to the same networks at random init and to raw pixels.

Each run is one config file of `configs/<method>/`, with the zoo's
overrides (`run_config`): the dataset, `--steps` steps at batch 128, the
warm-up cut to a tenth, and the evals. Everything else (learning rate,
masking, crops, decoder) is the method's own tiny config, so a method runs
its own recipe. The variants that test a paper's claim change one option of
that config (`VARIANTS`).

Baselines, once per dataset and seed: "random init" is the feature evals of
the initial params of the MAE run (ViT) and of the SparK run (convnet);
"raw pixels" those of the flattened normalized images, from the MAE run.

Resumable: a run that finished has its `result.json` and is not run again;
an interrupted one resumes from its last checkpoint (every 100 steps) when
the command is run again. `results.json` and `results.md` are rewritten
after every run, so a partial grid is reported as far as it went (the
seeds column says how many). The runs already in `--out`'s results.json
count as finished too, so a recorded grid grows from a fresh workdir: its
checkpoints need not be kept (only the figures need seed 0's workdir).

  python experiments/mim_zoo/run.py --workdir workdirs/mim_zoo --out workdirs/mim_zoo

`--write-spec` rewrites the experiment's `experiment.json` (what `python -m
maskmodel.experiments` lists and checks) from the results recorded in this
folder: a metric per recorded row, and the verdict of `CLAIM`.

Writes to --out: results.json, results.md and reconstructions_<dataset>.png
(the first test images, masked and reconstructed by seed 0 of each method
that reconstructs pixels).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import platform
import sys
import time

import jax
import numpy as np

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from maskmodel import tasks, train  # pylint: disable=g-import-not-at-top
from maskmodel.experiments import (  # pylint: disable=g-import-not-at-top
    claims_markdown, fmt_mean_std, mean_std, seed_list, seed_verdict)
from maskmodel.evaluators.plots import image_grid  # pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[2]
BATCH = 128

# name: (config file, the options it changes, what it is)
VARIANTS = {
    "mae": ("mae/mnist_vit_tiny.py", {}, "MAE, random masks"),
    "simmim": ("simmim/mnist_vit_tiny.py", {}, "SimMIM, 8 px mask cells"),
    "simmim_fine": ("simmim/mnist_vit_tiny.py", {"task.mask_patch_size": 4},
                    "SimMIM, 4 px mask cells (one per patch)"),
    "hpm": ("hpm/mnist_vit_tiny.py", {}, "HPM, hard patches mined"),
    "hpm_predictor_only": ("hpm/mnist_vit_tiny.py",
                           {"task.mine_hard_patches": False},
                           "HPM's loss predictor, random masks"),
    "colormae": ("colormae/mnist_vit_tiny.py", {}, "ColorMAE, green noise"),
    "maskfeat": ("maskfeat/mnist_vit_tiny.py", {}, "MaskFeat, HOG target"),
    "maskfeat_pixels": ("maskfeat/mnist_vit_tiny.py", {"task.target": "pixels"},
                        "MaskFeat's recipe, pixel target"),
    "lut": ("lut/mnist_vit_tiny.py", {}, "LUT, MAE + 0.25 BC loss"),
    "lut_no_bc": ("lut/mnist_vit_tiny.py", {"task.bc_weight": 0.0},
                  "LUT's views, MAE loss only"),
    "cropmae": ("cropmae/mnist_vit_tiny.py", {}, "CropMAE, global to local"),
    "cropmae_same": ("cropmae/mnist_vit_tiny.py", {"task.views": "same"},
                     "CropMAE's decoder, one view"),
    "spark": ("spark/mnist_convnet_tiny.py", {}, "SparK, convnet"),
    # Part 2: latent and token targets.
    "ijepa": ("ijepa/mnist_vit_tiny.py", {}, "I-JEPA, EMA target encoder"),
    "dmtjepa": ("dmtjepa/mnist_vit_tiny.py", {}, "DMT-JEPA, discriminative targets"),
    "ccvit": ("ccvit/mnist_vit_tiny.py", {}, "CCViT, k-means centroid ids"),
    "ccvit_no_replace": ("ccvit/mnist_vit_tiny.py", {"task.replace": 0},
                         "CCViT without centroid replacement"),
    "ccvit_dual": ("ccvit/mnist_vit_tiny.py", {"task.dual_loss": True},
                   "CCViT with the dual (pixel) loss"),
    "cae": ("cae/mnist_vit_tiny.py", {}, "CAE, pixel target"),
    "cae_no_align": ("cae/mnist_vit_tiny.py", {"task.align_weight": 0.0},
                     "CAE without the alignment loss"),
    "tokenunify": ("tokenunify/mnist_vit_tiny.py", {},
                   "TokenUnify, MAE (mask 0.4) half, autoregressive half"),
    "salt": ("salt/mnist_vit_tiny.py", {},
             "SALT, teacher 1/5 of the budget, student 4/5"),
    "salt_teacher_heavy": ("salt/mnist_vit_tiny.py", {},
                           "SALT, teacher 4/5 of the budget, student 1/5"),
    "salt_long_teacher": ("salt/mnist_vit_tiny.py", {},
                          "SALT, teacher a whole budget, student 4/5"),
    "salt_small_teacher": ("salt/mnist_vit_tiny.py",
                           {"task.teacher.width": 48, "task.teacher.depth": 2},
                           "SALT, half-width 2-block teacher 1/5, student 4/5"),
}
# Two-stage variants: a first run (its config, options, and its share of the
# budget) whose workdir the variant's config takes under `key`, and the
# variant's own share. Runs with the same first stage share it.
STAGE1 = {
    "tokenunify": ("tokenunify/mnist_vit_tiny_mae.py", {}, 0.5, 0.5,
                   "task.init_from"),
    "salt": ("salt/mnist_vit_tiny_teacher.py", {}, 0.2, 0.8,
             "task.teacher_workdir"),
    "salt_teacher_heavy": ("salt/mnist_vit_tiny_teacher.py", {}, 0.8, 0.2,
                           "task.teacher_workdir"),
    "salt_long_teacher": ("salt/mnist_vit_tiny_teacher.py", {}, 1.0, 0.8,
                          "task.teacher_workdir"),
    "salt_small_teacher": ("salt/mnist_vit_tiny_teacher.py",
                           {"model.width": 48, "model.depth": 2}, 0.2, 0.8,
                           "task.teacher_workdir"),
}
DATASETS = {
    "mnist5k": {},  # the tiny configs' own data settings
    # The first 10,000 / 2,000 images of the official split: the evals run
    # on every image of both, for each of the 3 x 25 runs.
    "fashion_mnist": {"data.name": "fashion_mnist", "data.mean": (0.2860,),
                      "data.std": (0.3530,), "data.flip": True,
                      "data.train_examples": 10000, "data.test_examples": 2000},
}
# The rows every variant is compared with.
BASELINES = {"random_init_vit": "the ViT at random init (the MAE run's)",
             "random_init_convnet": "the convnet at random init (SparK's)",
             "pixels": "raw pixels, no encoder"}
METRICS = ("knn_accuracy", "linear_probe_accuracy", "low_label_1%",
           "low_label_10%", "reconstruction_mse_pixels")
# Each claim: (paper, better variant, worse variant).
CLAIMS = (
    ("HPM beats MAE", "hpm", "mae"),
    ("HPM's loss-prediction objective alone helps", "hpm_predictor_only", "mae"),
    ("Green-noise masks beat random masks (ColorMAE vs MAE)", "colormae", "mae"),
    ("Coarse mask cells help SimMIM", "simmim", "simmim_fine"),
    ("HOG targets beat pixels (MaskFeat)", "maskfeat", "maskfeat_pixels"),
    ("LUT's extra loss helps", "lut", "lut_no_bc"),
    ("CropMAE's global-to-local crops beat same-view crops", "cropmae",
     "cropmae_same"),
    ("DMT-JEPA's discriminative targets beat I-JEPA's", "dmtjepa", "ijepa"),
    ("CAE's alignment loss helps", "cae", "cae_no_align"),
    ("TokenUnify's autoregressive stage beats MAE alone", "tokenunify", "mae"),
    ("CCViT's centroid replacement helps", "ccvit", "ccvit_no_replace"),
    ("CCViT's dual loss helps", "ccvit_dual", "ccvit"),
    ("SALT: at one budget, compute should favour the student", "salt",
     "salt_teacher_heavy"),
    # The paper's claim is robustness: "within noise" is what it predicts.
    ("SALT: a long-trained teacher barely helps the student (paper: little "
     "difference)", "salt_long_teacher", "salt"),
    ("SALT: a same-size teacher barely beats a small one (paper: little "
     "difference)", "salt", "salt_small_teacher"),
)
CLAIM_METRICS = ("linear_probe_accuracy", "low_label_10%")
NUM_RECONSTRUCTIONS = 8

HERE = pathlib.Path(__file__).resolve().parent
# The experiment's claim, checked on the recorded MNIST table (`spec`).
CLAIM = ("On one budget (500 steps at batch 128, the same tiny ViT), raw pixels "
         "beat every masked-image-modeling method of the zoo (parts 1 and 2) "
         "under k-NN on the embedded MNIST sample, while MAE's encoder still "
         "beats its random init.")
CLAIM_DATASET = "mnist5k"
TIME = ("3 to 10 min per 500-step ViT run (up to 20 on cores shared with "
        "other jobs), about 16 min for SparK's (its depthwise convolutions are "
        "slow on CPU); 25 variants x 2 datasets x 3 seeds; rerunning resumes "
        "where it stopped")
SPEC_METRICS = {"knn": "knn_accuracy", "probe": "linear_probe_accuracy"}


def load(path):
  spec = importlib.util.spec_from_file_location("zoo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def stage_steps(variant, steps):
  """(first-stage steps, the variant's own steps) of a `steps` budget; no
  first stage is 0."""
  if variant not in STAGE1:
    return 0, steps
  _, _, first, second, _ = STAGE1[variant]
  return round(first * steps), round(second * steps)


def run_config(variant, dataset, seed, steps, stage1_workdir=""):
  """The method's tiny config with the zoo's data, budget and evals; a
  two-stage variant's second stage reads its first from `stage1_workdir`."""
  path, options, _ = VARIANTS[variant]
  c = configure(path, options, dataset, seed, stage_steps(variant, steps)[1])
  c.evals.compare_random_init = variant in ("mae", "spark")
  c.evals.compare_pixels = variant == "mae"
  if variant in STAGE1:
    set_option(c, STAGE1[variant][4], stage1_workdir)
  return c


def stage1_config(variant, dataset, seed, steps):
  """The first stage of a two-stage variant: trained, never evaluated."""
  path, options, first, _, _ = STAGE1[variant]
  c = configure(path, options, dataset, seed, round(first * steps))
  c.evals.names = ()
  return c


def set_option(c, key, value):
  node = c
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value


def configure(path, options, dataset, seed, steps):
  """`configs/<path>` with `options`, the dataset, the seed, `steps` steps at
  the zoo's batch, and the zoo's evals."""
  c = load(ROOT / "configs" / path)
  for key, value in {**DATASETS[dataset], **options}.items():
    set_option(c, key, value)
  if c.model.name == "vit":
    # One feature for every ViT: the mean of the patch tokens, as the main
    # job's MAE (none of these methods trains its [CLS] token). The pooling
    # is read by the evals only, never by pretraining.
    c.model.pool = "gap"
  c.seed = seed
  c.total_steps = steps
  c.batch_size = BATCH
  c.optimizer.warmup_steps = max(1, steps // 10)
  c.log_every = max(1, steps // 5)
  c.checkpoint_every = 100
  c.evals.names = ("knn", "linear_probe", "low_label")
  c.evals.knn.every = 0
  c.evals.low_label.every = 0
  if c.task.name == "hpm":
    # HPM counts its schedules in epochs: the easy-to-hard fraction over the
    # run, the teacher's EMA ramp over its first half (as the tiny config).
    n = c.data.train_examples or 4000  # mnist5k's train split
    c.task.steps_per_epoch = n // BATCH
    c.task.ema_ramp_epochs = max(1, -(-steps // c.task.steps_per_epoch) // 2)
  return c


def reconstructions(config, state, test_source):
  """Seed 0's masked inputs and reconstructions of the first test images,
  for the methods that reconstruct pixels (None for the others)."""
  task = tasks.get_task(config)
  if not hasattr(task, "reconstruct"):
    return None
  images = np.stack([task.preprocess(test_source[i], None, False)["image"]
                     for i in range(NUM_RECONSTRUCTIONS)])
  out = jax.jit(task.reconstruct)(state["params"], state["task_state"], images,
                                  jax.random.PRNGKey(0))
  return {k: np.asarray(out[k]) for k in ("original", "masked", "reconstruction")}


def run_folder(workdir, variant, dataset, seed):
  return workdir / dataset / variant / f"seed{seed}"


def recorded_runs(out):
  """The runs in `out`'s results.json, by (variant, dataset, seed, steps):
  finished elsewhere."""
  path = out / "results.json"
  if not path.exists():
    return {}
  runs = json.loads(path.read_text())["runs"]
  return {(r["variant"], r["dataset"], r["seed"], r["steps"]): r for r in runs}


def finished(variant, dataset, seed, steps, workdir, recorded):
  """The run's metrics if it finished in `workdir` or is in `recorded`."""
  done = run_folder(workdir, variant, dataset, seed) / "result.json"
  if done.exists():
    return json.loads(done.read_text())
  return recorded.get((variant, dataset, seed, steps))


def run_one(variant, dataset, seed, steps, workdir):
  """Trains and evaluates one run; its metrics."""
  folder = run_folder(workdir, variant, dataset, seed)
  done = folder / "result.json"
  t0 = time.time()
  stage1 = ""
  if variant in STAGE1:
    # Keyed by what defines it, so variants with the same first stage share it.
    path, options, _, _, _ = STAGE1[variant]
    name = "_".join([pathlib.Path(path).stem, str(stage_steps(variant, steps)[0])]
                    + [f"{k.split('.')[-1]}{v}" for k, v in sorted(options.items())])
    stage1 = workdir / dataset / "stage1" / name / f"seed{seed}"
    if not (stage1 / "done").exists():
      train.train_and_evaluate(stage1_config(variant, dataset, seed, steps),
                               str(stage1))
      (stage1 / "done").write_text("")
  config = run_config(variant, dataset, seed, steps, str(stage1))
  out = train.train_and_evaluate(config, str(folder))
  result = {"variant": variant, "dataset": dataset, "seed": seed,
            "steps": steps, "batch_size": BATCH,
            "final": out["final"], "random_init": out["random_init"],
            "pixels": out["pixels"],
            "wall_seconds_last_invocation": round(time.time() - t0, 1)}
  if seed == 0:
    rec = reconstructions(config, out["state"], train.sources(config)[1])
    if rec is not None:
      np.savez_compressed(folder / "reconstructions.npz", **rec)
  done.write_text(json.dumps(result, indent=1))
  return result


def summarize(results):
  """{dataset: {row: {metric: mean/std/n}}}, with the baseline rows."""
  table = {}
  for r in results:
    rows = table.setdefault(r["dataset"], {})
    sources = [(r["variant"], r["final"])]
    arch = "convnet" if r["variant"] == "spark" else "vit"
    if r["random_init"]:
      sources.append((f"random_init_{arch}", r["random_init"]))
    if r["pixels"]:
      sources.append(("pixels", r["pixels"]))
    for row, metrics in sources:
      cell = rows.setdefault(row, {})
      for m in METRICS:
        if m in metrics:
          cell.setdefault(m, []).append(metrics[m])
  return {d: {row: {m: mean_std(v) for m, v in cell.items()}
              for row, cell in rows.items()} for d, rows in table.items()}


def claims(table):
  """Each claim per dataset and metric, judged by `seed_verdict` over the
  seeds."""
  out = []
  for text, better, worse in CLAIMS:
    for dataset, rows in table.items():
      if better not in rows or worse not in rows:
        continue
      for m in CLAIM_METRICS:
        a, b = rows[better].get(m), rows[worse].get(m)
        if a and b:
          out.append({"claim": text, "dataset": dataset, "metric": m,
                      "better": better, "worse": worse,
                      **seed_verdict(a, b)})
  return out


def markdown(table, claim_rows, steps, wall, summed=False):
  names = {"knn_accuracy": "k-NN", "linear_probe_accuracy": "linear probe",
           "low_label_1%": "1% labels", "low_label_10%": "10% labels"}
  what = ("the runs' wall times added" if summed
          else "total wall time of this command so far")
  lines = [f"Budget: {steps} steps at batch {BATCH} for every method "
           f"({what}: {wall / 60:.1f} min).", ""]
  what = {v: VARIANTS[v][2] for v in VARIANTS} | BASELINES
  for dataset, rows in table.items():
    lines += [f"### {dataset}", "",
              "| encoder | what | " + " | ".join(names.values()) + " | seeds |",
              "|---|---|" + "---|" * (len(names) + 1)]
    order = [v for v in VARIANTS if v in rows] + [
        r for r in BASELINES if r in rows]
    for row in order:
      cell = rows[row]
      n = max((c["n"] for c in cell.values() if c), default=0)
      lines.append(f"| {row} | {what[row]} | "
                   + " | ".join(fmt_mean_std(cell.get(m)) for m in names)
                   + f" | {n} |")
    lines.append("")
  lines += claims_markdown(claim_rows, 3, names.__getitem__)
  return "\n".join(lines) + "\n"


def figures(workdir, out, datasets):
  for dataset in datasets:
    rows = {}
    for variant in VARIANTS:
      path = run_folder(workdir, variant, dataset, 0) / "reconstructions.npz"
      if path.exists():
        rec = np.load(path)
        rows.setdefault("original", rec["original"])
        rows[f"{variant} masked"] = rec["masked"]
        rows[f"{variant} output"] = rec["reconstruction"]
    if rows:
      config = run_config("mae", dataset, 0, 10)
      image_grid(rows, out / f"reconstructions_{dataset}.png",
                 config.data.mean, config.data.std)


def spec(recorded):
  """experiment.json for the recorded results: each row of the claim's
  dataset gets its k-NN and probe metrics (tolerance 0.02), and the verdict
  says that pixels beat every method under k-NN and MAE beats its random
  init."""
  rows = recorded["table"][CLAIM_DATASET]
  metrics = {}
  for row in rows:
    for short, metric in SPEC_METRICS.items():
      if rows[row].get(metric):
        metrics[f"{row}_{short}"] = {
            "path": ["table", CLAIM_DATASET, row, metric, "mean"],
            "tolerance": 0.02}
  verdict = [f"pixels_knn > {v}_knn" for v in VARIANTS if f"{v}_knn" in metrics]
  verdict.append("mae_knn > random_init_vit_knn")
  record = ["results.json", "results.md"] + sorted(
      f"reconstructions_{d}.png" for d in recorded["table"])
  return {"name": HERE.name, "claim": CLAIM,
          "command": "python experiments/mim_zoo/run.py --workdir {out}/runs "
                     "--out {out}",
          "time": TIME, "results": "results.json", "record": record,
          "metrics": metrics, "verdict": verdict}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", help="the runs' checkpoints")
  p.add_argument("--out", help="results.json, results.md, figures")
  p.add_argument("--steps", type=int, default=500)
  p.add_argument("--seeds", type=seed_list, default="0,1,2")
  p.add_argument("--datasets", default=",".join(DATASETS))
  p.add_argument("--methods", default=",".join(VARIANTS))
  p.add_argument("--write-spec", action="store_true",
                 help="rewrite experiment.json from the recorded results, and exit")
  p.add_argument("--report", action="store_true",
                 help="write the outputs from the runs that finished in "
                 "--workdir, and train nothing")
  a = p.parse_args()
  if a.write_spec:
    recorded = json.loads((HERE / "results.json").read_text())
    (HERE / "experiment.json").write_text(json.dumps(spec(recorded), indent=1) + "\n")
    print(f"wrote {HERE / 'experiment.json'}")
    return
  if not a.workdir or not a.out:
    sys.exit("error: --workdir and --out are required to run the zoo.")
  seeds = a.seeds
  datasets, methods = a.datasets.split(","), a.methods.split(",")
  for name, known in (("dataset", DATASETS), ("method", VARIANTS)):
    bad = [x for x in (datasets if name == "dataset" else methods) if x not in known]
    if bad:
      sys.exit(f"error: unknown {name} {', '.join(bad)}; use some of "
               f"{', '.join(known)}.")
  if a.steps < 100:
    sys.exit(f"error: --steps={a.steps} is under the checkpoint interval "
             "(100); use 100 or more.")
  workdir, out = pathlib.Path(a.workdir), pathlib.Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  t0, results, recorded = time.time(), [], recorded_runs(out)
  # Seed by seed, so that a partial grid has every method at least once.
  for seed in seeds:
    for dataset in datasets:
      for variant in methods:
        result = finished(variant, dataset, seed, a.steps, workdir, recorded)
        if result is None and a.report:
          continue
        results.append(result or run_one(variant, dataset, seed, a.steps,
                                         workdir))
        table = summarize(results)
        claim_rows = claims(table)
        wall = (sum(r["wall_seconds_last_invocation"] for r in results)
                if a.report else time.time() - t0)
        (out / "results.json").write_text(json.dumps({
            "steps": a.steps, "batch_size": BATCH, "seeds": seeds,
            "wall_seconds": round(wall, 1), "host": platform.processor() or
            platform.machine(), "devices": str(jax.devices()),
            "table": table, "claims": claim_rows,
            "runs": results}, indent=1))
        (out / "results.md").write_text(markdown(table, claim_rows, a.steps,
                                                 wall, summed=a.report))
        figures(workdir, out, [dataset])
  print((out / "results.md").read_text())


if __name__ == "__main__":
  main()
