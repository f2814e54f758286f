"""Pilot O (issue 41): which crops for MS-SSIM training, and is a warm start from the MSE weights
worth it?

MS-SSIM's five scales need crops larger than 16 x (window - 1) pixels: the recipe's 128 px crops
take a 7-tap window at most, CompressAI's standard is 11 taps (crops over 160 px). Two arms fine-tune
the v2 teacher (``zoo/v2``) for MS-SSIM side by side, one thread each, the same pixels per step so
that a step costs about the same: ``crop128`` (batch 8 of 128 px, 7-tap window) against
``crop256`` (batch 2 of 256 px, 11 taps). ``scratch`` trains the teacher for MS-SSIM from random
weights with the winner's crops, to set beside the warm start at equal CPU time. Each is validated at
q1, q3 and q6 (MS-SSIM dB with the standard 11-tap window on the whole validation images, and the RD
loss λ(1 − MS-SSIM) + bpp).

    python zoo/pilots/ms-ssim-crop/run.py crop128 crop256 [--steps N]   # from the repository root
    python zoo/pilots/ms-ssim-crop/run.py scratch --crop 256 [--steps N]
    python zoo/pilots/ms-ssim-crop/run.py --table   # the table of zoo/README.md, from the logs

Each arm's ``config.json`` and ``metrics.jsonl`` are copied beside this file when it finishes.
"""

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pair import DATA, train_side_by_side  # noqa: E402

from compressai_feds.campaign import Campaign, Recipe  # noqa: E402
from compressai_feds.checkpoint_io import exports_of  # noqa: E402
from compressai_feds.config import Stage, TrainingConfig  # noqa: E402

PILOT = Path(__file__).resolve().parent
#: arm: (batch, crop, MS-SSIM window taps, warm start)
ARMS = {"crop128": (8, 128, 7, True), "crop256": (2, 256, 11, True), "scratch": (None, None, None, False)}
WARM_LR, SCRATCH_LR = 1e-4, 5e-4


def arm_config(campaign: Campaign, arm: str, steps: int, crop: int) -> TrainingConfig:
    batch, crop_size, window, warm = ARMS[arm]
    if not warm:  # the crops of ``--crop``
        batch, crop_size, window = next((b, c, w) for b, c, w, _ in ARMS.values() if c == crop)
    base = campaign.training_config(campaign.jobs["teacher-vr"], DATA / "train", DATA / "val")
    (teacher,) = exports_of(Path("zoo/v2"), "feds-teacher-mse")
    return replace(
        base,
        student=str(teacher.resolve()) if warm else base.student,
        metric="ms-ssim",
        lmbda=None,
        stages=[Stage("rate_distortion", steps, WARM_LR if warm else SCRATCH_LR, 0.0, 0.0)],
        batch_size=batch,
        crop_size=crop_size,
        ms_ssim_window=window,
        val_qualities=[1, 3, 6],
        warmup=100 if warm else 0,
        ema_decay=0.0,
        val_every=max(steps // 3, 1),
        checkpoint_every=250,
    )


def log_of(arm: str) -> list[dict]:
    """The arm's records: from its run folder while there is one, else the copy beside this file."""
    for path in (Path("runs/pilots") / PILOT.name / arm / "metrics.jsonl", PILOT / arm / "metrics.jsonl"):
        if path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines()]
    return []


def table() -> None:
    """Each arm's validations: MS-SSIM dB and bpp at q1 / q3 / q6, and the RD loss against
    ``crop128``'s at the same step. CPU hours: one thread, the arm's median step time."""
    logs = {arm: log_of(arm) for arm in ARMS}
    reference = {r["step"]: r["val"] for r in logs["crop128"] if "val" in r}
    print("| arm | step | CPU h | q1: MS-SSIM dB (bpp) | q3 | q6 | RD loss vs crop128, q1 / q3 / q6 |")
    print("|---|---|---|---|---|---|---|")
    for arm, records in logs.items():
        step_seconds = (
            statistics.median(1 / r["it_per_s"] for r in records if r.get("it_per_s")) if records else 0
        )
        for record in (r for r in records if "val" in r):
            step, val = record["step"], record["val"]
            cells = [f"{val[f'q{q}']['ms_ssim_db']:.3f} ({val[f'q{q}']['bpp']:.4f})" for q in (1, 3, 6)]
            versus = ""
            if arm != "crop128" and step in reference:
                versus = " / ".join(
                    f"{(val[f'q{q}']['rd_loss'] / reference[step][f'q{q}']['rd_loss'] - 1) * 100:+.1f}%"
                    for q in (1, 3, 6)
                )
            print(
                f"| {arm} | {step:,} | {step * step_seconds / 3600:.2f} | "
                + " | ".join(cells)
                + f" | {versus} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("arms", nargs="*", help=f"of {', '.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--crop", type=int, default=256, choices=(128, 256), help="the scratch arm's crops")
    parser.add_argument("--table", action="store_true", help="print the table of the arms' validations")
    args = parser.parse_args()
    if args.table:
        return table()
    if not args.arms or set(args.arms) - set(ARMS):
        parser.error(f"name arms of {', '.join(ARMS)}")
    campaign = Campaign(Recipe.load("zoo/recipe.json"), "runs/campaign", "zoo", progress=False)
    if not DATA.is_dir():
        campaign.prepare_data()
    train_side_by_side(PILOT, {arm: arm_config(campaign, arm, args.steps, args.crop) for arm in args.arms})
    table()


if __name__ == "__main__":
    main()
