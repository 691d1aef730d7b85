"""The run report: `report.md` with the loss-curve PNG and eval numbers.

Written through `etils.epath`, so the workdir may be on cloud storage.
"""
from __future__ import annotations

from maskmodel.evaluators.plots import loss_curve
from maskmodel.models import get_model
from maskmodel.paths import workdir_path


# Column titles of the baselines, in the order the table shows them.
BASELINES = {"random_init": "random init", "pixels": "raw pixels"}
_EVAL_NAMES = {"knn_accuracy": "k-NN", "linear_probe_accuracy": "linear probe"}


def eval_name(metric: str) -> str:
  """The words a verdict uses for a metric: `low_label_1%` is the fine-tune
  on 1% of the training labels."""
  if metric.startswith("low_label_"):
    return f"the {metric[len('low_label_'):]}-label fine-tune"
  return _EVAL_NAMES.get(metric, metric)


def raw_input_name(config) -> str:
  """What the no-encoder baseline ("pixels") is for this data: the raw
  pixels of an image, or a bag of k-mers of a sequence's token ids
  (`maskmodel.evaluators.features.raw_features`)."""
  if config.data.get("seq_len"):
    return f"bag of {int(config.evals.get('raw_kmer', 1))}-mers"
  return BASELINES["pixels"]


def pixels_verdicts(final: dict, pixels: dict, raw: str = "raw pixels") -> list[str]:
  """One sentence per metric with a no-encoder value (`raw` names it): who
  wins, with numbers.

  Every such metric is an accuracy, so higher is better.
  """
  out = []
  for k, p in pixels.items():
    if k not in final:
      continue
    name, t = eval_name(k), final[k]
    if p > t:
      out.append(f"{raw[0].upper()}{raw[1:]} beat the trained encoder on {name} "
                 f"({p:.4f} vs {t:.4f}).")
    elif t > p:
      out.append(f"The trained encoder beats {raw} on {name} ({t:.4f} vs {p:.4f}).")
    else:
      out.append(f"The trained encoder and {raw} tie on {name} ({t:.4f}).")
  return out


def write(workdir, config, final: dict, baselines: dict, *, train_seconds: float,
          steps_run: int):
  """`baselines` maps a key of BASELINES to that baseline's eval metrics."""
  workdir = workdir_path(workdir)
  loss_curve(workdir / "metrics.jsonl", workdir / "loss_curve.png")
  lines = [
      f"# {config.task.name} on {config.data.name}",
      "",
      f"- model: {get_model(config.model.name).describe(config)}",
      f"- steps: {config.total_steps} at batch {config.batch_size} "
      f"({steps_run} run in this process, {train_seconds:.0f} s of training)",
      "",
      "## Evaluation",
      "",
  ]
  cols = [b for b in BASELINES if baselines.get(b)]
  titles = dict(BASELINES, pixels=raw_input_name(config))
  lines += ["| metric | " + " | ".join(["trained"] + [titles[b] for b in cols]) + " |",
            "|---|---|" + "---|" * len(cols)]
  for k, v in final.items():
    row = [f"{v:.4f}"] + [f"{baselines[b][k]:.4f}" if k in baselines[b] else "-"
                          for b in cols]
    lines.append(f"| {k} | " + " | ".join(row) + " |")
  if any(k.startswith("low_label_") for k in final):
    lines += ["", "low_label_N%: test accuracy after fine-tuning the network "
              "and a new linear head on N% of the training labels "
              "(class-balanced), the same steps from the trained and the "
              f"initial params; on {titles['pixels']}, the linear head alone."]
  verdicts = pixels_verdicts(final, baselines.get("pixels", {}), titles["pixels"])
  if verdicts:
    lines += [""] + verdicts
  lines += ["", "![loss curve](loss_curve.png)", ""]
  if (workdir / "reconstructions.png").exists():
    lines += ["![original / masked / reconstructed](reconstructions.png)", ""]
  (workdir / "report.md").write_text("\n".join(lines))
