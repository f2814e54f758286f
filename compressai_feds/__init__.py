"""compressai-feds: the FEDS teacher and student codecs as a CompressAI plugin.

Importing the package also registers ``feds-teacher`` and ``feds-student`` (and
any other installed ``compressai.models`` plugin) in CompressAI's zoo.
"""

from .config import Stage, TrainingConfig
from .models import FEATURE_NAMES, FEDSCodec, FEDSStudent, FEDSTeacher
from .plugin_hook import register_plugins
from .trainer import DistillationTrainer
from .zoo import LAMBDAS, feds_student, feds_teacher

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

register_plugins()
