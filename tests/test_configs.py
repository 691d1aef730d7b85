"""Every config file loads, validates and builds its model (shapes only); the
commands its docstring gives parse as the CLI parses them; and the values its
docstring states are the config's."""
import ast
import glob
import os
import re
import shlex

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import pytest

from conftest import ROOT, load_config
from maskmodel import config as config_lib
from maskmodel.tasks import get_task

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))
IDS = lambda p: os.path.relpath(p, ROOT)
# (width, depth, heads) of ViT-B, -L, -H (Dosovitskiy et al. 2021, Table 1).
VIT_SIZES = {"B": (768, 12, 12), "L": (1024, 24, 16), "H": (1280, 32, 16)}


def _docstring(path):
  with open(path) as f:
    return ast.get_docstring(ast.parse(f.read()))


def _commands(doc):
  """The argv (after `python -m maskmodel.main`) of each command in `doc`."""
  text = re.sub(r"\\\n\s*", " ", doc)
  return [shlex.split(line.split("maskmodel.main", 1)[1])
          for line in text.splitlines() if "python -m maskmodel.main" in line]


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_builds(path):
  config = load_config(path)
  config_lib.validate(config, num_devices=1)
  task = get_task(config)
  d = config.data
  if "seq_len" in d:   # a sequence corpus: windows of token ids
    batch = {"tokens": jax.ShapeDtypeStruct((2, d.seq_len), jnp.int32),
             "mask": jax.ShapeDtypeStruct((2, d.seq_len), jnp.bool_)}
  else:
    batch = {"image": jax.ShapeDtypeStruct((2, d.image_size, d.image_size, d.channels),
                                           jnp.float32)}
  batch["label"] = jax.ShapeDtypeStruct((2,), jnp.int32)
  params, _ = jax.eval_shape(lambda b: task.init(jax.random.PRNGKey(0), b), batch)
  n = sum(x.size for x in jax.tree.leaves(params))
  assert n > 0
  # ViT-B encoder (86M) + MAE decoder (26M incl. embed/pred); HPM adds a
  # second decoder stack; LUT a projector and a predictor; SimMIM and
  # MaskFeat only a linear head.
  if "mae/imagenet_vit_b16" in path:
    assert 105e6 < n < 120e6, n
  elif "hpm/imagenet_vit_b16" in path:
    assert 130e6 < n < 145e6, n
  elif "lut/imagenet_vit_b16" in path:  # + two 768-4096-768 BatchNorm MLPs
    assert n == 111_655_680 + 2 * (2 * 768 * 4096 + 2 * 4096), n
  elif "simmim/imagenet_vit_b16" in path or "maskfeat/imagenet_vit_b16" in path:
    assert 85e6 < n < 87e6, n


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_documented_commands_parse(path):
  """Each command in the docstring, parsed by absl as `main.py` parses it:
  the file exists, every `--config.key=value` names a key, and the result
  validates. One of them runs this very file."""
  commands = _commands(_docstring(path))
  runs_this_file = False
  for argv in commands:
    # The docstrings give paths from the repository root.
    argv = ["main.py"] + [os.path.join(ROOT, a) if a.startswith("configs/") else a
                          for a in argv]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    fv(argv)
    assert fv.workdir, argv
    config_lib.validate(fv.config, num_devices=1)
    runs_this_file |= fv["config"].config_filename.split(":")[0] == path
  assert runs_this_file, f"no command in the docstring of {path} runs it"


