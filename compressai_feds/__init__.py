"""compressai-feds: the FEDS teacher and student codecs as a CompressAI plugin.

``feds-teacher`` and ``feds-student`` (and any other installed
``compressai.models`` plugin) appear in CompressAI's zoo as soon as
``compressai.zoo`` is imported (the start-up hook ``compressai_plugin_hook``).
Importing this package is light: the names below load their modules (torch,
CompressAI, the trainer) when first used.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from compressai_plugin_hook import register_on_completion

# torch_geometric, which compressai imports, calls the deprecated torch.jit.script at
# import time: not our users' concern (a filter, so that the import stays where it is needed).
warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

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

# CompressAI's zoo lists feds-teacher and feds-student once the import that loads this package's
# modules completes, whichever module it began with (compressai_feds/plugin_hook.py, installed as
# the top-level module compressai_plugin_hook).
register_on_completion(__name__)

#: Where each public name lives, imported on first use (PEP 562).
_MODULES = {
    "DistillationTrainer": ".trainer",
    "FEATURE_NAMES": ".models",
    "FEDSCodec": ".models",
    "FEDSStudent": ".models",
    "FEDSTeacher": ".models",
    "LAMBDAS": ".quality",
    "Stage": ".config",
    "TrainingConfig": ".config",
    "feds_student": ".zoo",
    "feds_teacher": ".zoo",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
