"""MergeDNA's table on `genome`, at CPU scale: compression, reconstruction,
the coding / non-coding probe, and where the learned tokens are short.

Three pretraining runs per seed on the *C. diphtheriae* chromosome
(`genome`, the coding label: a window is coding when half of its bases lie
in genes that pyrodigal predicts), each probed by k-NN and a linear probe on
the held-out test blocks next to the same networks at random init and codon
(3-mer) counts with no encoder. 91.5% of the test windows are coding, so
the probes also report balanced accuracy (the mean of the two classes'
recalls; 0.5 for any constant guess), and the claims are judged by it:

- `mergedna`: `configs/mergedna/genome_tiny.py` (learned tokenizer, L/N
  drawn from 7, 8, 9 of 16 per step);
- `fixed_kmer`: the same networks, loss and steps with the tokenizer fixed
  to non-overlapping 2-mers (`model.local_merge = "fixed"`, L = N/2): what
  learning the tokenization adds;
- `mlm_bases`: BERT's MLM on single bases (`configs/mlm/genome_tiny.py:coding`)
  at equal compute: its steps are scaled so that steps x training FLOPs
  per step match MergeDNA's (XLA's cost analysis of one gradient of each
  task's loss on one batch, MergeDNA at L = N/2, the mean level).

For the learned tokenizer it also measures whether merged tokens are
shorter in coding regions: every base of the test windows gets the length
(in bases) of the token that holds it at L = N/2, averaged over coding and
over non-coding bases (a base is coding when it lies in a predicted gene).
Each window keeps the same number of tokens, so only the spread of lengths
inside a window can differ, not the window's mean.

  python experiments/mergedna/run.py --out workdirs/mergedna

writes `results.json` and `results.md` to `--out` after every run, with
each run's workdir under `--out/runs/NAME/seedK`. Resumable: a finished
run is evaluated again (the loop trains nothing) and keeps the training
seconds recorded for it. `--seeds` (default 0,1,2), `--runs` (default all
three), `--steps` (MergeDNA's; default the config's); `--smoke` runs a few
steps on small splits, for tests.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from maskmodel import train  # pylint: disable=g-import-not-at-top
from maskmodel.experiments import mean_std, seed_list
from maskmodel.data import sequences
from maskmodel.tasks import get_task

ROOT = pathlib.Path(__file__).resolve().parents[2]
MERGEDNA = ROOT / "configs" / "mergedna" / "genome_tiny.py"
MLM = ROOT / "configs" / "mlm" / "genome_tiny.py"
FEATURE_METRICS = ("knn_accuracy", "linear_probe_accuracy")


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def configs(steps, smoke):
  """The three runs' configs (module docstring), MLM's steps still unset."""
  arg = "smoke" if smoke else None
  learned = load_config(MERGEDNA, arg)
  fixed = load_config(MERGEDNA, arg)
  fixed.model.local_merge = "fixed"
  fixed.model.window_keep = (fixed.model.eval_window_keep,)
  mlm = load_config(MLM, "coding,smoke" if smoke else "coding")
  for c in (learned, fixed, mlm):
    if steps:
      c.total_steps = steps
    if smoke:
      c.evals.linear_probe.steps = 20
  # The same data and batches for all three.
  for k in ("seq_len", "train_examples", "test_examples"):
    mlm.data[k] = learned.data[k]
  mlm.model.max_len = max(mlm.model.max_len, learned.data.seq_len)
  mlm.batch_size = learned.batch_size
  return {"mergedna": learned, "fixed_kmer": fixed, "mlm_bases": mlm}


def one_batch(config):
  src = sequences.get_corpus("genome", "train", seq_len=config.data.seq_len)
  return {k: jnp.asarray(np.stack([src[i][k] for i in range(config.batch_size)]))
          for k in ("tokens", "mask")}


def step_flops(config):
  """XLA's FLOPs for one gradient of the task's loss on one batch (for
  MergeDNA, at the evaluation compression)."""
  task = get_task(config)
  batch = one_batch(config)
  params, state = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
  if config.task.name == "mergedna":
    loss = lambda p: task.objective(task.eval_net, p, batch["tokens"],
                                    batch["mask"], jax.random.PRNGKey(1))["loss"]
  else:
    loss = lambda p: task.loss(p, state, batch, jax.random.PRNGKey(1), 0)[0]
  cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])


def run(name, seed, config, out, previous):
  """Trains (or, if finished, only evaluates) one run; its result and row.
  A finished run keeps the wall seconds of the invocation that trained it,
  from `previous` (the last results' rows by (name, seed))."""
  config.seed = seed
  workdir = os.path.join(out, "runs", name, f"seed{seed}")
  finished = os.path.isdir(os.path.join(workdir, "checkpoints",
                                        str(config.total_steps)))
  start = time.time()
  result = train.train_and_evaluate(config, workdir)
  seconds = time.time() - start
  if finished and "seconds" in previous.get((name, seed), {}):
    seconds = previous[(name, seed)]["seconds"]
  pick = lambda d: {k: float(v) for k, v in d.items()
                    if isinstance(v, (int, float, np.floating))}
  return result, {"name": name, "seed": seed,
                  "steps": int(config.total_steps),
                  "batch_size": int(config.batch_size),
                  "seconds": round(seconds, 1),
                  "final": pick(result["final"]),
                  "random_init": pick(result.get("random_init", {})),
                  "kmer_counts": pick(result.get("pixels", {}))}


def summarize(rows):
  """{run: {"trained" | "random_init" | "kmer_counts": {metric: {mean, std,
  n}}}} over the seeds of each run."""
  table = {}
  for r in rows:
    for part, key in (("trained", "final"), ("random_init", "random_init"),
                      ("kmer_counts", "kmer_counts")):
      cell = table.setdefault(r["name"], {}).setdefault(part, {})
      for m, v in r[key].items():
        cell.setdefault(m, []).append(v)
  return {name: {part: {m: mean_std(v) for m, v in cell.items()}
                 for part, cell in parts.items()}
          for name, parts in table.items()}


def token_length_by_coding(config, params, max_windows):
  """Mean length of the token holding each base, over coding and over
  non-coding bases of the test windows (module docstring)."""
  task = get_task(config)
  seq_len = config.data.seq_len
  src = sequences.get_corpus("genome", "test", seq_len=seq_len)
  cover = sequences.gene_coverage().any(0)
  count = min(len(src), max_windows)
  encode = jax.jit(lambda p, ids: task.tokenize(task.eval_net, p, ids))
  sums = {True: 0.0, False: 0.0}
  bases = {True: 0, False: 0}
  for lo in range(0, count, 64):
    idx = range(lo, min(count, lo + 64))
    ids = np.stack([src[i]["tokens"] for i in idx])
    _, size, source = jax.device_get(encode(params, jnp.asarray(ids)))
    length = np.take_along_axis(size, source, axis=1)   # [b, N] per base
    for row, i in enumerate(idx):
      start = int(src.starts[int(src.order[i])])
      width = seq_len - 2
      coding = cover[start:start + width]
      per_base = length[row, 1:1 + width]    # after [CLS]
      for flag in (True, False):
        sums[flag] += float(per_base[coding == flag].sum())
        bases[flag] += int((coding == flag).sum())
  return {"coding_mean_length": sums[True] / max(bases[True], 1),
          "noncoding_mean_length": sums[False] / max(bases[False], 1),
          "coding_bases": bases[True], "noncoding_bases": bases[False],
          "windows": count}


def write_md(path, table, rows, lengths, meta):
  def cell(name, part, metric):
    m = table[name][part].get(metric)
    return f"{m['mean']:.4f} ± {m['std']:.4f}" if m else "-"
  seconds = {}
  for r in rows:
    seconds.setdefault(r["name"], []).append(f"{r['seconds']:.0f}")
  seeds = {name: table[name]["trained"]["knn_accuracy"]["n"] for name in table}
  lines = ["# MergeDNA on genome (coding label)", "",
           f"`{meta['command']}`; {meta['hardware']}; {meta['total_seconds']:.0f} s "
           "in this invocation. Mean ± std over the seeds (last column).", "",
           "| run | steps | train s per seed | compression L/N | "
           "reconstruction acc | AMTM acc | seeds |", "|" + "---|" * 7]
  steps = {r["name"]: r["steps"] for r in rows}
  for name in table:
    lines.append(f"| {name} | {steps[name]} | {', '.join(seconds[name])} | "
                 f"{cell(name, 'trained', 'compression')} | "
                 f"{cell(name, 'trained', 'mtr_accuracy')} | "
                 f"{cell(name, 'trained', 'amtm_accuracy')} | {seeds[name]} |")
  for title, suffix in (("Balanced accuracy (the mean of the two classes' "
                         "recalls: 0.5 for any constant guess)",
                         "balanced_accuracy"),
                        ("Accuracy (most test windows are coding: a "
                         "constant guess scores their share)", "accuracy")):
    lines += ["", f"{title}:", "",
              "| run | k-NN | probe | k-NN rand | probe rand | k-NN codons | "
              "probe codons |", "|" + "---|" * 7]
    for name in table:
      cells = [cell(name, part, f"{m}_{suffix}")
               for part in ("trained", "random_init", "kmer_counts")
               for m in ("knn", "linear_probe")]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "Length of the token holding each base (L = N/2, test "
            "windows), mean over seeds:", "",
            "| tokenizer | coding bases | non-coding bases | seeds |",
            "|---|---|---|---|"]
  for name, per_seed in lengths.items():
    coding = np.mean([l["coding_mean_length"] for l in per_seed])
    noncoding = np.mean([l["noncoding_mean_length"] for l in per_seed])
    lines.append(f"| {name} | {coding:.4f} | {noncoding:.4f} | {len(per_seed)} |")
  pathlib.Path(path).write_text("\n".join(lines) + "\n")


