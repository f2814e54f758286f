"""BD-rate and BD-PSNR: a hand-checked case, an independent implementation, bad inputs."""

import json

import bjontegaard
import numpy as np
import pytest
from helpers import run_main

from compressai_feds.bdrate import Curve, bd_psnr, bd_rate, load_curve, main

# A plausible learned-codec curve (bpp, PSNR) and others made from it.
RATES = [0.12, 0.2, 0.32, 0.48, 0.7, 0.98]
PSNRS = [27.1, 28.9, 30.6, 32.2, 33.9, 35.6]


def results_file(path, name, bpp, psnr):
    path.write_text(json.dumps({"name": name, "results": {"bpp": bpp, "psnr-rgb": psnr}}))
    return path


def test_a_curve_against_itself_with_a_known_rate_factor():
    anchor = Curve.from_points("anchor", RATES, PSNRS)
    cheaper = Curve.from_points("cheaper", [r * 0.8 for r in RATES], PSNRS)
    assert bd_rate(anchor, cheaper) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-12)
    better = Curve.from_points("better", RATES, [p + 0.5 for p in PSNRS])
    assert bd_psnr(anchor, better) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_the_bjontegaard_package(seed):
    rng = np.random.default_rng(seed)
    rates = np.sort(rng.uniform(0.05, 2.0, size=6))
    anchor_psnr = 24 + 6 * np.log2(1 + rates) + np.cumsum(rng.uniform(0.1, 0.5, size=6))
    test_rates = np.sort(rates * rng.uniform(0.6, 1.3, size=6))
    test_psnr = np.sort(anchor_psnr + rng.uniform(-0.8, 0.8, size=6))
    anchor = Curve.from_points("a", list(rates), list(anchor_psnr))
    test = Curve.from_points("t", list(test_rates), list(test_psnr))
    expected = bjontegaard.bd_rate(
        rates, anchor_psnr, test_rates, test_psnr, method="pchip", require_matching_points=False
    )
    assert bd_rate(anchor, test) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    expected = bjontegaard.bd_psnr(
        rates, anchor_psnr, test_rates, test_psnr, method="pchip", require_matching_points=False
    )
    assert bd_psnr(anchor, test) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    "bpp, psnr, message",
    [
        ([0.1, 0.2, 0.3], [27, 29, 31], "at least 4"),
        ([0.1, 0.2, 0.3, 0.4], [27, 29, 28, 31], "not monotonic"),
        ([0.1, 0.2, 0.2, 0.4], [27, 29, 30, 31], "not monotonic"),
        ([0.1, 0.2, 0.3, 0.4], [27, 29, 30], "3 quality values"),
        ([0, 0.2, 0.3, 0.4], [27, 29, 30, 31], "positive"),
    ],
)
def test_bad_curves_are_refused(bpp, psnr, message):
    with pytest.raises(ValueError, match=message):
        Curve.from_points("bad", bpp, psnr)


def test_command_prints_a_table(tmp_path, capsys):
    anchor = results_file(tmp_path / "a.json", "anchor", RATES, PSNRS)
    test = results_file(tmp_path / "t.json", "cheaper", [r * 0.8 for r in RATES], PSNRS)
    result = run_main(main, anchor, test, anchor, capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    missing = run_main(main, anchor, tmp_path / "missing.json", capsys=capsys)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")
    lines = result.stdout.splitlines()
    assert lines[0] == "anchor: anchor (psnr-rgb)"
    assert lines[2].split()[:2] == ["cheaper", "-20.00%"] and lines[3].split()[:2] == ["anchor", "+0.00%"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("not json", "not JSON"),
        ({"name": "x", "bpp": [1, 2]}, "not a CompressAI results file"),
        ({"name": "x", "results": {"bpp": RATES, "ms-ssim": PSNRS}}, "no 'psnr-rgb' values"),
        ({"name": "far", "results": {"bpp": [5, 6, 7, 8], "psnr-rgb": [50, 51, 52, 53]}}, "do not overlap"),
        ({"name": "x", "results": {"bpp": ["a"] * 4, "psnr-rgb": PSNRS[:4]}}, "numbers"),
    ],
)
def test_command_refuses_bad_files_in_one_line(tmp_path, capsys, content, message):
    anchor = results_file(tmp_path / "a.json", "anchor", RATES, PSNRS)
    test = tmp_path / "t.json"
    if content is not None:
        test.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main([str(anchor), str(test)]) == 1
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1


def test_published_curves_load():
    """The reference files' shape, as a fixture of the CLI's format (skipped without them)."""
    from pathlib import Path

    reference = Path(__file__).resolve().parents[2] / "shared" / "reference" / "rd-kodak"
    if not reference.is_dir():
        pytest.skip("no published curves here")
    jpeg, webp = load_curve(reference / "jpeg.json"), load_curve(reference / "webp.json")
    assert bd_rate(jpeg, webp) == pytest.approx(-36.18, abs=0.01)
