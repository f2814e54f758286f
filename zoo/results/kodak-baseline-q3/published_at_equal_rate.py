"""PSNR of the published Kodak curves at the rate of baseline-q3 (0.272 bpp), by linear
interpolation in log-rate between their points. Run from the repository root:
python zoo/results/kodak-baseline-q3/published_at_equal_rate.py"""

import json
from pathlib import Path

import numpy as np

RATE = json.loads(Path(__file__).with_name("feds-student-noteacher-mse-3.json").read_text())["results"][
    "bpp"
][0]
for name in (
    "jpeg",
    "jpeg2000",
    "compressai-bmshj2018-factorized_mse_cpu",
    "bpg_444_x265_ycbcr",
    "compressai-mbt2018-mean_mse_cpu",
    "vtm",
):
    results = json.loads(Path(f"../shared/reference/rd-kodak/{name}.json").read_text())["results"]
    order = np.argsort(results["bpp"])
    bpp, psnr = np.asarray(results["bpp"])[order], np.asarray(results["psnr-rgb"])[order]
    print(f"{name:42} {np.interp(np.log(RATE), np.log(bpp), psnr):6.2f} dB at {RATE:.3f} bpp")
