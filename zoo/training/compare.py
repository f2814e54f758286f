"""Two campaign jobs' validations, paired at the steps both validated: RD loss of
the first against the second at each quality, and the BD-rate of the first's six
validation points against the second's; each job's kept figures (the better of
its raw and averaged weights, as it exports them).

    python zoo/training/compare.py student-vr-v3 baseline-vr-v3

Reads ``zoo/training/<job>/metrics.jsonl`` (copied there at every export).
"""

import json
import sys
from pathlib import Path

from compressai_feds.bdrate import Curve, CurveError, bd_rate
from compressai_feds.plots import kept_validation

QUALITIES = [f"q{i}" for i in range(1, 7)]


def validations(job: str) -> dict[int, dict]:
    """The job's kept validation figures by step."""
    lines = (Path(__file__).parent / job / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line]
    return {r["step"]: kept_validation(r) for r in records if "val" in r}


def bd_cell(test: str, val: dict, anchor: str, anchor_val: dict) -> str:
    """The BD-rate of ``val``'s six points against ``anchor_val``'s, or why there is none
    (early validations need not rise with the rate)."""
    try:
        curves = [
            Curve.from_points(name, [v[q]["bpp"] for q in QUALITIES], [v[q]["psnr"] for q in QUALITIES])
            for name, v in ((anchor, anchor_val), (test, val))
        ]
        return f"{bd_rate(*curves):+.1f}%"
    except CurveError as exc:
        return exc.reason


def main(test: str, anchor: str) -> None:
    a, b = validations(test), validations(anchor)
    print(f"{test} against {anchor}: RD loss q1 / ... / q6, BD-rate (PSNR)")
    for step in sorted(set(a) & set(b)):
        rd = " / ".join(
            f"{(a[step][q]['rd_loss'] / b[step][q]['rd_loss'] - 1) * 100:+.1f}" for q in QUALITIES
        )
        print(f"{step:6d}  {rd}%  BD {bd_cell(test, a[step], anchor, b[step])}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
