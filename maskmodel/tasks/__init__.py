"""Tasks by name. Each follows the contract of `base.py` (`init` and `loss`,
plus the optional `after_update`, `param_labels`, `load_pretrained`,
`eval_params`); the
loop knows nothing else about it."""
from maskmodel.config import ConfigError
from maskmodel.tasks.base import Task, TaskBase
from maskmodel.tasks.cae import CAETask
from maskmodel.tasks.ccvit import CCViTTask
from maskmodel.tasks.classify import ClassifyTask
from maskmodel.tasks.clm_mlm import CLMThenMLMTask
from maskmodel.tasks.colormae import ColorMAETask
from maskmodel.tasks.cropmae import CropMAETask
from maskmodel.tasks.dmtjepa import DMTJEPATask
from maskmodel.tasks.electra import ElectraTask
from maskmodel.tasks.hpm import HPMTask
from maskmodel.tasks.ijepa import IJEPATask
from maskmodel.tasks.lut import LUTTask
from maskmodel.tasks.mae import MAETask
from maskmodel.tasks.maskfeat import MaskFeatTask
from maskmodel.tasks.meap import CLMTask, MEAPTask
from maskmodel.tasks.mergedna import MergeDNATask
from maskmodel.tasks.mlm import MLMTask, NgramMLMTask
from maskmodel.tasks.salt import SALTTask, SALTTeacherTask
from maskmodel.tasks.simmim import SimMIMTask
from maskmodel.tasks.spark import SparKTask
from maskmodel.tasks.tokenunify import TokenUnifyTask

TASKS = {"mae": MAETask, "hpm": HPMTask, "simmim": SimMIMTask,
         "maskfeat": MaskFeatTask, "ccvit": CCViTTask, "cae": CAETask,
         "cropmae": CropMAETask,
         "colormae": ColorMAETask, "spark": SparKTask, "lut": LUTTask,
         "ijepa": IJEPATask, "dmtjepa": DMTJEPATask,
         "salt_teacher": SALTTeacherTask, "salt": SALTTask,
         "tokenunify": TokenUnifyTask,
         "classify": ClassifyTask, "mlm": MLMTask, "ngram_mlm": NgramMLMTask,
         "electra": ElectraTask, "meap": MEAPTask, "clm": CLMTask,
         "clm_mlm": CLMThenMLMTask, "mergedna": MergeDNATask}


def get_task(config):
  name = config.task.name
  if name not in TASKS:
    raise ConfigError(f"task.name={name!r} is unknown; use one of {sorted(TASKS)}.")
  return TASKS[name](config)
