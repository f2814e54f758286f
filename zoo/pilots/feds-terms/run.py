"""Pilot N (issue 40): which distillation term costs the student bits, and which pays.

Every arm is the v2 FEDS student's recipe (``student-vr`` in ``zoo/recipe.json``: variable
rate, auxiliary transform, q1-q6 at once, lr 5e-4, moving average 0.999, batch 8 of 128 px
crops), from scratch with seed 0, trained on one thread beside another arm, validated every
1,000 steps at q1-q6 on the validation split. The arms differ only in their distillation loss
(``ARMS``); the schedule is the v2 student's shortened: feature alignment to 4,000, the
channel-level stage to 9,000, fine-tuning on rate-distortion alone at lr 5e-5 to 10,000.
Arms that share their first 4,000 steps with ``feature-only`` (the trunk) branch from its
checkpoint at 4,000 (``trunk-4000``) instead of training them again.

    python zoo/pilots/feds-terms/run.py ARM [ARM]            # from the repository root: trains side by side
    python zoo/pilots/feds-terms/run.py ARM --until 4000     # stops there (the trunk's branch point)
    python zoo/pilots/feds-terms/run.py --table              # the table of zoo/README.md
    python zoo/pilots/feds-terms/run.py --rates              # branches' training rate against the trunk's
    python zoo/pilots/feds-terms/run.py --plot zoo/pilots/feds-terms/arms.png  # the same, per quality
    python zoo/pilots/feds-terms/run.py --keep ARM trunk-4000  # their checkpoints, to commit
    python zoo/pilots/feds-terms/run.py ARM --seed 1         # another data order (``ARM-seed1``)

Each arm's run lives in ``runs/pilots/feds-terms/ARM`` (its checkpoint resumes exactly; with a seed
N other than 0, ``ARM-seedN``, against its own trunk ``trunk-4000-seedN`` and no teacher); its
``config.json`` and ``metrics.jsonl`` are copied beside this file when it stops. On a fresh
clone an arm resumes from ``checkpoints/ARM.pth.tar`` (and branches from
``checkpoints/trunk-4000.pth.tar``), where ``--keep`` put them.
"""

import argparse
import json
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pair import DATA, train_side_by_side  # noqa: E402

from compressai_feds.bdrate import Curve, CurveError, bd_rate  # noqa: E402
from compressai_feds.campaign import Campaign, Recipe  # noqa: E402
from compressai_feds.config import Stage, TrainingConfig  # noqa: E402
from compressai_feds.plots import our_style  # noqa: E402

PILOT = Path(__file__).resolve().parent
RUNS = Path("runs/pilots") / PILOT.name
BRANCH_STEP = 4000
LR, FINE_TUNING_LR = 5e-4, 5e-5


def schedule(feature: float, channel: float, **channel_stage: object) -> list[Stage]:
    """Feature alignment (4,000 steps), the channel-level stage (5,000), fine-tuning (1,000)."""
    return [
        Stage("feature_alignment", BRANCH_STEP, LR, feature, 0.0),
        Stage("channel_distillation", 5000, LR, feature, channel, **channel_stage),
        Stage("fine_tuning", 1000, FINE_TUNING_LR, 0.0, 0.0),
    ]


STANDARDIZED_LAMBDA = {"channel_form": "standardized_kl", "channel_follows_lambda": True}

#: arm: (distils, its stages, settings beside the recipe's)
ARMS: dict[str, tuple[bool, list[Stage], dict]] = {
    "no-teacher": (False, schedule(0.0, 0.0), {}),
    "feature-only": (True, schedule(0.3, 0.0), {}),  # the trunk; no channel term
    "feds-v2": (True, schedule(0.3, 10.0), {}),  # today's FEDS: spatial KL x10
    "standardized-lambda": (True, schedule(0.3, 10.0), STANDARDIZED_LAMBDA),
    "feature-decay": (True, schedule(0.3, 0.0, distillation_decay=True), {}),
    "reconstruction": (True, schedule(0.3, 0.0, reconstruction_weight=0.5), {}),
    # added at 8,000 steps of the first branches, whose lead over no teacher grew with the
    # quality (q1 +3%, q6 -7%): the feature term weighted by each image's λ over the mean
    "feature-lambda": (True, schedule(0.3, 0.0), {"feature_follows_lambda": True}),
}
TRUNK = "feature-only"
TRUNK_AT_BRANCH = f"trunk-{BRANCH_STEP}"
KEPT = PILOT / "checkpoints"


def run_name(name: str, seed: int) -> str:
    """The run of arm (or trunk checkpoint) ``name`` with data-order ``seed``."""
    return name if seed == 0 else f"{name}-seed{seed}"


def arm_config(campaign: Campaign, arm: str, until: int | None, seed: int) -> TrainingConfig:
    distils, stages, settings = ARMS[arm]
    base = campaign.training_config(campaign.jobs["student-vr"], DATA / "train", DATA / "val")
    if until is not None:  # the stages cut at ``until``
        cut, start = [], 0
        for stage in stages:
            if start < until:
                cut.append(replace(stage, steps=min(stage.steps, until - start)))
            start += stage.steps
        stages = cut
    return replace(
        base,
        teacher=base.teacher if distils else None,
        stages=stages,
        val_every=1000,
        checkpoint_every=500,
        seed=seed,
        **settings,
    )


