import json

import pytest
import torch
from helpers import sample_crops

from compressai_feds.benchmark import main


def test_benchmark_reports_both_models_and_their_ratios(tmp_path):
    images = sample_crops(tmp_path / "images", size=64, count=1)
    report = main([str(images), "--json", str(tmp_path / "report.json")])
    assert json.loads((tmp_path / "report.json").read_text()) == report
    teacher, student = report["models"]["teacher"], report["models"]["student"]
    assert report["ratios"]["parameters"] == pytest.approx(student["parameters"] / teacher["parameters"])
    assert report["ratios"]["parameters"] <= 0.37
    assert all(row["encode_s"] > 0 and row["decode_s"] > 0 and row["bpp"] > 0 for row in (teacher, student))


def test_entropy_path_comparison_codes_three_ways(tmp_path, capsys):
    images = sample_crops(tmp_path / "images", size=64, count=1)
    report = main([str(images), "--entropy-path"])
    for row in report["models"].values():
        paths = row["entropy_paths"]
        assert set(paths) == {"exact", "unchecked", "float_path"}
        assert all(path["decode_s"] > 0 and path["bpp"] > 0 for path in paths.values())
        assert paths["exact"]["bpp"] == paths["unchecked"]["bpp"] == row["bpp"]  # the check changes no bit
    assert "without the re-encoding check" in capsys.readouterr().out


def test_the_decoding_check_is_a_setting_of_each_model(student):
    import copy

    from compressai_feds.entropy_coding import BitstreamError

    x = torch.rand(1, 3, 64, 64)
    encoded = student.compress(x)
    forged = [list(s) for s in encoded["strings"]]
    forged[1][0] = bytes(b ^ 0x5A for b in forged[1][0])
    unchecked = copy.deepcopy(student)
    unchecked.verify_decoding = False
    unchecked.decompress(forged, encoded["shape"])  # decodes something, unchecked
    assert student.verify_decoding and not unchecked.verify_decoding
    with pytest.raises(BitstreamError):
        student.decompress(forged, encoded["shape"])


def test_benchmark_refuses_a_missing_folder(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "missing")])


@pytest.mark.parametrize("fast", [True, False])
def test_training_step_is_timed_in_both_modes(fast):
    from compressai_feds import FEDSStudent
    from compressai_feds.benchmark import training_step_seconds

    net = FEDSStudent(N=16, M=32, groups=(8, 24))
    assert training_step_seconds(net, 0.01, fast=fast, batch=1, size=64, steps=1) > 0
