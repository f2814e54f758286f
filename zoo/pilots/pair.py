"""Two pilot arms side by side at equal CPU time: the same start weights, data, seed and
steps, one thread each, differing only in their one training stage; each validated at the
end at q1-q6 on the validation split, printed as one row of a table.

Used by the pilots' ``run.py`` files (run from the repository root, with the campaign's
data prepared in ``runs/campaign/data``). Each arm's ``config.json`` and ``metrics.jsonl``
are copied beside the pilot's ``run.py`` (``ARM`` for seed 0, ``ARM-seedN`` else).
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from compressai_feds.campaign import Campaign, Recipe
from compressai_feds.config import Stage, TrainingConfig

DATA = Path("runs/campaign/data")


def train_side_by_side(pilot: Path, configs: dict[str, TrainingConfig]) -> dict[str, list[dict]]:
    """Trains each arm's config in its own ``compressai_feds.train`` process on one thread,
    all at once, in ``runs/pilots/<pilot>/<arm>`` (resuming where a checkpoint is left);
    copies each arm's ``config.json`` and ``metrics.jsonl`` beside the pilot's ``run.py`` and
    returns each arm's metrics records."""
    runs = Path("runs/pilots") / pilot.name
    processes = {}
    for arm, config in configs.items():
        out = runs / arm
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "pilot-config.json")
        command = [sys.executable, "-m", "compressai_feds.train", "--config", str(out / "pilot-config.json")]
        command += ["--out", str(out), "--no-progress"]
        if (out / "checkpoint.pth.tar").is_file():
            command.append("--resume")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        processes[arm] = subprocess.Popen(
            command, env=env, stdout=(out / "train.log").open("a"), stderr=subprocess.STDOUT
        )
    for arm, process in processes.items():
        if process.wait() != 0:
            raise SystemExit(f"{arm} failed: see {runs / arm / 'train.log'}")
    metrics = {}
    for arm in processes:
        (pilot / arm).mkdir(exist_ok=True)
        for name in ("config.json", "metrics.jsonl"):
            (pilot / arm / name).write_bytes((runs / arm / name).read_bytes())
        metrics[arm] = [json.loads(line) for line in (runs / arm / "metrics.jsonl").read_text().splitlines()]
    return metrics


def run_pair(pilot: Path, job: str, arms: dict[str, Stage], seed: int) -> None:
    """Trains the two ``arms`` (name: stage) from ``job``'s latest export, side by side,
    without a moving average and with a 100-step warm-up (fresh optimizers)."""
    campaign = Campaign(Recipe.load("zoo/recipe.json"), "runs/campaign", "zoo", progress=False)
    start = campaign.exported(campaign.jobs[job])
    base = campaign.training_config(campaign.jobs[job], DATA / "train", DATA / "val")
    configs = {
        (name if seed == 0 else f"{name}-seed{seed}"): replace(
            base,
            student=str(start.resolve()),
            stages=[stage],
            warmup=100,
            restart_warmup=0,
            ema_decay=0.0,
            val_every=10 * stage.steps,
            checkpoint_every=500,
            seed=seed,
        )  # fmt: skip
        for name, stage in arms.items()
    }
    metrics = train_side_by_side(pilot, configs)
    steps = next(iter(arms.values())).steps
    print(f"from {start.name} ({job}), {steps} steps, validation RD loss (bpp, dB):")
    for arm, records in metrics.items():
        val = [r for r in records if "val" in r][-1]["val"]
        speed = [r["it_per_s"] for r in records if "it_per_s" in r]
        cells = [
            f"q{q} {val[f'q{q}']['rd_loss']:.4f} ({val[f'q{q}']['bpp']:.3f}, {val[f'q{q}']['psnr']:.2f})"
            for q in range(1, 7)
        ]
        print(
            f"{arm:15} geo-mean {val['rd_loss']:.4f} | "
            + " | ".join(cells)
            + f" | {sum(speed) / len(speed):.2f} steps/s"
        )
