"""Where one measured point stands against RD curves: each curve's PSNR at the
point's rate and its rate at the point's PSNR, by linear interpolation in
log-rate between the curve's points (nothing extrapolated: "-" outside a curve).

    python zoo/results/at_equal_rate.py POINT.json [--at K] CURVE.json ...

POINT.json and the curves are CompressAI results JSON; ``--at`` picks the point
of a multi-point file (default 0).
"""

import argparse
import json
from pathlib import Path

import numpy as np


def load(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    data = json.loads(path.read_text())
    bpp, psnr = np.asarray(data["results"]["bpp"]), np.asarray(data["results"]["psnr-rgb"])
    order = np.argsort(bpp)
    return data.get("name", path.stem), bpp[order], psnr[order]


def interpolate(x: float, xs: np.ndarray, ys: np.ndarray) -> float | None:
    return float(np.interp(x, xs, ys)) if xs[0] <= x <= xs[-1] else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("point", type=Path)
    parser.add_argument("curves", type=Path, nargs="+")
    parser.add_argument("--at", type=int, default=0)
    args = parser.parse_args()
    name, bpp, psnr = load(args.point)
    rate, quality = float(bpp[args.at]), float(psnr[args.at])
    print(f"{name}: {rate:.4f} bpp, {quality:.3f} dB")
    print(f"{'curve':44} {'PSNR at its rate':>17} {'rate at its PSNR':>17}")
    for path in args.curves:
        curve, curve_bpp, curve_psnr = load(path)
        at_rate = interpolate(np.log(rate), np.log(curve_bpp), curve_psnr)
        log_rate = (
            interpolate(quality, curve_psnr, np.log(curve_bpp)) if np.all(np.diff(curve_psnr) > 0) else None
        )
        dpsnr = f"{at_rate:.2f} dB ({quality - at_rate:+.2f})" if at_rate is not None else "-"
        drate = (
            f"{np.exp(log_rate):.4f} ({rate / np.exp(log_rate) - 1:+.1%})" if log_rate is not None else "-"
        )
        print(f"{curve:44} {dpsnr:>17} {drate:>17}")


if __name__ == "__main__":
    main()
