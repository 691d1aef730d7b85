"""Experiments you can list and rerun.

  python -m maskmodel.experiments list
  python -m maskmodel.experiments run NAME [--check] [--record] [--out DIR]

Every folder under the repository's `experiments/` that holds an
`experiment.json` is one experiment. The spec is plain JSON, all fields
required except `time` and `record`:

  name      the folder's name
  claim     one sentence: what the experiment shows
  command   the small-scale run that reproduces the recorded results, as one
            shell-quoted line run from the repository root; `python` is the
            interpreter running this module, `{out}` the run's output folder
  time      how long the command takes, and on what
  results   the file the command writes in `{out}`; the copy recorded in the
            experiment's folder is what `list` and `--check` read. A `.json`
            file is read as it is; a `.md` file by its first table, as
            {first cell of a row: {column header: value}} (the loop's
            `report.md`)
  record    the files `--record` copies from `{out}` into the folder
            (default: just `results`)
  metrics   {name: {"path": [...], "tolerance": t}}: `path` walks the
            results from the top, a string or an int per step; in a list, a
            {"field": value, ...} step picks the one element with those
            fields. `--check` passes when every |new - recorded| <= t.
  verdict   ["a > b", ...]: comparisons between metrics (or a metric and a
            number; ops > >= < <=). The claim holds when all of them do.

`list` prints each experiment with its verdict on the recorded results
(holds / does not hold / not run, when nothing is recorded). `run` runs the
command into a fresh `workdirs/experiments/NAME-TIME` (or `--out DIR`) and
prints the metrics and the verdict; `--check` compares them with the recorded
ones and exits 1 when one is outside its tolerance or the verdict changed;
`--record` makes the new results the recorded ones. Bad input stops with one
`error:` line (exit 2).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import operator
import os
import pathlib
import shlex
import shutil
import statistics
import subprocess
import sys
import time

SPEC = "experiment.json"
PACKAGE_PARENT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_ROOT = PACKAGE_PARENT / "experiments"
REQUIRED = ("name", "claim", "command", "results", "metrics", "verdict")
OPTIONAL = ("time", "record")
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


class ExperimentError(Exception):
  """Bad spec, unknown experiment, failed command: one line that names the fix."""


@dataclasses.dataclass
class Experiment:
  name: str
  folder: pathlib.Path
  claim: str
  command: str
  results: str
  metrics: dict  # name -> (path, tolerance)
  verdict: list  # [(lhs, op, rhs)], each a metric name or a float
  time: str = ""
  record: tuple = ()


def seed_list(text):
  """argparse `type` for the experiments' `--seeds`: "0,1,2" -> [0, 1, 2];
  anything else is argparse's one-line usage error."""
  try:
    seeds = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    seeds = []
  if not seeds:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a comma-separated list of ints")
  return seeds


def mean_std(values):
  """{"mean", "std", "n"} of a list of per-seed values (std 0 for one value;
  None for none): how the experiments' tables aggregate seeds."""
  if not values:
    return None
  return {"mean": statistics.fmean(values),
          "std": statistics.stdev(values) if len(values) > 1 else 0.0,
          "n": len(values)}


def fmt_mean_std(cell, digits=3):
  """A `mean_std` cell as a table entry: "mean ± std", the mean alone for
  one seed (no spread to show), "-" for none."""
  if not cell:
    return "-"
  if cell["n"] < 2:
    return f"{cell['mean']:.{digits}f}"
  return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def seed_verdict(a, b, lower_better=False):
  """A claim "a beats b" judged on two `mean_std` cells: {"difference",
  "std_sum", "verdict", "seeds"}. The difference is a - b (b - a where lower
  is better); the claim "holds" when it exceeds the two standard deviations
  added, "does not hold" when the other side wins by as much, else it is
  "within noise". On one seed there is no spread to judge by, and the
  verdict only says which side is ahead."""
  diff = (b["mean"] - a["mean"]) if lower_better else (a["mean"] - b["mean"])
  noise = a["std"] + b["std"]
  seeds = min(a["n"], b["n"])
  if seeds < 2:
    verdict = ("ahead on one seed" if diff > 0 else
               "behind on one seed" if diff < 0 else "tied on one seed")
  else:
    verdict = ("holds" if diff > noise else
               "does not hold" if diff < -noise else "within noise")
  return {"difference": diff, "std_sum": noise, "verdict": verdict,
          "seeds": seeds}


