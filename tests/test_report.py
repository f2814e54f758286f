"""compressai-feds report: real coding of every image by ours and the classic
codecs, CompressAI-format results, the tables and the plot; clean output."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import sample_crops, train_briefly
from PIL import Image

from compressai_feds import FEDSStudent
from compressai_feds.bdrate import Curve
from compressai_feds.codec import Codec, compress_image
from compressai_feds.plots import _draw_curves, _pyplot
from compressai_feds.report import (
    CodecRun,
    Setting,
    checkpoint_curves,
    learned_codecs,
    main,
    published_curves,
    write_report,
)

TINY = {"N": 16, "M": 32, "groups": (8, 24)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    images = sample_crops(root / "images", size=192)
    checkpoints = []
    for steps in (1, 4):
        torch.manual_seed(0)
        net = train_briefly(FEDSStudent(**TINY), steps=steps)
        path = root / f"student-{steps}.pth.tar"
        torch.save({"state_dict": net.state_dict(), "architecture": "feds-student"}, path)
        checkpoints.append(path)
    return root, images, checkpoints


def test_report_codes_every_image_and_writes_results_tables_and_plot(setup, tmp_path):
    root, images, checkpoints = setup
    out = tmp_path / "report"
    command = [
        sys.executable, "-m", "compressai_feds.cli", "report", str(images), "-o", str(out), "-a",
        "--checkpoint", *map(str, checkpoints), "--label", "no teacher", "--reference", str(root / "images"),
        "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warnings, no stray logging
    assert "## BD-rate" in result.stdout and "## Speed" in result.stdout

    ours = json.loads((out / "results" / "no-teacher.json").read_text())
    assert ours["settings"] == [p.name for p in checkpoints]
    # the rate is the size of the .feds files, averaged over the images
    paths = sorted(images.iterdir())
    for checkpoint, bpp in zip(checkpoints, ours["results"]["bpp"], strict=True):
        codec = Codec.from_checkpoint(checkpoint)
        sizes = [len(compress_image(codec, Image.open(p).convert("RGB"))[0]) * 8 / 192**2 for p in paths]
        assert bpp == pytest.approx(sum(sizes) / len(sizes), rel=1e-12)
    assert all(0 < v < 1 for v in ours["results"]["ms-ssim-rgb"])

    jpeg = json.loads((out / "results" / "jpeg-420.json").read_text())["results"]
    assert len(jpeg["bpp"]) == 10 and jpeg["bpp"] == sorted(jpeg["bpp"])
    assert jpeg["psnr-rgb"] == sorted(jpeg["psnr-rgb"]) and all(t > 0 for t in jpeg["encoding_time"])
    # 4:4:4 keeps full-resolution colour: more bits than 4:2:0 at the same setting
    jpeg444 = json.loads((out / "results" / "jpeg-444.json").read_text())["results"]
    assert all(a > b for a, b in zip(jpeg444["bpp"], jpeg["bpp"], strict=True))

    report = (out / "report.md").read_text()
    assert "| no teacher (measured) | | n/a (2 points) |" in report
    assert "--label 'no teacher'" in report  # the command as a shell would take it
    assert "| AVIF (measured) | 10 | anchor |" in report
    jpeg_row = next(line for line in report.splitlines() if line.startswith("| JPEG 4:2:0 (measured) | 10 |"))
    assert float(jpeg_row.split("|")[3].split("%")[0]) > 0  # JPEG needs more bits than AVIF
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bd_tables_rank_every_codec_against_the_published_curves_and_ours_against_each_other(tmp_path):
    rates, psnr = [0.1, 0.2, 0.4, 0.8], [27.0, 29.0, 31.0, 33.0]

    def run(name: str, kind: str, scale: float) -> CodecRun:
        settings = [Setting(f"q{k}", bytes, Image.open) for k in range(4)]
        points = [
            {"bpp": r * scale, "psnr-rgb": p, "ms-ssim-rgb": 0.9, "encoding_time": 0.1,
             "decoding_time": 0.1, "megapixels": 0.4}
            for r, p in zip(rates, psnr, strict=True)
        ]  # fmt: skip
        return CodecRun(name, kind, settings, points)

    runs = [run("feds-teacher", "ours", 1.0), run("feds-student", "ours", 1.1), run("AVIF", "classic", 1.5)]
    published = [("JPEG (published)", Curve.from_points("JPEG", [2 * r for r in rates], psnr))]
    image = tmp_path / "kodim01.png"
    report = write_report(runs, published, tmp_path, [image], [], "compressai-feds report")
    against_others, between_ours = (
        {
            line.split(" | ")[0][2:]: line.split(" | ")[1:]
            for line in part.splitlines()
            if line.startswith("| ")
        }
        for part in report.split("## Speed")[0].split("Between our codecs")
    )
    # PSNR rises 2 dB per doubling of the rate on every curve, so against a curve at
    # k times the rate: BD-rate 100 (1/k - 1)%, BD-PSNR 2 log2(k) dB.
    # Every codec against the measured AVIF curve and the published JPEG curve:
    assert against_others["codec"] == ["points", "vs AVIF (measured)", "vs JPEG (published) |"]
    assert against_others["feds-teacher (measured)"][1:] == ["-33.3% (+1.17 dB)", "-50.0% (+2.00 dB) |"]
    assert against_others["feds-student (measured)"][1] == "-26.7% (+0.89 dB)"
    assert against_others["AVIF (measured)"][1] == "anchor"
    assert against_others["JPEG (published)"][2] == "anchor |"
    # between our codecs: the student needs 10% more bits than the teacher at equal PSNR
    assert between_ours["feds-student (measured)"][1] == "+10.0% (-0.28 dB)"
    assert between_ours["feds-teacher (measured)"][1:] == ["anchor", "-9.1% (+0.28 dB) |"]


def test_each_checkpoint_group_is_a_curve_named_by_its_label(setup):
    _, _, checkpoints = setup
    curves = checkpoint_curves([checkpoints, checkpoints[1:]], ["no teacher", "longer"])
    runs, notes = learned_codecs([], [1, 2], curves)
    assert [run.name for run in runs] == ["no teacher", "longer"] and notes == []
    assert [s.label for s in runs[0].settings] == [p.name for p in checkpoints]
    assert [s.label for s in runs[1].settings] == [checkpoints[1].name]
    assert list(checkpoint_curves([checkpoints], [])) == ["checkpoints"]  # one group needs no name


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-folder"], "does not exist"),
        (["IMAGES", "-q", "3,7"], "qualities must be in 1..6"),
        (["IMAGES", "-a", "no-such-codec"], "unknown architecture"),
        (["IMAGES", "--reference", "missing-reference"], "reference folder"),
        (["IMAGES", "-a", "--checkpoint", "missing.pth.tar"], "does not exist"),
        (["IMAGES", "-a", "--no-classic"], "nothing to measure"),
        (["IMAGES", "-a", "--checkpoint", "C0", "--checkpoint", "C1", "--label", "x"], "as many --label"),
        (
            ["IMAGES", "-a", "--checkpoint", "C0", "--label", "x", "--checkpoint", "C1", "--label", "x"],
            "must differ",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors(setup, tmp_path, capsys, monkeypatch, args, message):
    root, images, checkpoints = setup
    monkeypatch.chdir(tmp_path)
    named = {"IMAGES": str(images), "C0": str(checkpoints[0]), "C1": str(checkpoints[1])}
    args = [named.get(a, a) for a in args]
    assert main([*args, "-o", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_encode_and_info_print_only_their_own_lines(setup, tmp_path):
    _, images, checkpoints = setup
    image = sorted(images.iterdir())[0]
    cli = [sys.executable, "-m", "compressai_feds.cli"]
    encoded = subprocess.run(
        [*cli, "encode", str(image), "-o", str(tmp_path / "a.feds"), "--checkpoint", str(checkpoints[0])],
        capture_output=True,
        text=True,
    )
    assert encoded.returncode == 0 and encoded.stderr == ""
    assert encoded.stdout.startswith(f"{image} -> ") and encoded.stdout.count("\n") == 1
    info = subprocess.run([*cli, "info", str(tmp_path / "a.feds")], capture_output=True, text=True)
    assert info.returncode == 0 and info.stderr == "" and info.stdout.count("\n") == 1


def test_every_one_of_our_curves_gets_its_own_look_in_the_rd_plot():
    """Seven of ours (as the v2 report draws: two v1 curves, five v2 ones) in seven
    distinct colour, line and marker combinations; the classics keep their family colour."""
    plt = _pyplot()
    ours = [f"ours {i}" for i in range(7)]
    runs = [
        CodecRun(name, "ours", [], [{"bpp": 0.1 * i, "psnr-rgb": 28.0 + i} for i in (1, 2)]) for name in ours
    ]
    runs.append(
        CodecRun("WebP", "classic", [], [{"bpp": 0.2, "psnr-rgb": 29.0}, {"bpp": 0.4, "psnr-rgb": 31.0}])
    )
    fig, ax = plt.subplots()
    _draw_curves(ax, runs, [], ours)
    looks = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]
    plt.close(fig)
    assert len(set(looks[:7])) == 7, looks
    assert looks[7][0] == "tab:purple"


def test_an_ms_ssim_report_ranks_curves_in_ms_ssim_db_against_the_published_ms_ssim_curves(tmp_path):
    """``-m ms-ssim``: CompressAI's curve of the model trained for MS-SSIM, not the MSE one,
    and every BD figure on MS-SSIM dB = −10·log10(1 − MS-SSIM)."""
    rates = [0.1, 0.2, 0.4, 0.8]
    db = [10.0, 12.0, 14.0, 16.0]  # 2 dB per doubling of the rate
    ms_ssim = [1 - 10 ** (-d / 10) for d in db]
    reference = tmp_path / "reference"
    reference.mkdir()
    for metric, scale in (("mse", 4.0), ("ms-ssim", 2.0)):
        results = {"bpp": [scale * r for r in rates], "psnr-rgb": [30.0, 31, 32, 33], "ms-ssim-rgb": ms_ssim}
        (reference / f"compressai-mbt2018-mean_{metric}_cpu.json").write_text(
            json.dumps({"results": results})
        )
    published = published_curves(reference, "ms-ssim")
    assert [label for label, _ in published] == ["mbt2018-mean for MS-SSIM (published)"]
    assert published[0][1].quality == pytest.approx(db)
    points = [
        {"bpp": r, "psnr-rgb": 20.0 + i, "ms-ssim-rgb": m, "encoding_time": 0.1, "decoding_time": 0.1,
         "megapixels": 0.4}
        for i, (r, m) in enumerate(zip(rates, ms_ssim, strict=True))
    ]  # fmt: skip
    runs = [CodecRun("feds-student", "ours", [Setting(f"q{k}", bytes, Image.open) for k in range(4)], points)]
    report = write_report(runs, published, tmp_path / "out", [tmp_path / "a.png"], [], "report", "ms-ssim")
    assert "fewer bits at equal MS-SSIM (dB)" in report
    row = next(line for line in report.splitlines() if line.startswith("| feds-student (measured) |"))
    assert row.endswith("| -50.0% (+2.00 dB) |")  # half the rate of the MS-SSIM model's curve
    assert "## Points (bpp, MS-SSIM RGB (dB))" in report and "q1: 0.200 bpp, 12.00 dB" in report


def test_an_ms_ssim_report_needs_images_large_enough_for_five_scales(tmp_path, capsys):
    images = sample_crops(tmp_path / "small", size=96)
    assert main([str(images), "-m", "ms-ssim", "-a", "--no-progress", "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: MS-SSIM's five scales need images of at least 161 px a side"


def test_an_ms_ssim_report_codes_and_plots_on_ms_ssim_db(setup, tmp_path, capsys):
    _, images, checkpoints = setup
    out = tmp_path / "out"
    args = [str(images), "-a", "--checkpoint", *map(str, checkpoints), "--label", "x", "-m", "ms-ssim"]
    assert main([*args, "--no-classic", "--no-progress", "-o", str(out)]) == 0
    assert "fewer bits at equal MS-SSIM (dB)" in (out / "report.md").read_text()
    assert (out / "rd.png").stat().st_size > 10_000
    results = json.loads((out / "results" / "x.json").read_text())["results"]
    assert len(results["ms-ssim-rgb"]) == 2 and all(0 < v < 1 for v in results["ms-ssim-rgb"])
