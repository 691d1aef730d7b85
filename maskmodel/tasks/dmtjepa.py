"""DMT-JEPA: Discriminative Masked Targets for Joint-Embedding Predictive
Architecture (DMTJEPA/DMTJEPA, a fork of facebookresearch/ijepa).

I-JEPA (`maskmodel.tasks.ijepa`: the same masks, predictor, loss, EMA and
schedules) with discriminative targets, as the official `src/train.py` and
`src/models/local_agg_head.py` compute them:

- Target: the EMA encoder on the whole image, layer-normed without affine,
  then the target head, an EMA copy of the online head, in its local mode:
  for each patch, the 3 x 3 window around it minus itself, wrapping at the
  borders; the 4 window patches most cosine-similar to it; two
  class-attention blocks whose query starts as the image's mean token and
  attends to [query, those 4]; a LayerNorm. Then gathered at the targets.
- Context: the context encoder, then the online head in its global mode
  (the class token is the mean of the context tokens, and each block adds
  its attention output to every token), then the predictor.
- The EMA (linear 0.996 -> 1) moves the target encoder and the target head.

Deliberate differences, named: the official code tiles the mean token so
that for batch > 1 a patch's query comes from another image; here each
image's own mean starts its queries (the intent). The heads start from
maskmodel's initialization (Xavier-uniform), not the official truncated
normal (std 0.02). The others are I-JEPA's (see `maskmodel.tasks.ijepa`).
The paper is Mo and Yun 2024, arXiv 2405.17995.
"""
from __future__ import annotations

from maskmodel.config import ConfigError
from maskmodel.models.jepa import DMTJEPA, LocalAggregationHead
from maskmodel.tasks.ijepa import IJEPATask


class DMTJEPATask(IJEPATask):
  """I-JEPA's task with the local aggregation heads."""

  TEACHER = ("encoder", "head")   # the target head is an EMA of the online one

  def __init__(self, config):
    super().__init__(config)
    m, t = config.model, config.task
    if not 1 <= t.neighbours <= t.window ** 2 - 1 or t.window % 2 == 0:
      raise ConfigError(f"task.neighbours={t.neighbours} and task.window="
                        f"{t.window} must be an odd window and 1 <= neighbours "
                        "<= window^2 - 1 (DMT-JEPA: 4 of a 3 x 3 window).")
    if t.window > min(self.grid):
      raise ConfigError(f"task.window={t.window} is larger than the "
                        f"{self.grid[0]}x{self.grid[1]} patch grid.")
    self.head = LocalAggregationHead(self.grid, m.num_heads, t.neighbours,
                                     t.window, m.mlp_ratio, self.model.encoder.dtype)
    self.model = DMTJEPA(encoder=self.encoder, head=self.head,
                         predictor=self.model.predictor)

  def target_head(self, teacher, h):
    return self.head.apply({"params": teacher["head"]}, h, local=True)