def claims_markdown(claim_rows, digits=3, metric_name=str):
  """The "Claims" table of an experiment's results.md: one row per
  `seed_verdict` (with its "claim", "dataset" and "metric")."""
  lines = ["### Claims", "",
           "| claim | dataset | metric | difference | std sum | verdict | seeds |",
           "|---|---|---|---|---|---|---|"]
  for c in claim_rows:
    lines.append(f"| {c['claim']} | {c['dataset']} | {metric_name(c['metric'])} "
                 f"| {c['difference']:+.{digits}f} | {c['std_sum']:.{digits}f} "
                 f"| {c['verdict']} | {c['seeds']} |")
  return lines


def load(folder: pathlib.Path) -> Experiment:
  """Reads and checks `folder/experiment.json`."""
  path = folder / SPEC
  try:
    spec = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ExperimentError(f"{path} is not valid JSON ({e}); fix the file.") from None
  if not isinstance(spec, dict):
    raise ExperimentError(f"{path} must hold one JSON object with the fields "
                          f"{', '.join(REQUIRED)}.")
  missing = [k for k in REQUIRED if k not in spec]
  if missing:
    raise ExperimentError(f"{path} has no field {', '.join(map(repr, missing))}; "
                          f"an experiment needs {', '.join(REQUIRED)} "
                          "(see maskmodel/experiments.py).")
  unknown = sorted(set(spec) - set(REQUIRED) - set(OPTIONAL))
  if unknown:
    raise ExperimentError(f"{path}: unknown field {', '.join(map(repr, unknown))}; "
                          f"the fields are {', '.join(REQUIRED + OPTIONAL)}.")
  for k in ("name", "claim", "command", "results"):
    if not isinstance(spec[k], str) or not spec[k].strip():
      raise ExperimentError(f"{path}: field {k!r} must be a non-empty string.")
  if spec["name"] != folder.name:
    raise ExperimentError(f"{path}: name {spec['name']!r} is not the folder's "
                          f"name {folder.name!r}; make them the same.")
  if "{out}" not in spec["command"]:
    raise ExperimentError(f"{path}: the command never names {{out}}, so a run "
                          "would not write into its own folder; add it.")
  if not isinstance(spec["metrics"], dict) or not spec["metrics"]:
    raise ExperimentError(f"{path}: metrics must be a non-empty object "
                          '{name: {"path": [...], "tolerance": t}}.')
  metrics = {}
  for name, m in spec["metrics"].items():
    if (not isinstance(m, dict) or not isinstance(m.get("path"), list) or
        not isinstance(m.get("tolerance"), (int, float))):
      raise ExperimentError(f"{path}: metric {name!r} needs a list 'path' and a "
                            'number \'tolerance\', e.g. {"path": ["rows", 0, '
                            '"accuracy"], "tolerance": 0.02}.')
    metrics[name] = (m["path"], float(m["tolerance"]))
  if not isinstance(spec["verdict"], list) or not spec["verdict"]:
    raise ExperimentError(f"{path}: verdict must be a non-empty list of "
                          "comparisons, e.g. [\"knn > knn_random_init\"].")
  verdict = []
  for text in spec["verdict"]:
    parts = text.split() if isinstance(text, str) else []
    if len(parts) != 3 or parts[1] not in OPS:
      raise ExperimentError(f"{path}: verdict {text!r} is not 'a OP b' with OP "
                            f"one of {' '.join(OPS)}; write e.g. \"knn > "
                            "knn_random_init\".")
    sides = []
    for side in (parts[0], parts[2]):
      try:
        sides.append(float(side))
      except ValueError:
        if side not in metrics:
          raise ExperimentError(f"{path}: verdict {text!r} names {side!r}, which "
                                f"is not a metric (metrics: {', '.join(metrics)})."
                                ) from None
        sides.append(side)
    verdict.append((sides[0], parts[1], sides[1]))
  return Experiment(name=spec["name"], folder=folder, claim=spec["claim"],
                    command=spec["command"], results=spec["results"],
                    metrics=metrics, verdict=verdict, time=spec.get("time", ""),
                    record=tuple(spec.get("record", (spec["results"],))))


def discover(root: pathlib.Path) -> dict:
  """{name: Experiment} for every folder of `root` with an experiment.json."""
  if not root.is_dir():
    raise ExperimentError(f"no experiments folder {root}; pass --root DIR.")
  return {d.name: load(d) for d in sorted(root.iterdir()) if (d / SPEC).is_file()}


