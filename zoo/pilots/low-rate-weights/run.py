"""Pilot K (2026-12-02 (8136fd5)): can weighing the low rates' balanced terms more
(``Stage.quality_weights``) close the variable-rate models' gap to v1's fixed-rate models at
q1 (baseline-vr finished 2.0% behind v1's no-teacher q1 model, 8.6-55.5% ahead at q2-q6),
and at what cost to the other qualities? Two arms from baseline-vr's finished weights, side
by side on one thread each, both balanced, identical but for ``quality_weights`` (q1 2, q2
1.5, the rest 1): 1,500 steps at lr 2.5e-4 (the teacher's stage of the moment), a 100-step
warm-up (fresh optimizers), no moving average, validated at the end at q1-q6 on the
validation split. Protocol of pilot J (``../balance-qualities``).

    python zoo/pilots/low-rate-weights/run.py [SEED]   # the campaign paused; from the repository root
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pair import run_pair  # noqa: E402

from compressai_feds.config import Stage  # noqa: E402

STEPS = 1500
LOW_RATE_WEIGHTS = [2.0, 1.5, 1.0, 1.0, 1.0, 1.0]


def main(seed: int) -> None:
    arms = {
        name: Stage(
            "low_rate_pilot", STEPS, 2.5e-4, 0.0, 0.0, balance_qualities=True, quality_weights=weights
        )
        for name, weights in (("balanced", None), ("low-rate", LOW_RATE_WEIGHTS))
    }
    run_pair(Path(__file__).resolve().parent, "baseline-vr", arms, seed)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