def _stated_values(doc, config, path):
  """(claim, stated, actual) for each value the docstring states that this
  test knows how to read."""
  c, out = config, []
  def claim(pattern, actual, parse=float):
    m = re.search(pattern, doc)
    if m:
      out.append((m.group(0), parse(m.group(1)), actual(m)))
  claim(r"ViT-([BLH])/\d+", lambda m: (c.model.width, c.model.depth, c.model.num_heads),
        VIT_SIZES.get)
  claim(r"ViT-[BLH]/(\d+)", lambda m: c.model.patch_size, int)
  claim(r"batch (\d+)", lambda m: c.batch_size, int)
  claim(r"blr ([\d.e-]+)", lambda m: c.optimizer.lr * 256 / c.batch_size)
  claim(r"mask (0\.\d+)", lambda m: c.task.mask_ratio)
  claim(r"(norm-pix) loss", lambda m: c.task.norm_pix_loss, bool)
  claim(r"(\d+)x\d+ decoder", lambda m: c.task.decoder.depth, int)
  claim(r"\d+x(\d+) decoder", lambda m: c.task.decoder.width, int)
  claim(r"layer-wise lr decay ([\d.]+)", lambda m: c.optimizer.layer_decay)
  claim(r"(embedded MNIST) sample", lambda m: c.data.name, lambda s: "mnist5k")
  claim(r"real (Fashion-MNIST)", lambda m: c.data.name, lambda s: "fashion_mnist")
  claim(r"normalized\s+with\s+mean\s+([\d.]+)", lambda m: c.data.mean[0])
  claim(r"normalized\s+with\s+mean\s+[\d.]+,\s+std\s+([\d.]+)", lambda m: c.data.std[0])
  claim(r"([\d,]+) steps at batch", lambda m: c.total_steps,
        lambda s: int(s.replace(",", "")))
  claim(r"steps at batch (\d+)", lambda m: c.batch_size, int)
  claim(r"mask ratio (0\.\d+)", lambda m: c.task.mask_ratio)
  claim(r"leave `task.init_from` (empty)", lambda m: c.task.init_from, lambda s: "")
  # "The argument is the number of epochs (default 800 ...)".
  m = re.search(r"number of epochs \(default (\d+)", doc)
  if m:
    epochs = int(m.group(1))
    claim(r"(\d+) warmup epochs",
          lambda m: c.optimizer.warmup_steps * epochs / c.total_steps, int)
    out.append((m.group(0), load_config(f"{path}:{epochs}").to_dict(), c.to_dict()))
  # `:smoke` "runs a few steps with a smaller model".
  if re.search(r"`:smoke` runs a few steps with a smaller model", doc):
    smoke = load_config(f"{path}:smoke")
    width = lambda m: m.width if "width" in m else sum(m.widths)  # vit | convnet
    out.append(("`:smoke` is smaller", True, smoke.total_steps < c.total_steps / 10
                and width(smoke.model) < width(c.model)))
  return out


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_docstring_states_the_config(path):
  doc, config = _docstring(path), load_config(path)
  claims = _stated_values(doc, config, path)
  assert claims, f"the docstring of {path} states no value this test reads"
  for text, stated, actual in claims:
    same = stated == (pytest.approx(actual) if isinstance(actual, float) else actual)
    assert same, f"{path}: the docstring says {text!r}; the config has {actual}"
  # Expected numbers kept in the README: the section exists and has a table.
  for section in re.findall(r'README "([^"]+)"', doc):
    with open(os.path.join(ROOT, "README.md")) as f:
      readme = f.read()
    m = re.search(rf"^#+ [^\n]*{re.escape(section)}[^\n]*$(.*?)(?=^#+ |\Z)", readme,
                  re.MULTILINE | re.IGNORECASE | re.DOTALL)
    assert m, f"{path} points to README section {section!r}, which does not exist"
    assert re.search(r"^\|.*\d\.\d+", m.group(1), re.MULTILINE), \
        f"README section {section!r} has no table of numbers"


# What a config file may call in the library: the schema defaults and the
# token-reduction sub-schema. A recipe (batch, lr, schedule, task dict) is
# written in the file itself (big_vision style).
SCHEMA_FUNCTIONS = {"base_config", "token_reduction"}


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_file_writes_its_recipe(path):
  with open(path) as f:
    tree = ast.parse(f.read())
  aliases = {a.asname or a.name for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module == "maskmodel"
             for a in node.names if a.name == "config"}
  calls = {node.func.attr for node in ast.walk(tree)
           if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
           and isinstance(node.func.value, ast.Name) and node.func.value.id in aliases}
  assert calls <= SCHEMA_FUNCTIONS, (
      f"{path} calls {sorted(calls - SCHEMA_FUNCTIONS)} of maskmodel.config; "
      "write the recipe in the config file")


def test_library_config_holds_no_recipe():
  public = {n for n in dir(config_lib) if not n.startswith("_")
            and callable(getattr(config_lib, n))}
  assert public - {"ConfigError", "validate"} == SCHEMA_FUNCTIONS, public


FASHION = os.path.join(ROOT, "configs", "mae", "fashion_mnist_vit_tiny.py")


def test_fashion_mnist_config_is_mae_with_honest_baselines():
  c = load_config(FASHION)
  assert c.data.name == "fashion_mnist" and c.data.data_dir is None
  assert (c.data.image_size, c.data.channels, c.data.num_classes) == (28, 1, 10)
  assert (c.data.mean, c.data.std) == ((0.2860,), (0.3530,))
  assert c.model.name == "vit" and c.task.name == "mae"
  assert {"knn", "linear_probe"} <= set(c.evals.names)
  assert c.evals.compare_random_init and c.evals.compare_pixels
  smoke = load_config(FASHION + ":smoke")
  assert smoke.data.name == "fashion_mnist" and smoke.total_steps <= 20
  config_lib.validate(smoke, num_devices=1)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed (make data)")
def test_fashion_mnist_normalization_is_the_training_set_statistics():
  from maskmodel import data  # pylint: disable=g-import-not-at-top
  c = load_config(FASHION)
  x = data.get_source("fashion_mnist", "train").images / 255.0
  assert (round(float(x.mean()), 4), round(float(x.std()), 4)) == (c.data.mean[0], c.data.std[0])


def test_fashion_mnist_smoke_runs_on_idx_files(tmp_path):
  """`:smoke` through the CLI on tiny IDX files in `data.data_dir`, so the
  suite needs no installed dataset; the report has the baseline columns."""
  import gzip  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  folder = tmp_path / "fashion"
  folder.mkdir()
  for prefix, n in (("train", 64), ("t10k", 32)):
    for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28))),
                        ("labels-idx1", np.arange(n) % 10)):
      raw = (bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
             + array.astype(np.uint8).tobytes())
      (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(raw))
  wd = tmp_path / "run"
  proc = run_cli("--config", FASHION + ":smoke", "--workdir", str(wd),
                 f"--config.data.data_dir={folder}", "--config.evals.batch_size=32")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "data=fashion_mnist" in proc.stdout
  report = (wd / "report.md").read_text()
  assert "# mae on fashion_mnist" in report
  assert "| metric | trained | random init | raw pixels |" in report
