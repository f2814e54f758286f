"""Pilot L (2026-12-03 (c5e3ada)): does the v2 teacher's hyper-latent die because its first latent slice,
the one coded from the hyperprior alone, is small? In zoo v2 the students' ``z`` lives (first
slice 32 channels; it saves 17-27% of ``y``'s rate on Kodak) and the teacher's dies between steps
2,000 and 5,000 (first slice 16 channels). Two teachers from scratch, side by side on one thread
each, teacher-vr's recipe (variable rate, AuxT, its first stage: lr 5e-4, no balancing, no moving
average) and seed, differing only in the latent slices: teacher-vr's (16, 16, 32, 64, 128) against
(32, 32, 64, 128), the same latent width M = 256. Read: the training ``bpp_z`` of each (its
50-step means in ``metrics.jsonl``) and the validation RD loss at q1-q6 at the end.

    python zoo/pilots/teacher-first-slice/run.py [STEPS]   # from the repository root; nothing else running
"""

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pair import DATA, train_side_by_side  # noqa: E402

from compressai_feds.campaign import Campaign, Recipe  # noqa: E402
from compressai_feds.config import Stage  # noqa: E402

ARMS = {"slices-16": [16, 16, 32, 64, 128], "slices-32": [32, 32, 64, 128]}


def main(steps: int) -> None:
    pilot = Path(__file__).resolve().parent
    campaign = Campaign(Recipe.load("zoo/recipe.json"), "runs/campaign", "zoo", progress=False)
    base = campaign.training_config(campaign.jobs["teacher-vr"], DATA / "train", DATA / "val")
    stage = Stage("rate_distortion", steps, 5e-4, 0.0, 0.0)
    configs = {
        arm: replace(
            base,
            student_args={**base.student_args, "groups": groups},
            stages=[stage],
            ema_decay=0.0,
            val_every=steps,
            checkpoint_every=500,
            restart_warmup=0,
        )
        for arm, groups in ARMS.items()
    }
    metrics = train_side_by_side(pilot, configs)
    print(f"teachers from scratch, {steps} steps: training bpp_z (50-step means), validation RD loss")
    for arm, records in metrics.items():
        z = {r["step"]: r["bpp_z"] for r in records if "bpp_z" in r}
        marks = [s for s in (100, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000) if s in z]
        val = [r for r in records if "val" in r][-1]["val"]
        speed = [r["it_per_s"] for r in records if "it_per_s" in r]
        print(
            f"{arm}: bpp_z " + " ".join(f"{s}:{z[s]:.4f}" for s in marks)
            + " | RD " + " / ".join(f"{val[f'q{q}']['rd_loss']:.4f}" for q in range(1, 7))
            + f" | {sum(speed) / len(speed):.2f} steps/s"
        )  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
