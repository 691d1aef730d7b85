"""The planner: a config's real train step compiled for a TPU slice, from
any host, with its memory per chip.

  python -m maskmodel.planner --config configs/mae/imagenet_vit_h14.py \\
      --topology v5e:16x16 --config.mesh="(('data', -1), ('fsdp', 16), ('tensor', 4))"

(`python -m maskmodel.aot` with the same flags runs the same thing.)

It takes the compile-only devices of the whole slice from libtpu
(`maskmodel.aot.tpu_topology`), builds the mesh from `config.mesh` on them
(`sharding.make_mesh`), the train state's shapes and shardings
(`train.abstract_state`: `jax.eval_shape` of the task's init, the
partition rules of `maskmodel.partitioning`) and jits `train.train_step`
exactly as the loop does (`train.jit_train_step`), then traces, lowers and
compiles it with the real XLA:TPU compiler. Nothing is materialized: the
batch and the state are ShapeDtypeStructs that carry their shardings.

It prints, per chip (per device: TPU7x's slices have two devices per chip,
and each gets half the chip's HBM; v4 is planned as megacore, one device a
chip): the params and the optimizer state as the
shardings lay them out, then XLA's `memory_analysis()` of the compiled
step (arguments, outputs, aliased donated state, temporaries, which are
the activations and the gradients, and generated code), their total against
the generation's HBM (`HBM_GIB`), whether it fits, the step's FLOPs from
`cost_analysis()` (of the partitioned program: one device's share), the mesh
and the partition rules each param matched. `--json PATH` writes the same.

Bad input (a topology libtpu does not know, a mesh that does not fit the
slice's devices, a batch the data x fsdp axes do not divide) is one
`error:` line naming the fix, exit status 2. A step that XLA cannot fit in
HBM is not an error: the plan says so, with the compiler's own message.

Measured on the development host (2 CPU cores shared with another job,
`nice -n 15`, jax 0.10.2, the libtpu of `.venv/libtpu-aot`), MAE ViT-B/16
at batch 4096 with the default mesh (README "The planner" has the memory):

  python -m maskmodel.aot --config configs/mae/imagenet_vit_b16.py --topology v5e:2x2
      does not fit (XLA: 95.46G of temporaries); 22 s, peak RSS 0.96 GiB
  ... --topology v5e:4x4     does not fit (17.48G); 17 s, 0.99 GiB
  ... --topology v5e:8x8     fits, 9.88 of 16 GiB; 211 s, 4.5 GiB
  python benchmarks/pod_plan.py --only vit_b16@v5e:16x16
      fits, 3.94 of 16 GiB; 191 s, 3.9 GiB

libtpu describes slices up to v5e:32x32, v6e:32x32 and v5p:16x16x24 at
once; v5e:16x16 is the largest compiled here. ViT-L/16 and ViT-H/14 have not
been compiled on this host (a ViT-B/16 step that fits already takes minutes).
"""
from __future__ import annotations

import collections
import math
import re
import resource
import sys
import time

import jax
import numpy as np

from maskmodel import aot, partitioning, sharding, train
from maskmodel.config import ConfigError

# HBM per chip, GiB. Cloud TPU's system-architecture pages give v5e 16 GB,
# v5p 95 GB and v6e 32 GB per chip (they write GB for these binary sizes);
# v4's 32 GiB and TPU7x's 192 GiB are not rechecked here.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32, "tpu7x": 192}

# v4 runs its two TensorCores per chip as one device (megacore), as a v4 VM
# does; the other generations' slices need no chip config.
_CHIP_CONFIG = {"v4": "megacore"}

_TOPOLOGY = re.compile(r"^([a-z0-9]+):(\d+(?:x\d+)+)$")


def parse_topology(name: str):
  """(generation, chips) of "v5e:16x16"; a one-line `ConfigError` otherwise."""
  m = _TOPOLOGY.match(name.strip().lower())
  if not m or m.group(1) not in HBM_GIB:
    raise ConfigError(
        f"unknown TPU topology {name!r}; use GENERATION:AxB (v5e, v6e) or "
        f"AxBxC (v4, v5p, tpu7x), e.g. v5e:16x16 or v5p:4x4x4; generations: "
        f"{', '.join(HBM_GIB)}.")
  return m.group(1), math.prod(int(d) for d in m.group(2).split("x"))


