"""ColorMAE: Exploring Data-Independent Masking Strategies in Masked
AutoEncoders (Hinojosa et al. 2024).

MAE unchanged but for the mask: windows of filtered noise fields choose the
visible patches (`maskmodel/masking/color.py`; green, band-pass noise by
default). The fields are made once at `init` from `task.noise_seed` and
kept as frozen task state, so they are checkpointed once per run.
"""
from __future__ import annotations

from maskmodel.config import ConfigError
from maskmodel.masking.color import COLORS, color_noise_mask, noise_fields
from maskmodel.tasks.mae import MAETask


class ColorMAETask(MAETask):
  """MAE's task with ColorMAE's noise masks."""

  def __init__(self, config):
    super().__init__(config)
    if config.task.color not in COLORS:
      raise ConfigError(f"task.color={config.task.color!r} is unknown; use "
                        f"one of {COLORS}.")

  def init(self, rng, batch):
    params, state = super().init(rng, batch)
    t = self.config.task
    fields = noise_fields(t.color, t.num_fields, t.field_size, t.noise_seed)
    return params, dict(state, frozen={"noise_fields": fields})

  def mask_policy(self, rng, batch_size, state=None):
    if state is None:  # init traces the model only; any mask of the count
      return super().mask_policy(rng, batch_size)
    return color_noise_mask(rng, batch_size, self.grid,
                            fields=state["frozen"]["noise_fields"], keep=self.keep)
