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
    (["--config.model.name=resnet"], ["model.name='resnet' is unknown; use one of ['convnet', 'vit']"]),
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