def slice_devices(name: str):
  """The compile-only devices of the slice `name`."""
  generation, _ = parse_topology(name)
  try:
    return aot.tpu_topology(name.strip().lower(),
                            _CHIP_CONFIG.get(generation)).devices
  except Exception as e:  # pylint: disable=broad-except
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConfigError(
        f"libtpu does not know the topology {name!r} ({reason}); use a slice "
        f"shape that {generation} comes in, e.g. "
        f"{aot.TPU_TOPOLOGIES[generation]}.") from None


def example_batch(config, task, batch_size):
  """ShapeDtypeStructs of one global batch: the task's own `preprocess` of
  a blank record of the config's image size, with a batch dim."""
  d = config.data
  record = {"image": np.zeros((d.image_size, d.image_size, d.channels), np.uint8),
            "label": np.int32(0)}
  one = task.preprocess(record, np.random.default_rng(0), train=True)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((batch_size,) + np.shape(x),
                                     np.asarray(x).dtype), one)


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the
  largest shard, which is every shard for even splits)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def sharded_bytes(tree) -> tuple[int, int]:
  """(bytes per device, global bytes) of the leaves that are split over at
  least one mesh axis; the other leaves are whole on every device."""
  split = [x for x in jax.tree.leaves(tree) if not x.sharding.is_fully_replicated]
  return (per_device_bytes(split),
          sum(x.size * x.dtype.itemsize for x in split))


def rule_usage(params, rules):
  """[(regex, spec, number of params it decided)] in rule order."""
  compiled = [re.compile(r) for r, _ in rules]
  counts = collections.Counter()
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = partitioning.path_str(path)
    for i, regex in enumerate(compiled):
      if regex.search(name):
        counts[i] += 1
        break
  return [(r, s if isinstance(s, str) else tuple(s), counts[i])
          for i, (r, s) in enumerate(rules)]


def plan(config, topology: str) -> dict:
  """Compiles `config`'s train step for the TPU slice `topology`; the plan
  as a dict of JSON-able values. Bad input raises a one-line `ConfigError`."""
  from maskmodel.tasks import get_task  # pylint: disable=g-import-not-at-top
  generation, chips = parse_topology(topology)
  devices = slice_devices(topology)
  mesh = sharding.make_mesh(devices, config.get("mesh"), whole_slice=True)
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % dp:
    raise ConfigError(
        f"batch_size={config.batch_size} is not divisible by the {dp} "
        f"data-parallel devices (mesh data x fsdp of {dict(mesh.shape)}); use "
        f"a multiple of {dp} (--config.batch_size) or move devices to "
        "'tensor'.")
  task = get_task(config)
  batch = example_batch(config, task, config.batch_size)
  batch_sh = sharding.batch_sharded(mesh)
  t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
  with jax.set_mesh(mesh):
    state, tx, schedule = train.abstract_state(config, task, batch, mesh)
    step = train.jit_train_step(task, tx, schedule,
                                jax.tree.map(lambda x: x.sharding, state), mesh)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=batch_sh), batch)
    lowered = step.trace(state, batch).lower(lowering_platforms=("tpu",))
    error = None
    try:
      compiled = lowered.compile()
    except Exception as e:  # pylint: disable=broad-except
      text = str(e)
      if "RESOURCE_EXHAUSTED" not in text and "memory" not in text.lower():
        raise
      compiled, error = None, text.strip().splitlines()[0][:400]
  compile_s = time.perf_counter() - t0
  r1 = resource.getrusage(resource.RUSAGE_SELF)

  per_chip = len(devices) // chips
  hbm = HBM_GIB[generation] * 2**30 // per_chip
  rules, _ = partitioning.rules_from_config(config)
  other = {k: v for k, v in state.items() if k not in ("params", "opt_state")}
  result = dict(
      topology=topology, generation=generation, chips=chips,
      devices=len(devices), devices_per_chip=per_chip,
      device_kind=devices[0].device_kind,
      mesh=dict(mesh.shape), batch_size=config.batch_size,
      params=int(sum(x.size for x in jax.tree.leaves(state["params"]))),
      bytes=dict(params=per_device_bytes(state["params"]),
                 optimizer=per_device_bytes(state["opt_state"]),
                 other_state=per_device_bytes(other),
                 batch=per_device_bytes(batch)),
      # Params and optimizer state: the split leaves, per device and whole.
      sharded=dict(zip(("per_device", "global"), sharded_bytes(
          (state["params"], state["opt_state"])))),
      hbm_bytes=hbm,
      rules=[dict(regex=r, spec=s, params=n)
             for r, s, n in rule_usage(state["params"], rules)],
      compile_s=round(compile_s, 1),
      compile_cpu_s=round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 1),
      max_rss_bytes=r1.ru_maxrss * 1024)
  if compiled is None:
    result.update(fits=False, compile_error=error)
    return result
  m = compiled.memory_analysis()
  mem = dict(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes,
             alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
             generated_code=m.generated_code_size_in_bytes)
  # Donated state is aliased: its outputs reuse the argument buffers.
  total = (mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
           + mem["generated_code"])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  result["bytes"].update(mem, total=total)
  result.update(fits=total <= hbm, flops_per_device=float(cost["flops"]))
  return result


