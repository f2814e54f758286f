"""Kodak RD loss of the quality-3 models from ``eval_model --per-image`` output:
λ·255²·mean(MSE) + mean(bpp), the training objective measured with real coding,
and the FEDS students' paired per-image differences against the no-teacher ones.

    python zoo/results/kodak-q3-final/rd_loss.py [PER_IMAGE_DIR]

MSE of an image comes from its PSNR-RGB (MSE = 10^(-PSNR/10) on [0, 1] pixels),
bpp is the rate of the bitstreams without a container (as ``eval_model`` counts it).
"""

import json
import sys
from pathlib import Path

import numpy as np

LMBDA = 0.0067  # CompressAI's MSE table, quality 3
MODELS = {
    "FEDS student, seed 0": "feds-student-mse-3-8acc335d",
    "FEDS student, seed 1": "feds-student-mse-3-seed1-8c6c36bb",
    "no-teacher student, seed 0": "feds-student-noteacher-mse-3-c6b5093a",
    "no-teacher student, seed 1": "feds-student-noteacher-mse-3-seed1-70e289de",
    "teacher": "feds-teacher-mse-3-66531215",
}


def per_image(folder: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    files = sorted(folder.glob(f"kodim*-{tag}-ans.json"))
    results = [json.loads(f.read_text())["results"] for f in files]
    return np.array([r["bpp"] for r in results]), np.array([r["psnr-rgb"] for r in results])


def rd_loss(bpp: np.ndarray, psnr: np.ndarray) -> float:
    return float(LMBDA * 255**2 * np.mean(10 ** (-psnr / 10)) + np.mean(bpp))


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("per-image")
    points = {name: per_image(folder, tag) for name, tag in MODELS.items()}
    print(f"{'model':28} {'images':>6} {'bpp':>7} {'PSNR dB':>8} {'RD loss':>8}")
    for name, (bpp, psnr) in points.items():
        print(f"{name:28} {len(bpp):6d} {bpp.mean():7.4f} {psnr.mean():8.3f} {rd_loss(bpp, psnr):8.4f}")
    print("\nFEDS minus no-teacher, same seed, per image (mean and range over the 24 images):")
    for seed in (0, 1):
        (b1, p1), (b0, p0) = points[f"FEDS student, seed {seed}"], points[f"no-teacher student, seed {seed}"]
        rate = 100 * (b1 / b0 - 1)
        print(
            f"  seed {seed}: rate {rate.mean():+.1f}% ({rate.min():+.1f} to {rate.max():+.1f}), "
            f"PSNR {np.mean(p1 - p0):+.3f} dB ({np.min(p1 - p0):+.3f} to {np.max(p1 - p0):+.3f})"
        )


if __name__ == "__main__":
    main()