RUNS = ("mergedna", "fixed_kmer", "mlm_bases")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--seeds", type=seed_list, default="0,1,2")
  parser.add_argument("--runs", default=",".join(RUNS))
  parser.add_argument("--steps", type=int, default=0)
  parser.add_argument("--length-windows", type=int, default=2048)
  parser.add_argument("--smoke", action="store_true",
                      help="a few steps on small splits, for tests")
  args = parser.parse_args(argv)
  names = args.runs.split(",")
  bad = [n for n in names if n not in RUNS]
  if bad:
    parser.error(f"unknown run {', '.join(bad)}; use some of {', '.join(RUNS)}")
  os.makedirs(args.out, exist_ok=True)
  start = time.time()
  cfgs = configs(args.steps, args.smoke)
  flops = {}
  if "mlm_bases" in names:
    flops = {name: step_flops(cfgs[name]) for name in ("mergedna", "mlm_bases")}
    mlm = cfgs["mlm_bases"]
    mlm.total_steps = max(1, int(round(
        cfgs["mergedna"].total_steps * flops["mergedna"] / flops["mlm_bases"])))
    mlm.optimizer.warmup_steps = min(mlm.optimizer.warmup_steps,
                                     mlm.total_steps // 2)
  old = os.path.join(args.out, "results.json")
  previous = ({(r["name"], r["seed"]): r for r in json.load(open(old))["rows"]}
              if os.path.exists(old) else {})
  meta = {"command": "python experiments/mergedna/run.py " + " ".join(
              shlex.quote(a) for a in (argv if argv is not None
                                       else sys.argv[1:])),
          "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                      f"{jax.devices()[0].platform}",
          "flops_per_step": flops}
  rows, lengths = [], {}
  for seed in args.seeds:  # seed by seed: a partial grid has every run once
    for name in names:
      result, row = run(name, seed, cfgs[name], args.out, previous)
      rows.append(row)
      if name in ("mergedna", "fixed_kmer"):
        params = jax.device_get(result["state"]["params"])
        lengths.setdefault(name, []).append(dict(seed=seed, **token_length_by_coding(
            cfgs[name], params, 64 if args.smoke else args.length_windows)))
      meta["total_seconds"] = time.time() - start
      table = summarize(rows)
      results = {"meta": meta, "table": table, "rows": rows,
                 "token_length": lengths}
      with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
      write_md(os.path.join(args.out, "results.md"), table, rows, lengths, meta)
  print(pathlib.Path(args.out, "results.md").read_text())


if __name__ == "__main__":
  main()
