"""Command line of the FEDS trainer.

    python -m compressai_feds.train --teacher feds-teacher -q 3 --data DIR --val DIR --out runs/q3
    python -m compressai_feds.train --resume --out runs/q3
    python -m compressai_feds.train --resume --from-average --out runs/q3   # after it diverged
    torchrun --nproc_per_node=4 -m compressai_feds.train ...   # DistributedDataParallel

``compressai-feds train ...`` is the same command.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

from .config import LR_SCHEDULES, TrainingConfig
from .losses import CHANNEL_FORMS
from .quality import LAMBDAS, QUALITIES
from .trainer import DistillationTrainer

#: The exit status of a run that diverged (its checkpoint is the last one written before).
EXIT_DIVERGED = 3


def _levels(text: str) -> list[int]:
    return [int(level) for level in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compressai-feds train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="run folder: checkpoints, config, metrics, plot"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--from-average",
        action="store_true",
        help="with --resume: continue from the checkpoint's moving average of the weights, with fresh "
        "optimizers (after the run diverged)",
    )
    parser.add_argument(
        "--config", type=Path, help="start from a saved config.json (with --resume: replaces the run's)"
    )
    parser.add_argument(
        "--start-step",
        type=int,
        default=0,
        help="start the schedule at this step (continuing a run from its weights alone: --student CKPT)",
    )
    parser.add_argument(
        "--restart-warmup",
        type=int,
        help="with --start-step: ramp the learning rate up linearly over this many steps",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help="ramp the learning rate up linearly over the run's first steps (fine-tuning trained weights)",
    )
    parser.add_argument(
        "--adapter-warmup",
        type=int,
        help="steps in which the distillation losses train only their fresh adapters (student detached)",
    )
    parser.add_argument("--data", help="folder of training photographs (any RGB/grayscale/RGBA images)")
    parser.add_argument("--val", help="folder of a few full images for validation")
    parser.add_argument(
        "--student", "--model", dest="student", help="architecture to train (e.g. feds-student) or checkpoint"
    )
    parser.add_argument(
        "--student-args", type=json.loads, help="constructor arguments as JSON, e.g. '{\"N\": 32}'"
    )
    parser.add_argument(
        "--teacher", help="zoo model (pretrained at --quality) or checkpoint; omit to train alone"
    )
    parser.add_argument("-q", "--quality", type=int, choices=QUALITIES)
    parser.add_argument(
        "--lambda", dest="lmbda", type=float, help="rate-distortion λ (overrides --quality's)"
    )
    parser.add_argument("--metric", choices=sorted(LAMBDAS))
    parser.add_argument(
        "--ms-ssim-window",
        type=int,
        help="taps of the MS-SSIM window in training (odd; 128 px crops take at most 7, 256 px 11)",
    )
    parser.add_argument(
        "--qualities",
        type=_levels,
        help="variable rate: train on these levels, e.g. 1,2,3,4,5,6 (with --student-args '{\"variable_rate\": true}')",
    )
    parser.add_argument(
        "--val-qualities", type=_levels, help="variable rate: levels validated (default: --qualities)"
    )
    parser.add_argument(
        "--ema-decay", type=float, help="keep (validate, export) a moving average of the weights"
    )
    parser.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="learning rate within each stage: step (x0.1 near its end) or cosine (to 0 at its end)",
    )
    parser.add_argument(
        "--channel-form",
        choices=CHANNEL_FORMS,
        help="how the channel term compares the latents: as they are (spatial_kl) or standardized per channel",
    )
    parser.add_argument(
        "--channel-follows-lambda",
        action="store_true",
        default=None,
        help="variable rate: weigh each image's channel term by its λ over the levels' mean",
    )
    parser.add_argument(
        "--feature-follows-lambda",
        action="store_true",
        default=None,
        help="variable rate: weigh each image's feature alignment term by its λ over the levels' mean",
    )
    parser.add_argument("--steps", help="steps of the three stages, e.g. 100000,300000,100000")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--crop-size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--val-every", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument(
        "--cache-images", action="store_true", default=None, help="keep decoded images in memory"
    )
    parser.add_argument(
        "--fp32",
        dest="fast",
        action="store_false",
        default=None,
        help="float32, contiguous: no channels_last, no bf16 autocast",
    )
    parser.add_argument(
        "--round-quantization",
        dest="noise_quantization",
        action="store_false",
        default=None,
        help="round instead of adding noise in the rate term (deterministic)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    config = TrainingConfig.load(args.config) if args.config else TrainingConfig()
    overrides = {  # every config field that has a flag, where the flag was given
        f.name: getattr(args, f.name)
        for f in fields(TrainingConfig)
        if getattr(args, f.name, None) is not None
    }
    if ("quality" in overrides or "metric" in overrides) and "lmbda" not in overrides:
        overrides["lmbda"] = None  # recomputed from the quality and metric
    if args.steps:
        steps = [int(s) for s in args.steps.split(",")]
        if len(steps) != len(config.stages):
            raise ValueError(f"--steps needs {len(config.stages)} comma-separated values, got {args.steps!r}")
        overrides["stages"] = [replace(stage, steps=n) for stage, n in zip(config.stages, steps, strict=True)]
    config = replace(config, **overrides)
    if not config.data:
        raise ValueError("--data is required (a folder of training photographs)")
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        progress = not args.no_progress
        if args.resume:
            config = config_from_args(args) if args.config else None
            trainer = DistillationTrainer(
                config, args.out, resume=True, from_average=args.from_average, progress=progress
            )
        elif args.from_average:
            raise ValueError("--from-average continues a run: it needs --resume")
        else:
            trainer = DistillationTrainer(
                config_from_args(args), args.out, start_step=args.start_step, progress=progress
            )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = trainer.train()
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    if trainer.is_main:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
