"""Bjøntegaard deltas between rate-distortion curves, from CompressAI results JSON.

    compressai-feds bd-rate ANCHOR.json TEST.json [TEST2.json ...] [--metric psnr-rgb | ms-ssim-db]

BD-rate is the average rate difference, in percent, between two curves at equal
quality; BD-PSNR the average quality difference at equal rate (Bjøntegaard,
"Calculation of average PSNR differences between RD-curves", VCEG-M33, 2001).
Both curves are interpolated piecewise-cubically and monotonically (PCHIP, as
in the VCEG/JVET common test conditions' later revisions) and integrated over
the range where they overlap.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["Curve", "bd_psnr", "bd_rate", "load_curve", "ms_ssim_db", "quality_values"]

MIN_POINTS = 4
#: The quality axis CompressAI's MS-SSIM curves are drawn on; computed from ``ms-ssim-rgb``.
MS_SSIM_DB = "ms-ssim-db"


def ms_ssim_db(value: float) -> float:
    """MS-SSIM in decibels, ``−10·log10(1 − MS-SSIM)``: the axis on which CompressAI plots
    and compares MS-SSIM, spread out near 1; ``inf`` for 1 (identical images), as
    :func:`~.images.psnr` for no error."""
    return -10 * math.log10(1 - value) if value < 1 else math.inf


def quality_values(results: dict, axis: str) -> list:
    """The ``axis`` values of CompressAI results (``psnr-rgb``, ``ms-ssim-rgb``, or
    ``ms-ssim-db`` computed from ``ms-ssim-rgb``); ``KeyError`` names what is missing."""
    if axis == MS_SSIM_DB:
        return [ms_ssim_db(v) if _is_number(v) else v for v in results["ms-ssim-rgb"]]
    return results[axis]


class CurveError(ValueError):
    """A curve that BD figures cannot use; ``reason`` says why in a few words (a table
    cell), the message in full."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Curve:
    """An operational RD curve: ``rate`` (bpp) and ``quality`` (dB, or any
    metric where higher is better), sorted by rate."""

    name: str
    rate: tuple[float, ...]
    quality: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.rate) != len(self.quality):
            raise CurveError(
                f"{self.name}: {len(self.rate)} rates but {len(self.quality)} quality values",
                "rates and qualities differ in number",
            )
        if len(self.rate) < MIN_POINTS:
            count = len(self.rate)
            points = f"{count} point{'s' * (count != 1)}"
            raise CurveError(f"{self.name}: {points}; BD needs at least {MIN_POINTS}", points)
        values = np.array([self.rate, self.quality], dtype=float)
        if not np.isfinite(values).all() or min(self.rate) <= 0:
            raise CurveError(
                f"{self.name}: rates must be positive and every value finite",
                "non-positive or non-finite values",
            )
        if np.any(np.diff(self.rate) <= 0) or np.any(np.diff(self.quality) <= 0):
            raise CurveError(
                f"{self.name}: not monotonic (quality must rise strictly with rate): "
                f"bpp {_fmt(self.rate)}, quality {_fmt(self.quality)}",
                "not monotonic",
            )

    @classmethod
    def from_points(cls, name: str, rate: list[float], quality: list[float]) -> Curve:
        if len(rate) != len(quality):
            raise ValueError(f"{name}: {len(rate)} rates but {len(quality)} quality values")
        order = np.argsort(rate)
        return cls(name, tuple(float(rate[i]) for i in order), tuple(float(quality[i]) for i in order))

    @property
    def log_rate(self) -> np.ndarray:
        return np.log10(np.array(self.rate))


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def load_curve(path: str | Path, metric: str = "psnr-rgb") -> Curve:
    """The ``bpp`` / ``metric`` curve of a CompressAI results JSON file
    (``{"name": ..., "results": {"bpp": [...], "psnr-rgb": [...]}}``); ``metric`` is one of
    its keys or ``ms-ssim-db`` (:func:`quality_values`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or "bpp" not in results:
        raise ValueError(f'{path}: not a CompressAI results file (no "results": {{"bpp": [...]}})')
    try:
        values = results["bpp"], quality_values(results, metric)
    except KeyError:
        raise ValueError(
            f"{path}: no {metric!r} values; it has {sorted(k for k in results if k != 'bpp')}"
        ) from None
    name = data.get("name") or path.stem
    if not all(isinstance(v, list) and all(_is_number(x) for x in v) for v in values):
        raise ValueError(f"{path}: bpp and {metric} must be lists of numbers")
    return Curve.from_points(str(name), *values)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _overlap(a: np.ndarray, b: np.ndarray, what: str, anchor: Curve, test: Curve) -> tuple[float, float]:
    low, high = max(a.min(), b.min()), min(a.max(), b.max())
    if low >= high:
        raise CurveError(
            f"{test.name} and {anchor.name} do not overlap in {what} "
            f"({b.min():.4g}..{b.max():.4g} vs {a.min():.4g}..{a.max():.4g})",
            "no overlap",
        )
    return low, high


def bd_rate(anchor: Curve, test: Curve) -> float:
    """Average rate difference of ``test`` against ``anchor`` at equal quality, in
    percent (negative: ``test`` needs fewer bits)."""
    low, high = _overlap(np.array(anchor.quality), np.array(test.quality), "quality", anchor, test)
    integrals = [
        PchipInterpolator(np.array(curve.quality), curve.log_rate).integrate(low, high)
        for curve in (anchor, test)
    ]
    mean_log_difference = (integrals[1] - integrals[0]) / (high - low)
    return (10**mean_log_difference - 1) * 100


def bd_psnr(anchor: Curve, test: Curve) -> float:
    """Average quality difference of ``test`` against ``anchor`` at equal rate (dB
    for PSNR; positive: ``test`` is better)."""
    low, high = _overlap(anchor.log_rate, test.log_rate, "rate", anchor, test)
    integrals = [
        PchipInterpolator(curve.log_rate, np.array(curve.quality)).integrate(low, high)
        for curve in (anchor, test)
    ]
    return (integrals[1] - integrals[0]) / (high - low)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compressai-feds bd-rate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("anchor", type=Path, help="results JSON of the reference codec")
    parser.add_argument("tests", nargs="+", type=Path, help="results JSON of the codecs compared with it")
    parser.add_argument(
        "--metric",
        default="psnr-rgb",
        help="quality metric of the JSON, or ms-ssim-db (MS-SSIM in dB, from ms-ssim-rgb; default: psnr-rgb)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        anchor = load_curve(args.anchor, args.metric)
        rows = []
        for path in args.tests:
            test = load_curve(path, args.metric)
            rows.append((test.name, bd_rate(anchor, test), bd_psnr(anchor, test)))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    unit = "dB" if "psnr" in args.metric or args.metric == MS_SSIM_DB else ""
    width = max(len(name) for name, _, _ in rows)
    print(f"anchor: {anchor.name} ({args.metric})")
    print(f"{'codec':{width}}  {'BD-rate':>9}  {'BD-' + args.metric:>14}")
    for name, rate, quality in rows:
        rate_text = f"{rate:+.2f}%" if math.isfinite(rate) else "n/a"
        print(f"{name:{width}}  {rate_text:>9}  {quality:>+11.4f} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
