"""Bad input: each case fails with one clear line naming the fix, no traceback."""

import numpy as np
import pytest

from conftest import SMOKE, run_cli


def _assert_clean_error(proc, *needles):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  err = proc.stderr.strip().splitlines()[-1]
  assert err.startswith("error: ")
  for n in needles:
    assert n in err, err


@pytest.mark.parametrize("override,needles", [
    (["--config.no_such_key=1"], ["unknown config key", "no_such_key"]),
    (["--config.model.patch_size=5"], ["not divisible by model.patch_size=5"]),
    (["--config.task.mask_ratio=1.2"], ["mask_ratio=1.2 is outside (0, 1)"]),
    (["--config.data.name=imagenet_typo"], ["dataset 'imagenet_typo' is unknown"]),
    (["--config.model.name=resnet"], ["model.name='resnet' is unknown; use one of ['convnet', 'mergedna', 'seq', 'vit']"]),
    (["--config.model.name=convnet"], ["model.name='convnet' needs model.widths, model.depths, model.stem"]),
    (["--config.batch_size=abc"], ["batch_size"]),
])
def test_bad_config(tmp_path, override, needles):
  proc = run_cli("--config", SMOKE, "--workdir", str(tmp_path), *override)
  _assert_clean_error(proc, *needles)


def test_missing_config_file(tmp_path):
  proc = run_cli("--config", "configs/nope.py", "--workdir", str(tmp_path))
  _assert_clean_error(proc, "does not exist")


@pytest.mark.parametrize("args", [["--config"], ["--config="],
                                  ["--config", "--workdir", "workdirs/unused"]])
def test_config_without_a_file(args):
  proc = run_cli(*args)
  _assert_clean_error(proc, "--config needs a config file")
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_tfds_dataset_not_prepared(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  proc = run_cli("--config", SMOKE, "--workdir", str(tmp_path / "w"),
                 "--config.data.name=tfds:mnist",
                 f"--config.data.data_dir={tmp_path / 'empty'}")
  _assert_clean_error(proc, "not prepared", "tfds build mnist")


def test_corrupt_init_checkpoint(tmp_path):
  bad = tmp_path / "pretrain" / "checkpoints" / "10"
  (bad / "state").mkdir(parents=True)
  (bad / "state" / "garbage").write_text("not a checkpoint")
  proc = run_cli("--config", "configs/classify/mnist_vit_tiny.py:smoke",
                 "--workdir", str(tmp_path / "ft"),
                 f"--config.task.init_from={tmp_path / 'pretrain'}")
  _assert_clean_error(proc, "no readable checkpoint")


@pytest.mark.parametrize("crop", [0.0, 1.5])
def test_eval_crop_out_of_range(smoke_config, crop):
  from maskmodel import config as config_lib  # pylint: disable=g-import-not-at-top
  smoke_config.data.eval_crop = crop
  with pytest.raises(config_lib.ConfigError, match=f"data.eval_crop={crop} must be in"):
    config_lib.validate(smoke_config, 1)


@pytest.mark.parametrize("shape,needle", [
    ((5,), r"encoder/w has shape \(4,\) there but \(5,\) in the config"),
    (None, r"encoder/w is only in the config")])
def test_init_from_of_another_model(shape, needle):
  from maskmodel import checkpoint  # pylint: disable=g-import-not-at-top
  from maskmodel.tasks.classify import transfer_encoder  # pylint: disable=g-import-not-at-top
  pretrained = {"encoder": {"b": np.zeros(4)}}
  if shape:
    pretrained["encoder"]["w"] = np.zeros(4)
  params = {"encoder": {"b": np.zeros(4), "w": np.zeros(shape or 4)}, "head": np.zeros(2)}
  with pytest.raises(checkpoint.CheckpointError, match=needle + ".*model config of the"):
    transfer_encoder(params, pretrained)


def test_diverged_run_stops_and_keeps_only_good_checkpoints(tmp_path):
  import re  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from conftest import checkpoint_steps  # pylint: disable=g-import-not-at-top
  wd = tmp_path / "run"
  # lr 1e30: the first update sends the weights to ~1e30, the next loss is NaN.
  proc = run_cli("--config", SMOKE, "--workdir", str(wd), "--config.total_steps=10",
                 "--config.checkpoint_every=1", "--config.log_every=5",
                 "--config.optimizer.warmup_steps=0", "--config.optimizer.lr=1e30",
                 "--config.evals.names=()")
  _assert_clean_error(proc, "training diverged", "NaN or Inf at step",
                      "lower optimizer.lr (now 1e+30)", "optimizer.grad_clip")
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  bad = int(re.search(r"at step (\d+)", proc.stderr).group(1))
  steps = checkpoint_steps(wd)
  assert steps and max(steps) < bad
  assert f"the last checkpoint (step {max(steps)}) is untouched" in proc.stderr
  mngr = ocp.CheckpointManager(str(wd / "checkpoints"))
  for step in steps:  # every saved step is finite
    state = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    for leaf in jax.tree.leaves(state["params"]):
      assert np.isfinite(leaf).all(), step


def test_divergence_guard_keeps_the_first_bad_step():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from maskmodel import train  # pylint: disable=g-import-not-at-top
  first = jnp.int32(0)
  for step, loss, norm in [(1, 1.0, 2.0), (2, 1.0, jnp.inf), (3, jnp.nan, 1.0)]:
    first = train._first_nonfinite(first, step, jnp.float32(loss), jnp.float32(norm))
  assert int(first) == 2
  assert bool(train._all_finite({"a": jnp.ones(3), "n": jnp.arange(3)}))
  assert not bool(train._all_finite({"a": jnp.array([1.0, jnp.nan])}))


def test_the_step_refuses_implicit_host_transfers(tmp_path, smoke_config,
                                                  monkeypatch):
  """The loop places each batch on the mesh itself; a batch that reached the
  step as a host array would be copied silently at every step, so the step
  runs under a transfer guard and stops instead."""
  from maskmodel import sharding, train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sharding, "shard_batch", lambda batch, _: batch)
  c = smoke_config
  c.total_steps, c.optimizer.warmup_steps, c.evals.names = 1, 0, ()
  with pytest.raises(Exception, match="[Dd]isallowed host-to-device transfer"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
