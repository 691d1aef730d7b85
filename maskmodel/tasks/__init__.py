"""Tasks by name. A task gives `init(rng, batch) -> (params, state)` and
`loss(params, state, batch, rng) -> (loss, (metrics, new_state))`; the loop
knows nothing else about it."""
from maskmodel.config import ConfigError
from maskmodel.tasks.classify import ClassifyTask
from maskmodel.tasks.mae import MAETask

TASKS = {"mae": MAETask, "classify": ClassifyTask}


def get_task(config):
  name = config.task.name
  if name not in TASKS:
    raise ConfigError(f"task.name={name!r} is unknown; use one of {sorted(TASKS)}.")
  return TASKS[name](config)