def restore(name: str, seed: int) -> None:
    """On a fresh clone: the run folder of ``name`` (an arm or ``trunk-4000``) from its committed
    checkpoint (``checkpoints/NAME.pth.tar``, see ``--keep``) and the log beside this file."""
    run = RUNS / run_name(name, seed)
    kept = KEPT / f"{run.name}.pth.tar"
    if (run / "checkpoint.pth.tar").is_file() or not kept.is_file():
        return
    run.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kept, run / "checkpoint.pth.tar")
    log = PILOT / run_name(TRUNK if name == TRUNK_AT_BRANCH else name, seed) / "metrics.jsonl"
    if log.is_file():  # the trainer drops the records after the checkpoint's step
        shutil.copyfile(log, run / "metrics.jsonl")


def keep(name: str, seed: int) -> None:
    """Copies the latest checkpoint of ``name`` where it is committed (``checkpoints/``)."""
    KEPT.mkdir(exist_ok=True)
    name = run_name(name, seed)
    shutil.copyfile(RUNS / name / "checkpoint.pth.tar", KEPT / f"{name}.pth.tar")


def branch(arm: str, seed: int) -> None:
    """Starts ``arm`` from the trunk's checkpoint at ``BRANCH_STEP`` (``trunk-4000``) unless it
    has a checkpoint of its own; the trunk itself starts from scratch while there is none."""
    restore(arm, seed)
    run = RUNS / run_name(arm, seed)
    if (run / "checkpoint.pth.tar").is_file() or not ARMS[arm][0]:
        return
    restore(TRUNK_AT_BRANCH, seed)
    source = RUNS / run_name(TRUNK_AT_BRANCH, seed)
    if source.is_dir():
        shutil.copytree(source, run, dirs_exist_ok=True)
    elif arm != TRUNK:
        raise SystemExit(
            f"{arm} branches from {source}: train {TRUNK} with --until {BRANCH_STEP} (and --seed {seed}) first"
        )


def log_path(arm: str) -> Path | None:
    """The arm's log: in its run folder while there is one, else the copy beside this file."""
    return next(
        (p for p in (RUNS / arm / "metrics.jsonl", PILOT / arm / "metrics.jsonl") if p.is_file()), None
    )


def seconds_per_step(arm: str) -> float:
    """Median time of a training step over the arm's 50-step windows (those with a validation
    or a checkpoint in them count for little in a median)."""
    path = log_path(arm)
    records = map(json.loads, path.read_text().splitlines()) if path else []
    return statistics.median(1 / r["it_per_s"] for r in records if r.get("it_per_s"))


def validations(arm: str) -> dict[int, dict]:
    """The arm's validation at each step: the better (geometric-mean RD loss) of its raw and
    averaged weights, as the trainer keeps."""
    path = log_path(arm)
    if path is None:
        return {}
    found = {}
    for record in map(json.loads, path.read_text().splitlines()):
        if "val" in record:
            kept = [record["val"], *([record["val_ema"]] if "val_ema" in record else [])]
            found[record["step"]] = min(kept, key=lambda v: v["rd_loss"])
    return found


def curve(name: str, val: dict) -> Curve:
    qualities = range(1, 7)
    return Curve.from_points(
        name, [val[f"q{q}"]["bpp"] for q in qualities], [val[f"q{q}"]["psnr"] for q in qualities]
    )


def bd_cell(anchor: dict, val: dict, arm: str) -> str:
    try:
        return f"{bd_rate(curve('no-teacher', anchor), curve(arm, val)):+.2f}%"
    except CurveError as exc:
        return exc.reason


def table(seed: int) -> None:
    """Each arm at each validated step against no teacher: at equal steps (RD loss per quality,
    relative; BD-rate of the six validation points) and at equal CPU time (BD-rate against the
    no-teacher validation with the most steps done in at most the arm's CPU time). CPU hours:
    one thread, the arm's median step time."""
    anchor_run = run_name("no-teacher", seed)
    anchor = validations(anchor_run)
    anchor_cost = seconds_per_step(anchor_run) if anchor else 0.0
    print(
        "| arm | step | CPU h | RD loss q1..q6 | vs no teacher at equal steps, q1..q6 | BD-rate, equal steps "
        "| BD-rate, equal CPU (no teacher's step) |"
    )
    print("|---|---|---|---|---|---|---|")
    for arm in ARMS:
        name = run_name(arm, seed)
        found = validations(name)
        cost = seconds_per_step(name) if found else 0.0
        for step, val in sorted(found.items()):
            if ARMS[arm][0] and arm != TRUNK and step <= BRANCH_STEP:
                continue  # the trunk's, before the branch
            rd = [val[f"q{q}"]["rd_loss"] for q in range(1, 7)]
            cells = [f"{step * cost / 3600:.2f}", " / ".join(f"{v:.4f}" for v in rd), "", "", ""]
            if arm != "no-teacher" and step in anchor:
                base = [anchor[step][f"q{q}"]["rd_loss"] for q in range(1, 7)]
                cells[2] = " / ".join(f"{(v / b - 1) * 100:+.1f}%" for v, b in zip(rd, base, strict=True))
                cells[3] = bd_cell(anchor[step], val, arm)
            affordable = [s for s in anchor if s * anchor_cost <= step * cost]
            if arm != "no-teacher" and affordable:
                cells[4] = f"{bd_cell(anchor[max(affordable)], val, arm)} ({max(affordable):,})"
            print(f"| {name} | {step:,} | " + " | ".join(cells) + " |")