def read_results(path: pathlib.Path):
  """A `.json` file as it is; a `.md` file's first table as
  {first cell: {header: cell}}, numbers as floats."""
  text = path.read_text()
  if path.suffix == ".json":
    try:
      return json.loads(text)
    except json.JSONDecodeError as e:
      raise ExperimentError(f"results file {path} is not valid JSON ({e}).") from None
  if path.suffix != ".md":
    raise ExperimentError(f"results file {path}: only .json and .md are read; "
                          "make the command write one of them.")
  rows = []
  for line in text.splitlines():
    if line.startswith("|"):
      rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    elif rows:
      break
  if len(rows) < 3:
    raise ExperimentError(f"results file {path} has no markdown table.")
  header, table = rows[0], {}
  for row in rows[2:]:  # rows[1] is the |---| line
    cells = {}
    for h, c in zip(header[1:], row[1:]):
      try:
        cells[h] = float(c)
      except ValueError:
        cells[h] = c
    table[row[0]] = cells
  return table


def lookup(results, path, where):
  """Follows `path` (keys, indices, {field: value} selectors) into `results`."""
  node = results
  for step in path:
    if isinstance(step, dict) and isinstance(node, list):
      hits = [x for x in node if isinstance(x, dict) and
              all(x.get(k) == v for k, v in step.items())]
      if len(hits) != 1:
        raise ExperimentError(f"{where}: {len(hits)} entries match {step} (path "
                              f"{path}); make the selector pick exactly one.")
      node = hits[0]
    elif isinstance(step, (str, int)) and isinstance(node, (dict, list)):
      try:
        node = node[step]
      except (KeyError, IndexError, TypeError):
        raise ExperimentError(f"{where}: no {step!r} along path {path}; fix the "
                              "path in experiment.json.") from None
    else:
      raise ExperimentError(f"{where}: step {step!r} of path {path} does not "
                            "fit the results there; fix the path.")
  if isinstance(node, bool) or not isinstance(node, (int, float)):
    raise ExperimentError(f"{where}: path {path} leads to {node!r}, not a number.")
  return float(node)


def metric_values(exp: Experiment, results_path: pathlib.Path) -> dict:
  results = read_results(results_path)
  return {name: lookup(results, p, f"{exp.name} ({results_path.name})")
          for name, (p, _) in exp.metrics.items()}


def judge(exp: Experiment, values: dict):
  """(holds, "a 0.74 > b 0.47; ...") for the verdict's comparisons."""
  name = lambda s, v: f"{s} {v:.4f}" if isinstance(s, str) else f"{v:g}"
  holds, parts = True, []
  for lhs, op, rhs in exp.verdict:
    a, b = (values[s] if isinstance(s, str) else s for s in (lhs, rhs))
    ok = OPS[op](a, b)
    holds &= ok
    parts.append(f"{name(lhs, a)} {op if ok else 'not ' + op} {name(rhs, b)}")
  return holds, "; ".join(parts)


def verdict_word(holds):
  return "holds" if holds else "does not hold"


def recorded(exp: Experiment):
  """The metrics of the recorded results, or None when nothing is recorded."""
  path = exp.folder / exp.results
  return metric_values(exp, path) if path.is_file() else None


def run_command(exp: Experiment, out: pathlib.Path, cwd: pathlib.Path):
  """Runs the experiment's command into `out`, with this interpreter and this
  checkout's maskmodel first on the path."""
  argv = [a.replace("{out}", str(out)) for a in shlex.split(exp.command)]
  if argv and argv[0] == "python":
    argv[0] = sys.executable
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(PACKAGE_PARENT)] + [p for p in [env.get("PYTHONPATH")] if p])
  out.mkdir(parents=True, exist_ok=True)
  print(f"running {exp.name} into {out}: {shlex.join(argv)}", flush=True)
  t0 = time.time()
  try:
    rc = subprocess.run(argv, cwd=cwd, env=env, check=False).returncode
  except OSError as e:
    raise ExperimentError(f"{exp.name}: cannot start its command ({e}); fix "
                          "'command' in experiment.json.") from None
  if rc != 0:
    raise ExperimentError(f"{exp.name}: its command exited with status {rc} "
                          "(its output is above); fix that and rerun.")
  result = out / exp.results
  if not result.is_file():
    raise ExperimentError(f"{exp.name}: its command wrote no {exp.results} in "
                          f"{out}; fix 'results' or the command.")
  print(f"{exp.name} finished in {time.time() - t0:.0f} s", flush=True)
  return result


