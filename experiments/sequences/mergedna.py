"""MergeDNA's table on `genome`, at CPU scale: compression, reconstruction,
the coding / non-coding probe, and where the learned tokens are short.

Three pretraining runs on the *C. diphtheriae* chromosome (`genome`, the
coding label: a window is coding when half of its bases lie in genes that
pyrodigal predicts), each probed by k-NN and a linear probe on the held-out
test blocks next to the same networks at random init and codon (3-mer)
counts with no encoder:

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

  python experiments/sequences/mergedna.py --out workdirs/mergedna_table

writes `results.json` and `results.md` to `--out` (with each run's
workdir under it). `--steps` sets MergeDNA's steps (default: the config's);
`--smoke` runs a few steps on small splits, for tests.
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


def run(name, config, out, previous):
  """Trains (or, if finished, only evaluates) one run. A finished run keeps
  the wall seconds of the invocation that trained it, from `previous`."""
  workdir = os.path.join(out, name)
  finished = os.path.isdir(os.path.join(workdir, "checkpoints",
                                        str(config.total_steps)))
  start = time.time()
  result = train.train_and_evaluate(config, workdir)
  seconds = time.time() - start
  if finished and "seconds" in previous.get(name, {}):
    seconds = previous[name]["seconds"]
  pick = lambda d: {k: float(v) for k, v in d.items()
                    if isinstance(v, (int, float, np.floating))}
  return result, {"name": name, "steps": int(config.total_steps),
                  "batch_size": int(config.batch_size),
                  "seconds": round(seconds, 1),
                  "final": pick(result["final"]),
                  "random_init": pick(result.get("random_init", {})),
                  "kmer_counts": pick(result.get("pixels", {}))}


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


def write_md(path, rows, lengths, meta):
  lines = ["# MergeDNA on genome (coding label)", "",
           f"`{meta['command']}`; {meta['hardware']}; {meta['total_seconds']:.0f} s.",
           "", "| run | steps | train s | compression L/N | reconstruction acc | "
           "AMTM acc | k-NN | probe | k-NN rand | probe rand | k-NN codons | "
           "probe codons |", "|" + "---|" * 12]
  for r in rows:
    f, ri, km = r["final"], r["random_init"], r["kmer_counts"]
    g = lambda d, k: f"{d[k]:.4f}" if k in d else "-"
    lines.append(
        f"| {r['name']} | {r['steps']} | {r['seconds']:.0f} | "
        f"{g(f, 'compression')} | {g(f, 'mtr_accuracy')} | "
        f"{g(f, 'amtm_accuracy')} | {g(f, 'knn_accuracy')} | "
        f"{g(f, 'linear_probe_accuracy')} | {g(ri, 'knn_accuracy')} | "
        f"{g(ri, 'linear_probe_accuracy')} | {g(km, 'knn_accuracy')} | "
        f"{g(km, 'linear_probe_accuracy')} |")
  lines += ["", "Balanced accuracy (the mean of the two classes' recalls: "
            "0.5 for any constant guess):", "",
            "| run | k-NN | probe | k-NN rand | probe rand | k-NN codons | "
            "probe codons |", "|" + "---|" * 7]
  for r in rows:
    f, ri, km = r["final"], r["random_init"], r["kmer_counts"]
    g = lambda d, k: f"{d[k]:.4f}" if k in d else "-"
    cells = [g(d, f"{m}_balanced_accuracy") for d in (f, ri, km)
             for m in ("knn", "linear_probe")]
    lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
  lines += ["", "Length of the token holding each base (learned tokenizer, "
            "L = N/2, test windows):", "",
            "| tokenizer | coding bases | non-coding bases |", "|---|---|---|"]
  for name, l in lengths.items():
    lines.append(f"| {name} | {l['coding_mean_length']:.4f} "
                 f"({l['coding_bases']}) | {l['noncoding_mean_length']:.4f} "
                 f"({l['noncoding_bases']}) |")
  pathlib.Path(path).write_text("\n".join(lines) + "\n")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=0)
  parser.add_argument("--length-windows", type=int, default=2048)
  parser.add_argument("--smoke", action="store_true",
                      help="a few steps on small splits, for tests")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  start = time.time()
  cfgs = configs(args.steps, args.smoke)
  flops = {name: step_flops(c) for name, c in cfgs.items()
           if name in ("mergedna", "mlm_bases")}
  mlm = cfgs["mlm_bases"]
  mlm.total_steps = max(1, int(round(cfgs["mergedna"].total_steps
                                     * flops["mergedna"] / flops["mlm_bases"])))
  mlm.optimizer.warmup_steps = min(mlm.optimizer.warmup_steps,
                                   mlm.total_steps // 2)
  old = os.path.join(args.out, "results.json")
  previous = ({r["name"]: r for r in json.load(open(old))["rows"]}
              if os.path.exists(old) else {})
  rows, lengths = [], {}
  for name, config in cfgs.items():
    result, row = run(name, config, args.out, previous)
    rows.append(row)
    if name in ("mergedna", "fixed_kmer"):
      params = jax.device_get(result["state"]["params"])
      lengths[name] = token_length_by_coding(
          config, params, 64 if args.smoke else args.length_windows)
  meta = {"command": "python experiments/sequences/mergedna.py " + " ".join(
              shlex.quote(a) for a in (argv if argv is not None
                                       else sys.argv[1:])),
          "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                      f"{jax.devices()[0].platform}",
          "flops_per_step": flops, "total_seconds": time.time() - start}
  results = {"meta": meta, "rows": rows, "token_length": lengths}
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  write_md(os.path.join(args.out, "results.md"), rows, lengths, meta)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
