"""Kodak RD loss of checkpoints of one quality from ``eval_model --per-image``
output: λ·255²·mean(MSE) + mean(bpp), the training objective measured with real
coding, and paired per-image differences between two of them.

    python zoo/results/rd_loss.py PER_IMAGE_DIR --quality Q NAME=TAG ... [--pair NAME NAME] ...

TAG is the checkpoint's file name without ``.pth.tar`` (``eval_model`` names its
per-image files ``kodimNN-TAG-ans.json``). MSE of an image comes from its
PSNR-RGB (MSE = 10^(-PSNR/10) on [0, 1] pixels); bpp is the rate of the
bitstreams without a container (as ``eval_model`` counts it).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from compressai_feds import LAMBDAS


def per_image(folder: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    files = sorted(folder.glob(f"kodim*-{tag}-ans.json"))
    if not files:
        raise SystemExit(f"no kodim*-{tag}-ans.json in {folder}")
    results = [json.loads(f.read_text())["results"] for f in files]
    return np.array([r["bpp"] for r in results]), np.array([r["psnr-rgb"] for r in results])


def rd_loss(bpp: np.ndarray, psnr: np.ndarray, lmbda: float) -> float:
    return float(lmbda * 255**2 * np.mean(10 ** (-psnr / 10)) + np.mean(bpp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("models", nargs="+", metavar="NAME=TAG")
    parser.add_argument("--quality", type=int, required=True)
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("NAME", "BASE"))
    args = parser.parse_args()
    lmbda = LAMBDAS["mse"][args.quality]
    points = {name: per_image(args.folder, tag) for name, tag in (m.split("=", 1) for m in args.models)}
    print(f"λ = {lmbda}")
    print(f"{'model':28} {'images':>6} {'bpp':>7} {'PSNR dB':>8} {'RD loss':>8}")
    for name, (bpp, psnr) in points.items():
        print(
            f"{name:28} {len(bpp):6d} {bpp.mean():7.4f} {psnr.mean():8.3f} {rd_loss(bpp, psnr, lmbda):8.4f}"
        )
    if args.pair:
        print("\nper image (mean and range over the images):")
    for name, base in args.pair:
        (b1, p1), (b0, p0) = points[name], points[base]
        rate = 100 * (b1 / b0 - 1)
        print(
            f"  {name} minus {base}: rate {rate.mean():+.1f}% ({rate.min():+.1f} to {rate.max():+.1f}), "
            f"PSNR {np.mean(p1 - p0):+.3f} dB ({np.min(p1 - p0):+.3f} to {np.max(p1 - p0):+.3f})"
        )


if __name__ == "__main__":
    main()