def compare(exp: Experiment, new: dict, old: dict):
  """Per-metric table lines and the names outside their tolerance."""
  w = max(map(len, exp.metrics))
  lines = [f"{'metric':{w}s} {'recorded':>9s} {'new':>9s} {'diff':>9s} "
           f"{'tolerance':>9s}"]
  outside = []
  for name, (_, tol) in exp.metrics.items():
    diff = new[name] - old[name]
    ok = abs(diff) <= tol + 1e-12
    if not ok:
      outside.append(f"{name} {diff:+.4f}")
    lines.append(f"{name:{w}s} {old[name]:9.4f} {new[name]:9.4f} {diff:+9.4f} "
                 f"{tol:9.4f}  {'ok' if ok else 'OUTSIDE'}")
  return lines, outside


def cmd_list(experiments):
  for exp in experiments.values():
    values = recorded(exp)
    if values is None:
      verdict = f"not run (nothing recorded in {exp.results})"
    else:
      holds, why = judge(exp, values)
      verdict = f"{verdict_word(holds)} ({why})"
    print(exp.name)
    print(f"  claim:   {exp.claim}")
    print(f"  command: {exp.command}")
    if exp.time:
      print(f"  time:    {exp.time}")
    print(f"  verdict: {verdict}")
  print("Rerun one with: python -m maskmodel.experiments run NAME [--check] "
        "[--record]; {out} is the run's own output folder.")
  return 0


def cmd_run(exp: Experiment, args, repo: pathlib.Path):
  old = recorded(exp)
  if args.check and old is None:
    raise ExperimentError(f"{exp.name}: nothing recorded to check against (no "
                          f"{exp.results} in its folder); run it with --record "
                          "first.")
  out = pathlib.Path(args.out) if args.out else (
      repo / "workdirs" / "experiments" /
      f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}")
  new = metric_values(exp, run_command(exp, out.resolve(), repo))
  holds, why = judge(exp, new)
  status = 0
  if args.check:
    lines, outside = compare(exp, new, old)
    print("\n".join(lines))
    was = verdict_word(judge(exp, old)[0])
    print(f"verdict: {verdict_word(holds)} ({why}); recorded: {was}")
    if outside or verdict_word(holds) != was:
      problems = ([f"{len(outside)} of {len(new)} metrics outside tolerance "
                   f"({', '.join(outside)})"] if outside else [])
      if verdict_word(holds) != was:
        problems.append(f"verdict {verdict_word(holds)}, recorded {was}")
      print(f"check failed: {exp.name}: {'; '.join(problems)}")
      status = 1
    else:
      print(f"check passed: {exp.name}: all {len(new)} metrics within tolerance, "
            f"verdict {was} as recorded")
  else:
    w = max(map(len, new))
    for name, value in new.items():
      print(f"{name:{w}s} {value:9.4f}")
    print(f"verdict: {verdict_word(holds)} ({why})")
  if args.record:
    for f in exp.record:
      src = out / f
      if not src.is_file():
        raise ExperimentError(f"{exp.name}: --record: the run wrote no {f}; fix "
                              "'record' in experiment.json.")
      shutil.copyfile(src, exp.folder / f)
    print(f"recorded {', '.join(exp.record)} in {exp.folder}")
  return status


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise ExperimentError(f"{message}; see python -m maskmodel.experiments --help.")


def main(argv=None):
  parser = _Parser(prog="python -m maskmodel.experiments",
                   description="List the experiments, or rerun one and "
                   "check it against its recorded results.")
  parser.add_argument("--root", default=str(DEFAULT_ROOT),
                      help="the experiments folder (default: the repository's)")
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("list", help="every experiment: claim, command, verdict")
  run = sub.add_parser("run", help="rerun one experiment at small scale")
  run.add_argument("name")
  run.add_argument("--check", action="store_true",
                   help="compare with the recorded results; exit 1 outside "
                   "tolerance")
  run.add_argument("--record", action="store_true",
                   help="copy the new results into the experiment's folder")
  run.add_argument("--out", help="output folder (default: a fresh "
                   "workdirs/experiments/NAME-TIME)")
  try:
    args = parser.parse_args(argv)
    root = pathlib.Path(args.root).resolve()
    experiments = discover(root)
    if args.command == "list":
      return cmd_list(experiments)
    if args.name not in experiments:
      raise ExperimentError(f"unknown experiment {args.name!r}; known: "
                            f"{', '.join(experiments) or 'none'}.")
    return cmd_run(experiments[args.name], args, root.parent)
  except ExperimentError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
