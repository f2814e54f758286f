"""Pilot (session 15): does balancing the qualities (``Stage.balance_qualities``) help the low
rates of a variable-rate model? Two arms from the same weights (baseline-vr's latest export),
side by side on one thread each, identical but for ``balance_qualities``: 1,500 steps at lr
2.5e-4 (the students' ``channel_distillation_low_lr`` stage), a 100-step warm-up (fresh
optimizers), no moving average, validated at the end at q1-q6 on the validation split.

    python zoo/pilots/balance-qualities/run.py [SEED]   # the campaign stopped; from the repository root

Writes each arm's ``config.json`` and ``metrics.jsonl`` beside this file (``ARM`` for seed 0,
``ARM-seedN`` else) and prints the table.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from compressai_feds.campaign import Campaign, Recipe
from compressai_feds.config import Stage

HERE = Path(__file__).resolve().parent
RUNS = Path("runs/pilots/balance-qualities")
STEPS = 1500


def main(seed: int) -> None:
    campaign = Campaign(Recipe.load("zoo/recipe.json"), "runs/campaign", "zoo", progress=False)
    job = campaign.jobs["baseline-vr"]
    start = campaign.exported(job)
    base = campaign.training_config(job, Path("runs/campaign/data/train"), Path("runs/campaign/data/val"))
    processes = {}
    for name, balance in (("uniform", False), ("balanced", True)):
        arm = name if seed == 0 else f"{name}-seed{seed}"
        stage = Stage("channel_distillation_low_lr", STEPS, 2.5e-4, 1.0, 1.0, balance_qualities=balance)
        config = replace(
            base, student=str(start.resolve()), stages=[stage], warmup=100, restart_warmup=0,
            ema_decay=0.0, val_every=10 * STEPS, checkpoint_every=500, seed=seed,
        )  # fmt: skip
        out = RUNS / arm
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
            raise SystemExit(f"{arm} failed: see {RUNS / arm / 'train.log'}")
    print(f"from {start.name} (baseline-vr), {STEPS} steps, validation RD loss (bpp, dB):")
    for arm in processes:
        (HERE / arm).mkdir(exist_ok=True)
        for name in ("config.json", "metrics.jsonl"):
            (HERE / arm / name).write_bytes((RUNS / arm / name).read_bytes())
        records = [json.loads(line) for line in (RUNS / arm / "metrics.jsonl").read_text().splitlines()]
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


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
