"""Pod plans: MAE ViT-B/16, L/16 and H/14 (global batch 4096) compiled for
v5e, v5p and v6e slices by the planner, from a CPU host.

Each plan is one `python -m maskmodel.planner` process (`maskmodel/planner.py`,
needs libtpu) for one (model, slice, mesh), so its compile time and peak
RSS are its own. Writes a markdown table (`--md`) and prints one JSON
document (also to `--out`): per device, params, optimizer state, XLA's
temporaries and total against the chip's HBM, whether it fits, FLOPs per
step over the whole slice, and the compile's wall time and peak memory.

  python benchmarks/pod_plan.py --only vit_b16@v5e:16x16 --out pod_plan.json --md pod_plan.md
  python benchmarks/pod_plan.py --out pod_plan.json --md pod_plan.md   # all nine
  python benchmarks/pod_plan.py --combine a.json,b.json --out pod_plan.json --md pod_plan.md

`--combine` compiles nothing: it joins the plans of earlier runs' JSON
(one plan per process, so a long series can run a plan at a time), in the
order of `PLANS`.

All nine plans have run on the 2-core development host, one plan per
process (README "Sharding" has the table): each compile takes 1.5 to 16
minutes there, at 4 to 8.4 GiB of peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import common  # pylint: disable=g-bad-import-order

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFIGS = {
    "vit_b16": "configs/mae/imagenet_vit_b16.py",
    "vit_l16": "configs/mae/imagenet_vit_l16.py",
    "vit_h14": "configs/mae/imagenet_vit_h14.py",
}


def _mesh(data=-1, fsdp=1, tensor=1):
  return (("data", data), ("fsdp", fsdp), ("tensor", tensor))


# (model, topology, mesh): a mesh per model and slice. B/16 is pure data
# parallelism, L/16 shards params and Adam state 8 ways, H/14 16 ways with
# its 16 heads split 4 ways (README "Sharding"). The batch (4096) must be
# divisible by data x fsdp.
PLANS = [
    ("vit_b16", "v5e:16x16", _mesh()),
    ("vit_b16", "v5p:4x4x4", _mesh()),
    ("vit_b16", "v6e:8x8", _mesh()),
    ("vit_l16", "v5e:16x16", _mesh(fsdp=8)),
    ("vit_l16", "v5p:4x4x4", _mesh(fsdp=8)),
    ("vit_l16", "v6e:8x8", _mesh(fsdp=8)),
    ("vit_h14", "v5e:16x16", _mesh(fsdp=16, tensor=4)),
    ("vit_h14", "v5p:8x8x4", _mesh(fsdp=16, tensor=4)),
    ("vit_h14", "v6e:16x16", _mesh(fsdp=16, tensor=4)),
]


def run_plan(model, topology, mesh, timeout):
  """One planner process; its plan dict, or {"error": ...}."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "plan.json")
    cmd = [sys.executable, "-m", "maskmodel.planner", "--config", CONFIGS[model],
           "--topology", topology, f"--config.mesh={mesh!r}",
           "--config.batch_size=4096", "--json", out]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    t0 = time.perf_counter()
    try:
      run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
      return dict(error=f"no plan within {timeout} s")
    wall = round(time.perf_counter() - t0, 1)
    if run.returncode:
      lines = [l for l in run.stderr.splitlines() if l.strip()]
      return dict(error=(lines or ["?"])[-1][:300], wall_s=wall)
    plan = json.loads(pathlib.Path(out).read_text())
  plan["command"] = " ".join(
      ["python -m maskmodel.aot"] + cmd[3:7] + [f'--config.mesh="{mesh!r}"'])
  plan["process_wall_s"] = wall
  return plan


def _gib(n):
  return f"{n / 2**30:.2f}"


def markdown(rows) -> str:
  head = ("| model | slice | mesh (data, fsdp, tensor) | params / dev GiB | "
          "optimizer / dev GiB | temporaries / dev GiB | total / dev GiB | "
          "HBM / dev GiB | fits | FLOPs / step (slice) | compile s | max RSS GiB |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    p = r["plan"]
    if "error" in p:
      lines.append(f"| {r['model']} | {r['topology']} | {r['mesh']} | "
                   f"{p['error']} |" + " |" * 9)
      continue
    m, b = p["mesh"], p["bytes"]
    mesh = f"({m['data']}, {m['fsdp']}, {m['tensor']})"
    if "total" in b:
      mem = (f"{_gib(b['temp'])} | {_gib(b['total'])} | {_gib(p['hbm_bytes'])} | "
             f"{'yes' if p['fits'] else '**no**'} | "
             f"{p['flops_per_device'] * p['devices']:.3e}")
    else:  # XLA refused it: out of HBM.
      mem = (f"- | - | {_gib(p['hbm_bytes'])} | **no**: "
             f"{p['compile_error'][:120]} | -")
    lines.append(f"| {r['model']} | {r['topology']} | {mesh} | "
                 f"{_gib(b['params'])} | {_gib(b['optimizer'])} | {mem} | "
                 f"{p['compile_s']} | {p['max_rss_bytes'] / 2**30:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--only", default=None,
                 help="comma-separated MODEL@TOPOLOGY, e.g. vit_b16@v5e:16x16")
  p.add_argument("--timeout", type=int, default=1800,
                 help="seconds per plan")
  p.add_argument("--out", default=None, help="also write the JSON here")
  p.add_argument("--md", default=None, help="write the markdown table here")
  p.add_argument("--combine", default=None,
                 help="comma-separated JSON files of earlier runs: join their "
                      "plans instead of compiling")
  args = p.parse_args(argv)
  if args.combine:
    order = [f"{m}@{t}" for m, t, _ in PLANS]
    rows = [r for f in args.combine.split(",")
            for r in json.loads(pathlib.Path(f).read_text())["plans"]]
    rows.sort(key=lambda r: order.index(f"{r['model']}@{r['topology']}"))
    return _write(rows, args)
  chosen = PLANS
  if args.only:
    wanted = set(args.only.split(","))
    chosen = [x for x in PLANS if f"{x[0]}@{x[1]}" in wanted]
    missing = wanted - {f"{x[0]}@{x[1]}" for x in chosen}
    if missing:
      p.error(f"no plan {sorted(missing)}; choose from "
              f"{[f'{x[0]}@{x[1]}' for x in PLANS]}")
  rows = []
  for model, topology, mesh in chosen:
    plan = run_plan(model, topology, mesh, args.timeout)
    rows.append(dict(model=model, topology=topology, mesh=mesh, plan=plan))
    print(model, topology, plan.get("error") or
          f"fits={plan.get('fits')} compile {plan.get('compile_s')} s",
          file=sys.stderr, flush=True)
  return _write(rows, args)


def _write(rows, args):
  table = markdown(rows)
  if args.md:
    pathlib.Path(args.md).write_text(table)
  common.emit_json(dict(batch_size=4096, plans=rows, markdown=table), args.out)
  return rows


if __name__ == "__main__":
  main()
