"""Scale-out: the one loop on data x fsdp x tensor meshes of 8 simulated
devices. A step on any mesh equals the step on one device; FSDP holds 1/fsdp
of each sharded param and of its Adam moments per device; a checkpoint
restores onto another mesh and continues; bad meshes and rules stop at
start-up with one line."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from conftest import ROOT, xla_env
from maskmodel import config as config_lib, partitioning, sharding

MAE = os.path.join(ROOT, "configs", "mae", "mnist_vit_tiny.py") + ":smoke"
HPM = os.path.join(ROOT, "configs", "hpm", "mnist_vit_tiny.py") + ":smoke"

PRELUDE = f"""
import functools, sys
import jax, numpy as np
sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
from conftest import load_config
from maskmodel import data, partitioning, sharding, train
from maskmodel.tasks import get_task

def mesh_config(d, f, t):
  return (("data", d), ("fsdp", f), ("tensor", t))

def setup(path):
  config = load_config(path)
  task = get_task(config)
  src = data.get_source("mnist5k", "train")
  ds = data.train_dataset(src, batch_size=config.batch_size, seed=0,
                          spec=data.image_spec(config.data))
  return config, task, ds

def sharded_state(config, task, example, mesh):
  state, tx, schedule = train.initial_state(config, task, example, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  step = jax.jit(functools.partial(train.train_step, task, tx, schedule),
                 in_shardings=(shardings, sharding.batch_sharded(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)))
  return state, step
"""


def _run(script, *args, devices=8, timeout=600):
  env = xla_env(devices)
  proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(script),
                         *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc.stdout


EQUAL_STEPS = """
def check_fsdp_shards(state, mesh):
  # Each device holds 1/8 of every fsdp-sharded param, of its Adam moments
  # and of its EMA teacher (HPM); every kernel is fsdp-sharded.
  specs = partitioning.param_specs(state["params"], mesh)
  flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  adam = state["opt_state"][1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
  mirrors = [jax.tree.leaves(adam.mu), jax.tree.leaves(adam.nu)]
  if "teacher" in state["task_state"]:
    mirrors.append(jax.tree.leaves(state["task_state"]["teacher"]))
  sharded = 0
  for i, ((path, p), spec) in enumerate(zip(flat, spec_leaves)):
    name, whole = jax.tree_util.keystr(path), int(np.prod(p.shape))
    expect = whole // 8 if "fsdp" in tuple(spec) else whole
    for x in [p] + [m[i] for m in mirrors]:
      assert x.shape == p.shape, name
      shard = x.addressable_shards[0].data.shape
      assert int(np.prod(shard)) == expect, (name, spec, shard)
    sharded += "fsdp" in tuple(spec)
    if name.endswith("['kernel']"):
      assert "fsdp" in tuple(spec), (name, spec)
  assert sharded >= 10, sharded
  print("fsdp=8:", sharded, "of", len(flat), "params sharded, with",
        len(mirrors), "mirrors each")

for path in sys.argv[1:]:
  config, task, ds = setup(path)
  def run(devices, shape):
    mesh = sharding.make_mesh(devices, mesh_config(*shape))
    with jax.set_mesh(mesh):
      state, step = sharded_state(config, task, ds[0], mesh)
      init = jax.device_get(state["params"])
      for i in range(2):  # the first step's lr is 0 (warmup)
        batch = sharding.shard_batch(ds[i], sharding.batch_sharded(mesh))
        state, metrics = step(state, batch)
    if shape == (1, 8, 1):
      check_fsdp_shards(state, mesh)
    return init, jax.device_get(state), float(metrics["loss"])

  init1, s1, l1 = run(jax.devices()[:1], (1, 1, 1))
  moved = max(float(np.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(init1)))
  assert moved > 1e-4, moved
  # Data, FSDP and tensor sharding and their mix for MAE; for the task with
  # a teacher, FSDP, where the teacher must be sharded like the params. Each
  # mesh is one compile.
  shapes = [(1, 8, 1)] if "hpm" in path else [(8, 1, 1), (2, 2, 2), (1, 8, 1)]
  for shape in shapes:
    init, s, l = run(jax.devices(), shape)
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(init1)):
      np.testing.assert_array_equal(a, b)  # sharded init draws the same values
    assert abs(l - l1) <= 1e-5 * max(1.0, abs(l1)), (shape, l, l1)
    diff = max(float(np.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(s), jax.tree.leaves(s1)))
    assert diff < 1e-5, (path, shape, diff)
    print(path.split("/")[-2], shape, "loss", l, "max |state - 1 device|", diff)
print("OK")
"""


def test_step_on_every_mesh_equals_one_device():
  """MAE on (8,1,1), (2,2,2) and (1,8,1), and HPM with its EMA teacher in
  the task state on (1,8,1); on the fsdp=8 mesh, each device holds 1/8 of
  every fsdp-sharded param and of its Adam moments and EMA teacher."""
  out = _run(EQUAL_STEPS, MAE, HPM)
  assert "OK" in out and out.count("fsdp=8:") == 2, out
  print(out)


ELASTIC = """
import os, shutil
config = load_config(sys.argv[1])
workdir, shape, out, drop = sys.argv[2], eval(sys.argv[3]), sys.argv[4], sys.argv[5:]
config.total_steps, config.checkpoint_every, config.checkpoint_keep = 6, 2, 5
config.evals.names, config.evals.compare_random_init = (), False
config.mesh = mesh_config(*shape)
assert jax.device_count() == int(np.prod(shape))
state = train.train_and_evaluate(config, workdir)["state"]
leaves = jax.tree.leaves(jax.device_get({"params": state["params"],
                                         "opt_state": state["opt_state"]}))
np.savez(out, *leaves)
for step in drop:  # the next run resumes from the newest step left
  shutil.rmtree(os.path.join(workdir, "checkpoints", step))
print("OK")
"""


def test_checkpoint_restores_onto_another_mesh(tmp_path):
  """8 devices with fsdp=8 save steps 2, 4, 6; from step 2, 4 devices on a
  (2, 2) data x fsdp mesh; from their step 4, one device. The end state is
  the uninterrupted 8-device run's."""
  wd = tmp_path / "run"
  out = _run(ELASTIC, MAE, wd, (1, 8, 1), tmp_path / "a.npz", "4", "6", devices=8)
  assert "resumed" not in out and "mesh={'data': 1, 'fsdp': 8, 'tensor': 1}" in out
  out = _run(ELASTIC, MAE, wd, (2, 2, 1), tmp_path / "b.npz", "6", devices=4)
  assert "resumed from step 2" in out and "'fsdp': 2" in out, out
  out = _run(ELASTIC, MAE, wd, (1, 1, 1), tmp_path / "c.npz", devices=1)
  assert "resumed from step 4" in out and "devices=1 " in out, out
  a, c = np.load(tmp_path / "a.npz"), np.load(tmp_path / "c.npz")
  assert len(a.files) == len(c.files) > 10
  for k in a.files:
    np.testing.assert_allclose(c[k], a[k], atol=2e-5, rtol=1e-5, err_msg=k)


# Start-up errors: each a one-line ConfigError naming the fix.

@pytest.mark.parametrize("mesh,needle", [
    ((("data", 3), ("fsdp", 1), ("tensor", 1)), "spans 3 devices but there are 8"),
    ((("data", -1), ("fsdp", -1), ("tensor", 1)), "at most one axis may take the rest"),
    ((("data", -1), ("model", 2)), "mesh axis 'model' is unknown"),
    ((("data", -1), ("fsdp", 3)), "do not divide the 8 devices"),
    ((("data", 0), ("fsdp", 8)), "use a positive int"),
])
def test_bad_mesh(mesh, needle):
  with pytest.raises(config_lib.ConfigError, match=needle) as e:
    sharding.mesh_shape(mesh, 8)
  assert "\n" not in str(e.value)


def test_mesh_shape_fills_the_rest_and_defaults():
  assert sharding.mesh_shape(None, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert sharding.mesh_shape((("fsdp", -1), ("tensor", 2)), 8) == {
      "data": 1, "fsdp": 4, "tensor": 2}
  assert config_lib.base_config().mesh == sharding.DEFAULT_MESH


def test_batch_not_divisible_by_data_parallel_size(smoke_config):
  smoke_config.batch_size = 12
  with pytest.raises(config_lib.ConfigError,
                     match=r"batch_size=12 is not divisible by the 8 data-parallel") as e:
    config_lib.validate(smoke_config, 16, data_parallel=8)
  assert "\n" not in str(e.value)


PARAMS = {"encoder": {
    "block_0": {"attn": {"qkv": {"kernel": jax.ShapeDtypeStruct((32, 3, 4, 8), np.float32),
                                 "bias": jax.ShapeDtypeStruct((3, 4, 8), np.float32)}},
                "norm1": {"scale": jax.ShapeDtypeStruct((32,), np.float32)}},
    "patch_embed": {"kernel": jax.ShapeDtypeStruct((16, 32), np.float32)},
    "odd": jax.ShapeDtypeStruct((7, 5), np.float32)}}
MESH = AbstractMesh((2, 4, 2), sharding.AXES)


def test_default_rules():
  specs = partitioning.param_specs(PARAMS, MESH)
  enc = specs["encoder"]
  # Whole heads over "tensor": each device has the q, k and v of its heads.
  assert enc["block_0"]["attn"]["qkv"]["kernel"] == P("fsdp", None, "tensor")
  assert enc["block_0"]["attn"]["qkv"]["bias"] == P(None, "tensor")
  assert enc["block_0"]["norm1"]["scale"] == P()
  assert enc["patch_embed"]["kernel"] == P(None, "fsdp")  # its largest dim
  assert enc["odd"] == P()  # no dim divisible by fsdp: replicated
  # The optimizer state mirrors the params; a count is replicated.
  opt = ({"count": jax.ShapeDtypeStruct((), np.int32)}, {"mu": PARAMS})
  mirrored = partitioning.mirror_specs(opt, PARAMS, specs)
  assert mirrored[1]["mu"] == specs and mirrored[0]["count"] == P()


@pytest.mark.parametrize("rules,needle", [
    (((r"qkv", ()),), "no partition rule covers param encoder/block_0/norm1/scale"),
    (((r"nothing_here", ()), (r".*", "auto_fsdp")),
     "partition rule 'nothing_here' matches no param"),
    (((r"qkv/kernel", (None, None, "tensor", None, "fsdp")), (r".*", ())), "has 5 entries"),
    (((r"qkv/kernel", ("fsdp", "model")), (r".*", ())), "axis 'model' is not a mesh axis"),
    (((r"odd", ("fsdp",)), (r".*", ())), r"encoder/odd dim 0 \(7\) is not divisible"),
    (((r"(", ()),), "is not a regex"),
])
def test_bad_partition_rules(smoke_config, rules, needle):
  smoke_config.partition_rules = rules
  with pytest.raises(config_lib.ConfigError, match=needle) as e:
    given, check = partitioning.rules_from_config(smoke_config)
    partitioning.param_specs(PARAMS, MESH, given, check_unused=check)
  assert "\n" not in str(e.value)


def test_bad_mesh_through_the_cli(tmp_path):
  from conftest import SMOKE, run_cli  # pylint: disable=g-import-not-at-top
  proc = run_cli("--config", SMOKE, "--workdir", str(tmp_path),
                 "--config.mesh=(('data', 3), ('fsdp', 1))")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: mesh=[('data', 3), ('fsdp', 1)] spans 3 devices"), proc.stderr[-2000:]
