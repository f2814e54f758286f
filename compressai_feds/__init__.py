"""compressai-feds: the FEDS teacher and student codecs as a CompressAI plugin.

Importing the package also registers ``feds-teacher`` and ``feds-student`` (and
any other installed ``compressai.models`` plugin) in CompressAI's zoo.
"""

import warnings

with warnings.catch_warnings():
    # torch_geometric, which compressai imports, calls the deprecated
    # torch.jit.script at import time: not our users' concern.
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
    import compressai  # noqa: F401

from .config import Stage, TrainingConfig
from .models import FEATURE_NAMES, FEDSCodec, FEDSStudent, FEDSTeacher
from .quality import LAMBDAS
from .trainer import DistillationTrainer
from .zoo import feds_student, feds_teacher

__all__ = [
    "DistillationTrainer",
    "FEATURE_NAMES",
    "FEDSCodec",
    "FEDSStudent",
    "FEDSTeacher",
    "LAMBDAS",
    "Stage",
    "TrainingConfig",
    "feds_student",
    "feds_teacher",
]

__version__ = "0.1.0"

# compressai_feds/plugin_hook.py, installed as a top-level module (see its docstring)
from compressai_plugin_hook import register_plugins  # noqa: E402

register_plugins()
