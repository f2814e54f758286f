"""Pilot J (2026-12-01 (2e89fba)): does balancing the qualities (``Stage.balance_qualities``) help the low
rates of a variable-rate model? Two arms from the same weights (baseline-vr's latest export),
side by side on one thread each, identical but for ``balance_qualities``: 1,500 steps at lr
2.5e-4 (the students' ``channel_distillation_low_lr`` stage), a 100-step warm-up (fresh
optimizers), no moving average, validated at the end at q1-q6 on the validation split.

    python zoo/pilots/balance-qualities/run.py [SEED]   # the campaign stopped; from the repository root

Writes each arm's ``config.json`` and ``metrics.jsonl`` beside this file (``ARM`` for seed 0,
``ARM-seedN`` else) and prints the table.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pair import run_pair  # noqa: E402

from compressai_feds.config import Stage  # noqa: E402

STEPS = 1500


def main(seed: int) -> None:
    arms = {
        name: Stage("channel_distillation_low_lr", STEPS, 2.5e-4, 1.0, 1.0, balance_qualities=balance)
        for name, balance in (("uniform", False), ("balanced", True))
    }
    run_pair(Path(__file__).resolve().parent, "baseline-vr", arms, seed)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
