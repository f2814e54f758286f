"""The compressai-feds command line: one round trip through the installed script as a user
runs it, the failures in-process (``main(argv)``, the script's body) to spare an interpreter
start-up each."""

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SAMPLES, run_main
from PIL import Image

from compressai_feds import FEDSStudent
from compressai_feds.bdrate import ms_ssim_db
from compressai_feds.cli import main
from compressai_feds.codec import Codec, compress_image
from compressai_feds.images import image_ms_ssim
from compressai_feds.zoo import CHECKPOINT_DIR_ENV

SCRIPT = str(Path(sys.executable).parent / "compressai-feds")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def run(capsys):
    """``compressai-feds ARGS`` in this process: exit status and output, as :func:`cli` gives."""
    return lambda *args: run_main(main, *args, capsys=capsys)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    checkpoint = root / "student.pth.tar"
    torch.save({"state_dict": FEDSStudent(N=16, M=32, groups=(8, 24)).state_dict()}, checkpoint)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 255, (30, 20), dtype=np.uint8)).save(root / "b.png")
    return root, checkpoint


def test_encode_info_decode_round_trip(files):
    root, checkpoint = files
    encoded = cli(
        "encode", root / "a.png", root / "b.png", "-o", root / "enc", "--checkpoint", checkpoint, "--metrics"
    )
    assert encoded.returncode == 0, encoded.stderr
    assert "bpp" in encoded.stdout and "PSNR" in encoded.stdout
    info = cli("info", root / "enc" / "a.feds")
    assert "50x40 RGB" in info.stdout and "feds-student" in info.stdout
    decoded = cli(
        "decode",
        root / "enc" / "a.feds",
        root / "enc" / "b.feds",
        "-o",
        root / "dec",
        "--checkpoint",
        checkpoint,
    )
    assert decoded.returncode == 0, decoded.stderr
    codec = Codec.from_checkpoint(checkpoint)
    for name, mode in (("a", "RGB"), ("b", "L")):
        _, expected = compress_image(codec, Image.open(root / f"{name}.png"))
        got = Image.open(root / "dec" / f"{name}.png")
        assert got.mode == mode and np.array_equal(np.asarray(got), np.asarray(expected))


def test_encode_metrics_give_ms_ssim_where_its_five_scales_fit(run, files, tmp_path):
    root, checkpoint = files
    rng = np.random.default_rng(1)
    big = Image.fromarray(rng.integers(0, 255, (170, 180, 3), dtype=np.uint8))
    big.save(tmp_path / "big.png")
    result = run(
        "encode",
        tmp_path / "big.png",
        root / "a.png",
        "-o",
        tmp_path,
        "--checkpoint",
        checkpoint,
        "--metrics",
    )
    assert result.returncode == 0, result.stderr
    big_line, small_line = sorted(result.stdout.strip().splitlines(), key=lambda line: "big" not in line)
    _, decoded = compress_image(Codec.from_checkpoint(checkpoint), big)
    expected = image_ms_ssim(big, decoded)
    assert f"MS-SSIM {expected:.4f} ({ms_ssim_db(expected):.2f} dB)" in big_line
    assert "PSNR" in small_line and "MS-SSIM" not in small_line  # 50x40: too small for five scales


def assert_clean_failures(result: subprocess.CompletedProcess, count: int, out_dir: Path) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len([line for line in lines if line.startswith("error: ")]) == count, result.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())