def plot(output: Path, seed: int) -> None:
    """A panel per quality: each arm's validation RD loss against no teacher's at the same step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    anchor = validations(run_name("no-teacher", seed))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True, sharey=True)
    for index, arm in enumerate(a for a in ARMS if a != "no-teacher"):
        found = validations(run_name(arm, seed))
        steps = [s for s in sorted(found) if s in anchor and (arm == TRUNK or s >= BRANCH_STEP)]
        if len(steps) < 2:  # not validated since its branch
            continue
        for quality, ax in enumerate(axes.flat, start=1):
            gap = [
                (found[s][f"q{quality}"]["rd_loss"] / anchor[s][f"q{quality}"]["rd_loss"] - 1) * 100
                for s in steps
            ]
            ax.plot(steps, gap, label=run_name(arm, seed), **our_style(index))
    for quality, ax in enumerate(axes.flat, start=1):
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"q{quality}")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("RD loss vs no teacher (%)")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Pilot N: validation RD loss against no teacher at equal steps (below 0: distillation pays)")
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def training_rates(seed: int) -> None:
    """Each branch's training rate and MSE after the branch point against the trunk's on the
    same batches (the arms draw the same crops and qualities): the immediate cost of a term."""

    def windows(arm: str) -> dict[int, dict]:
        path = log_path(arm)
        records = map(json.loads, path.read_text().splitlines()) if path else []
        return {r["step"]: r for r in records if "bpp_loss" in r and r["step"] > BRANCH_STEP}

    trunk = windows(run_name(TRUNK, seed))
    print(f"| arm | steps after {BRANCH_STEP:,} | training bpp vs {TRUNK} | training MSE vs {TRUNK} |")
    print("|---|---|---|---|")
    for arm in ARMS:
        if arm in (TRUNK, "no-teacher"):
            continue
        ours = windows(run_name(arm, seed))
        shared = sorted(set(ours) & set(trunk))
        if not shared:
            continue
        cells = [
            sum(ours[s][key] for s in shared) / sum(trunk[s][key] for s in shared) - 1
            for key in ("bpp_loss", "mse_loss")
        ]
        print(
            f"| {arm} | {shared[0] - 50:,}-{shared[-1]:,} | {cells[0] * 100:+.1f}% | {cells[1] * 100:+.1f}% |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("arms", nargs="*", help=f"of {', '.join(ARMS)}")
    parser.add_argument("--until", type=int, help="stop every arm at this step")
    parser.add_argument("--seed", type=int, default=0, help="data-order seed (runs named ARM-seedN)")
    parser.add_argument("--table", action="store_true", help="print the table of the arms validated so far")
    parser.add_argument(
        "--rates", action="store_true", help="each branch's training rate and MSE against the trunk's, paired"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help=f"commit-ready: copy the named runs' checkpoints (or {TRUNK_AT_BRANCH}'s)",
    )
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="draw each arm against no teacher, per quality"
    )
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, args.seed)
        return
    if args.table:
        table(args.seed)
        return
    if args.rates:
        training_rates(args.seed)
        return
    unknown = set(args.arms) - set(ARMS) - ({TRUNK_AT_BRANCH} if args.keep else set())
    if unknown or not args.arms:
        parser.error(f"name arms of {', '.join(ARMS)} (unknown: {', '.join(sorted(unknown)) or 'none'})")
    if args.keep:
        for name in args.arms:
            keep(name, args.seed)
        return
    campaign = Campaign(Recipe.load("zoo/recipe.json"), "runs/campaign", "zoo", progress=False)
    if not DATA.is_dir():
        campaign.prepare_data()
    for arm in args.arms:
        branch(arm, args.seed)
    configs = {
        run_name(arm, args.seed): arm_config(campaign, arm, args.until, args.seed) for arm in args.arms
    }
    train_side_by_side(PILOT, configs)
    trunk_at_branch = RUNS / run_name(TRUNK_AT_BRANCH, args.seed)
    if TRUNK in args.arms and args.until == BRANCH_STEP and not trunk_at_branch.exists():
        shutil.copytree(RUNS / run_name(TRUNK, args.seed), trunk_at_branch)


if __name__ == "__main__":
    main()