def _gib(n):
  if abs(n) >= 2**30:
    return f"{n / 2**30:8.2f} GiB"
  return f"{n / 2**20:8.1f} MiB"


def format_plan(p: dict) -> str:
  b = p["bytes"]
  lines = [
      f"topology {p['topology']}: {p['chips']} chips, {p['devices']} devices "
      f"({p['device_kind']}), HBM {_gib(p['hbm_bytes']).strip()} per device",
      f"mesh {p['mesh']}  batch {p['batch_size']} "
      f"({p['batch_size'] // (p['mesh']['data'] * p['mesh']['fsdp'])} per "
      f"data-parallel device)  params {p['params'] / 1e6:.1f}M",
      "per device:",
      f"  params                 {_gib(b['params'])}",
      f"  optimizer state        {_gib(b['optimizer'])}",
      f"  other state            {_gib(b['other_state'])}",
      f"  batch                  {_gib(b['batch'])}",
      f"  (params and optimizer leaves split over the mesh: "
      f"{_gib(p['sharded']['per_device']).strip()} here of "
      f"{_gib(p['sharded']['global']).strip()} whole)"]
  if p["fits"] is False and "compile_error" in p:
    lines.append(f"does NOT fit: XLA says: {p['compile_error']}")
  else:
    lines += [
        "  XLA memory_analysis of the compiled step:",
        f"    arguments            {_gib(b['argument'])}",
        f"    outputs              {_gib(b['output'])}",
        f"    aliased (donated)   -{_gib(b['alias']).strip()}",
        f"    temporaries          {_gib(b['temp'])}   (activations, gradients)",
        f"    generated code       {_gib(b['generated_code'])}",
        f"  total                  {_gib(b['total'])} of "
        f"{_gib(p['hbm_bytes']).strip()}: "
        f"{'fits' if p['fits'] else 'does NOT fit'} "
        f"({100 * b['total'] / p['hbm_bytes']:.0f}%)",
        f"FLOPs per step per device {p['flops_per_device']:.4g} "
        f"(x {p['devices']} devices = {p['flops_per_device'] * p['devices']:.4g})"]
  lines.append("partition rules (params decided):")
  lines += [f"  {r['params']:4d}  {r['regex']!r} -> {r['spec']!r}"
            for r in p["rules"] if r["params"]]
  lines.append(f"compiled in {p['compile_s']} s ({p['compile_cpu_s']} CPU s), "
               f"max RSS {p['max_rss_bytes'] / 2**30:.2f} GiB")
  return "\n".join(lines)


def run(argv=None):
  """The command line; `python -m maskmodel.planner` and `python -m
  maskmodel.aot` both land here."""
  import json  # pylint: disable=g-import-not-at-top
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from maskmodel import main as cli  # pylint: disable=g-import-not-at-top
  topology = flags.DEFINE_string(
      "topology", None, "TPU slice to compile for, e.g. v5e:16x16, v5p:4x4x4.")
  json_out = flags.DEFINE_string("json", None, "Also write the plan here.")

  def main(_):
    if cli._CONFIG.value is None or not topology.value:  # pylint: disable=protected-access
      cli._fail("--config and --topology are required, e.g. --config "  # pylint: disable=protected-access
                "configs/mae/imagenet_vit_b16.py --topology v5e:4x4.")
    if not aot.libtpu_available():
      cli._fail("the planner needs libtpu: `make install` puts it in "  # pylint: disable=protected-access
                ".venv/libtpu-aot (or pip install -e '.[aot]').")
    try:
      p = plan(cli._CONFIG.value, topology.value)  # pylint: disable=protected-access
    except ConfigError as e:
      cli._fail(str(e))  # pylint: disable=protected-access
    print(format_plan(p), flush=True)
    if json_out.value:
      with open(json_out.value, "w") as f:
        json.dump(p, f, indent=1)

  app.run(main, argv=argv if argv is not None else sys.argv,
          flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