def test_bad_files_fail_one_line_each_without_output(files, run):
    root, checkpoint = files
    good = root / "good.feds"
    assert run("encode", root / "a.png", "-o", good, "--checkpoint", checkpoint).returncode == 0
    data = good.read_bytes()
    bad = root / "bad"
    bad.mkdir()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    body = bytearray(data[:-4])
    body[-len(data) // 3] ^= 0xFF
    oversized = data[:-4][:40] + struct.pack(">I", 2**31) + data[44:-4]
    cases = {
        "truncated.feds": data[: len(data) // 2],
        "flipped.feds": bytes(flipped),
        "empty.feds": b"",
        "random.feds": np.random.default_rng(1).bytes(300),
        "oversized.feds": oversized + struct.pack(">I", zlib.crc32(oversized)),
        "not-feds.feds": (root / "a.png").read_bytes(),
    }
    for name, content in cases.items():
        (bad / name).write_bytes(content)
    (bad / "folder.feds").mkdir()
    inputs = [*sorted(bad.glob("*.feds")), root / "missing.feds"]
    out_dir = root / "decoded-bad"
    result = run("decode", *inputs, "-o", out_dir, "--checkpoint", checkpoint)
    assert_clean_failures(result, len(inputs), out_dir)


def test_bad_images_fail_one_line_each_without_output(files, run):
    root, checkpoint = files
    (root / "text.png").write_text("not an image")
    (root / "folder.png").mkdir(exist_ok=True)
    out_dir = root / "encoded-bad"
    result = run(
        "encode",
        root / "text.png",
        root / "folder.png",
        root / "missing.png",
        "-o",
        out_dir,
        "--checkpoint",
        checkpoint,
    )
    assert_clean_failures(result, 3, out_dir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_fails_cleanly(files, tmp_path, run):
    root, checkpoint = files
    locked = tmp_path / "locked.png"
    locked.write_bytes((root / "a.png").read_bytes())
    locked.chmod(0)
    result = run("encode", locked, "-o", tmp_path / "out", "--checkpoint", checkpoint)
    assert_clean_failures(result, 1, tmp_path / "out")


def test_wrong_model_and_bad_checkpoint_are_named(files, tmp_path, run, monkeypatch):
    root, checkpoint = files
    assert (
        run("encode", root / "a.png", "-o", tmp_path / "a.feds", "--checkpoint", checkpoint).returncode == 0
    )
    torch.manual_seed(5)
    other = tmp_path / "other.pth.tar"
    torch.save({"state_dict": FEDSStudent(N=16, M=32, groups=(8, 24)).state_dict()}, other)
    result = run("decode", tmp_path / "a.feds", "-o", tmp_path / "a.png", "--checkpoint", other)
    assert (
        result.returncode == 1
        and "coded by feds-student" in result.stderr
        and "Traceback" not in result.stderr
    )
    assert not (tmp_path / "a.png").exists()
    no_checkpoint = run("decode", tmp_path / "a.feds", "-o", tmp_path / "a.png")
    assert no_checkpoint.returncode == 1 and "pass it with --checkpoint" in no_checkpoint.stderr
    # a zoo folder without the asked-for model: named, not replaced by random weights
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path))
    zoo = run("encode", root / "a.png", "-o", tmp_path / "z.feds", "-q", "2", "-m", "ms-ssim")
    assert zoo.returncode == 2 and "no pretrained feds-student checkpoint" in zoo.stderr
    (tmp_path / "junk.pth.tar").write_bytes(b"junk")
    junk = run("encode", root / "a.png", "-o", tmp_path / "j.feds", "--checkpoint", tmp_path / "junk.pth.tar")
    assert junk.returncode == 2 and "refusing checkpoint" in junk.stderr and "Traceback" not in junk.stderr


def test_zoo_ms_ssim_model_codes_records_its_metric_and_decodes_without_a_checkpoint(tmp_path, run):
    """``encode -m ms-ssim`` takes the shipped model trained for MS-SSIM; the file says so and
    ``decode`` finds the same model in the zoo by itself."""
    image = Image.open(sorted(SAMPLES.glob("*.png"))[0]).crop((0, 0, 192, 128))
    image.save(tmp_path / "s.png")
    encoded = run("encode", tmp_path / "s.png", "-o", tmp_path / "s.feds", "-q", "2.5", "-m", "ms-ssim")
    assert encoded.returncode == 0, encoded.stderr
    assert "ms-ssim" in run("info", tmp_path / "s.feds").stdout
    assert run("decode", tmp_path / "s.feds", "-o", tmp_path / "d.png").returncode == 0
    _, expected = compress_image(Codec.from_zoo("feds-student", 2.5, "ms-ssim"), image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.png")), np.asarray(expected))


def test_output_suffix_picks_the_format_and_png_refuses_cmyk(files, tmp_path, run):
    root, checkpoint = files
    Image.open(root / "a.png").convert("CMYK").save(tmp_path / "c.jpg")
    assert (
        run("encode", tmp_path / "c.jpg", "-o", tmp_path / "c.feds", "--checkpoint", checkpoint).returncode
        == 0
    )
    png = run("decode", tmp_path / "c.feds", "-o", tmp_path / "c.png", "--checkpoint", checkpoint)
    assert png.returncode == 1 and "decode to a .tiff" in png.stderr and not (tmp_path / "c.png").exists()
    tiff = run("decode", tmp_path / "c.feds", "-o", tmp_path / "c.tiff", "--checkpoint", checkpoint)
    assert tiff.returncode == 0 and Image.open(tmp_path / "c.tiff").mode == "CMYK"
