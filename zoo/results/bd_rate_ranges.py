"""BD-rate of curves against an anchor over ranges of their points: how much a
six-quality figure owes to its end points.

    python zoo/results/bd_rate_ranges.py ANCHOR.json TEST.json ... [--ranges 1-6 2-5 ...]

Every file is CompressAI results JSON. A range ``A-B`` keeps the A-th to B-th
points (1-based, in rising rate) of the test curves and, when the anchor has as
many points as they do, of the anchor too (our own curves share the qualities);
a published anchor keeps all its points. BD-rate as ``compressai-feds bd-rate``;
"no overlap" where a range shares no PSNR span with the anchor.
"""

import argparse

from compressai_feds.bdrate import Curve, CurveError, bd_rate, load_curve


def points(curve: Curve, first: int, last: int) -> Curve:
    return Curve.from_points(
        curve.name, list(curve.rate[first - 1 : last]), list(curve.quality[first - 1 : last])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("anchor")
    parser.add_argument("tests", nargs="+")
    parser.add_argument("--ranges", nargs="+", default=["1-6", "1-5", "2-5", "1-4", "3-6"])
    args = parser.parse_args()
    anchor = load_curve(args.anchor)
    tests = [load_curve(path) for path in args.tests]
    print(f"BD-rate against {anchor.name}")
    print(f"{'curve':32}" + "".join(f"{'points ' + r:>14}" for r in args.ranges))
    for test in tests:
        same_qualities = len(anchor.rate) == len(test.rate)
        cells = []
        for text in args.ranges:
            first, last = map(int, text.split("-"))
            reference = points(anchor, first, last) if same_qualities else anchor
            try:
                cells.append(f"{bd_rate(reference, points(test, first, last)):+13.1f}%")
            except CurveError:
                cells.append(f"{'no overlap':>14}")
        print(f"{test.name:32}" + "".join(cells))


if __name__ == "__main__":
    main()
