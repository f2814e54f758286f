"""Validation RD loss of a training checkpoint at some qualities, out of its run's schedule
(a run validates every ``val_every`` steps; this checks a checkpoint in between), as the
trainer computes it: entropy-estimated bpp, full images, raw weights. Also an exported zoo
file, scored for ``--metric`` (e.g. an MSE model's MS-SSIM before fine-tuning it for MS-SSIM).

    OMP_NUM_THREADS=1 python zoo/results/validation_check.py runs/campaign/teacher-vr/checkpoint.pth.tar \\
        runs/campaign/data/val -q 1,3,6
    OMP_NUM_THREADS=1 python zoo/results/validation_check.py zoo/v2/feds-teacher-mse-*.pth.tar \\
        runs/campaign/data/val -q 1,3,6 --metric ms-ssim

Safe beside the running job: it replaces its checkpoint atomically (``files.write_atomically``).
"""

import argparse
from pathlib import Path

import torch

from compressai_feds import FEDSCodec
from compressai_feds.images import find_images
from compressai_feds.quality import LAMBDAS
from compressai_feds.trainer import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="a trainer's checkpoint.pth.tar or a zoo file")
    parser.add_argument("images", type=Path, help="the validation images")
    parser.add_argument("-q", "--qualities", default="1,3,6", help="comma-separated qualities")
    parser.add_argument("--metric", choices=sorted(LAMBDAS), help="default: the run's (MSE for a zoo file)")
    args = parser.parse_args()
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    trained = "config" in checkpoint  # else a zoo file: {"state_dict", "metadata"}
    metric = args.metric or (checkpoint["config"]["metric"] if trained else "mse")
    net = FEDSCodec.from_state_dict(checkpoint["state_dict"])
    paths = find_images(args.images)
    where = f"at step {checkpoint['step']}" if trained else "(zoo file)"
    print(f"{args.checkpoint} {where}, {len(paths)} images, {metric}")
    for quality in map(int, args.qualities.split(",")):
        m = evaluate(net, paths, LAMBDAS[metric][quality], metric, quality=quality)
        line = f"q{quality}: RD loss {m['rd_loss']:.4f}, {m['bpp']:.4f} bpp, {m['psnr']:.2f} dB"
        if metric == "ms-ssim":
            line += f", MS-SSIM {m['ms_ssim_db']:.3f} dB"
        print(line, flush=True)


if __name__ == "__main__":
    main()
