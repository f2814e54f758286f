"""One codec for every quality: gain units, exact decoding at real qualities, the
quality in the file, rate control, and variable-rate training."""

import json

import numpy as np
import pytest
import torch
from helpers import SAMPLES, run_main
from PIL import Image
from test_exact import (
    assert_same_latent,
    assert_same_latent_without_onednn_and_in_channels_last,
    decode,
    perturbed_float_convolutions,
    threads,
)
from torchvision.transforms.functional import to_tensor

from compressai_feds import FEDSCodec, FEDSStudent, FEDSTeacher, feds_student
from compressai_feds.checkpoint_io import exports_of, load_codec
from compressai_feds.cli import main as cli_main
from compressai_feds.codec import Codec, CodecError, compress_image, compress_to_target, decompress_image
from compressai_feds.container import ContainerError, unpack
from compressai_feds.gain_units import GainUnits
from compressai_feds.quality import QUALITY_GRID, lambda_at, snap_quality
from compressai_feds.zoo import checkpoint_dir


def trained_v2(architecture: str) -> FEDSCodec:
    """The v2 campaign's variable-rate codec (trained on all six qualities; the zoo's), ready
    to code."""
    found = exports_of(checkpoint_dir(), f"{architecture}-mse")
    if not found:
        pytest.skip(f"no trained variable-rate {architecture} in the repository")
    net = load_codec(found[0])
    assert net.variable_rate
    net.eval().update(force=True)
    return net


@pytest.fixture(scope="module")
def codec_net() -> FEDSStudent:
    """The trained variable-rate FEDS student: gains, inverse gains and side offsets as
    training left them, so that every term of the variable-rate path counts."""
    return trained_v2("feds-student")


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    path = sorted(SAMPLES.glob("*.png"))[0]
    return to_tensor(Image.open(path).convert("RGB"))[None, :, :192, :256]


def coded_bits(encoded) -> int:
    return sum(len(s[0]) for s in encoded["strings"]) * 8


@pytest.mark.parametrize("quality", [1, 2.5, 6])
def test_round_trip_is_exact_at_real_qualities(codec_net, image, quality):
    codec_net.quality = quality
    encoded = codec_net.compress(image)
    assert_same_latent(codec_net, encoded, decode(codec_net, encoded))


def test_rate_and_psnr_increase_with_quality(codec_net, image):
    rates, errors = [], []
    for quality in (1, 1.5, 2, 2.5, 3, 4, 5, 6):
        codec_net.quality = quality
        encoded = codec_net.compress(image)
        rates.append(coded_bits(encoded))
        errors.append(torch.mean((decode(codec_net, encoded)["x_hat"] - image) ** 2).item())
    assert rates == sorted(rates) and len(set(rates)) == len(rates), rates
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == len(errors), errors


@pytest.mark.parametrize("encode_threads, decode_threads", [(1, 2), (2, 1)])
def test_quality_2_5_decodes_the_same_latent_at_other_thread_counts(
    codec_net, image, encode_threads, decode_threads
):
    codec_net.quality = 2.5
    with threads(encode_threads):
        encoded = codec_net.compress(image)
    with threads(decode_threads):
        assert_same_latent(codec_net, encoded, decode(codec_net, encoded))


def test_quality_2_5_decodes_the_same_latent_without_onednn_and_perturbed(codec_net, image):
    codec_net.quality = 2.5
    encoded = codec_net.compress(image)
    assert_same_latent_without_onednn_and_in_channels_last(codec_net, encoded)
    with perturbed_float_convolutions(1e-6):
        assert_same_latent(codec_net, encoded, decode(codec_net, encoded))


def test_decoding_at_another_quality_does_not_give_the_same_latent(codec_net, image):
    codec_net.quality = 2.5
    encoded = codec_net.compress(image)
    codec_net.quality = 2.5 + 1 / QUALITY_GRID
    try:
        decoded = decode(codec_net, encoded)
    except ValueError:  # BitstreamError: refused, fine too
        return
    assert not torch.equal(decoded["y_hat"], encoded["y_hat"])


def test_the_side_offset_is_exact_on_the_grid():
    units = GainUnits(8, 6)
    with torch.no_grad():
        units.side_offset.normal_()
    offset = units.coding_side_offset(2.5)
    assert torch.equal(offset * 4096, torch.round(offset * 4096))
    assert torch.allclose(offset[0, :, 0, 0], units.side_offset[1:3].mean(0), atol=2 / 4096)
    assert torch.equal(units.coding_side_offset(2.5 + 1e-6), offset)  # snapped to the grid


def test_gains_interpolate_in_the_log_domain_and_start_from_the_lambda_table():
    units = GainUnits(4, 2)
    gain, inverse, _ = units(torch.tensor([1.0, 3.0, 3.5, 6.0]))
    assert torch.allclose(gain[1], torch.ones(4, 1, 1))
    assert torch.allclose(gain[0] ** 2, torch.tensor(0.0018 / 0.0067), rtol=1e-5)
    assert torch.allclose(gain[2], (gain[1] * units(torch.tensor([4.0]))[0][0]).sqrt(), rtol=1e-5)
    assert torch.allclose(gain * inverse, torch.ones_like(gain))


def test_quality_is_validated_and_a_fixed_rate_codec_refuses_one(image):
    net = FEDSStudent(variable_rate=True)
    for bad in (0.5, 6.01, float("nan"), "3"):
        with pytest.raises(ValueError, match="invalid quality"):
            net.quality = bad
    with pytest.raises(ValueError, match="fixed-rate"):
        FEDSStudent().quality = 3
    with pytest.raises(ValueError, match="fixed-rate"):
        FEDSStudent()(image, quality=3)
    assert snap_quality(2.4999) == 2.5 and lambda_at(3) == 0.0067
    assert lambda_at(2.5) == pytest.approx((0.0035 * 0.0067) ** 0.5)


def test_zoo_function_sets_the_quality_of_a_variable_rate_model():
    net = feds_student(quality=2.5, variable_rate=True)
    assert net.variable_rate and net.quality == 2.5
    with pytest.raises(ValueError, match="whole quality"):
        feds_student(quality=2.5)


def test_variable_rate_checkpoint_serves_every_quality_from_the_zoo(codec_net, tmp_path, monkeypatch):
    """One file, named without a quality, as part 2 of the zoo ships it."""
    from compressai_feds.checkpoint_io import half_precision

    path = tmp_path / "feds-student-mse-00000000.pth.tar"
    torch.save(half_precision(codec_net.state_dict()), path)
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    path = path.rename(tmp_path / f"feds-student-mse-{digest}.pth.tar")
    monkeypatch.setenv("COMPRESSAI_FEDS_ZOO", str(tmp_path))
    for quality in (1, 2.5, 6):
        net = feds_student(quality=quality, pretrained=True)
        assert net.variable_rate and net.quality == quality


def test_file_stores_the_quality_and_decodes_at_it(codec_net, tmp_path):
    path = tmp_path / "vr.pth.tar"
    torch.save({"state_dict": codec_net.state_dict(), "architecture": "feds-student"}, path)
    codec = Codec.from_checkpoint(path, quality=2.5)
    image = Image.open(sorted(SAMPLES.glob("*.png"))[0]).crop((0, 0, 200, 150))
    data, reconstruction = compress_image(codec, image)
    header, _ = unpack(data)
    assert header.quality == 2.5 and header.from_checkpoint
    assert "quality 2.5, a checkpoint" in header.model_name
    other = Codec.from_checkpoint(path, quality=6)  # the file's quality wins
    assert np.array_equal(np.asarray(decompress_image(other, data)), np.asarray(reconstruction))


def test_file_records_the_quality_its_net_coded_at_however_it_was_set(codec_net, tmp_path):
    path = tmp_path / "vr.pth.tar"
    torch.save({"state_dict": codec_net.state_dict(), "architecture": "feds-student"}, path)
    codec = Codec.from_checkpoint(path, quality=2.5)
    codec.net.quality = 4  # on the net itself, not through the codec
    image = Image.open(sorted(SAMPLES.glob("*.png"))[0]).crop((0, 0, 200, 150))
    data, reconstruction = compress_image(codec, image)
    assert unpack(data)[0].quality == codec.quality == 4
    fresh = Codec.from_checkpoint(path)
    assert np.array_equal(np.asarray(decompress_image(fresh, data)), np.asarray(reconstruction))


def test_format_version_3_is_refused_naming_both_versions():
    with pytest.raises(ContainerError, match="version 3 is not supported .*version 4"):
        unpack(b"FEDS" + bytes([3]) + bytes(40))


def test_target_bpp_is_met_by_the_highest_quality_under_it(codec_net, tmp_path):
    path = tmp_path / "vr.pth.tar"
    torch.save({"state_dict": codec_net.state_dict(), "architecture": "feds-student"}, path)
    codec = Codec.from_checkpoint(path)
    image = Image.open(sorted(SAMPLES.glob("*.png"))[0]).crop((0, 0, 256, 192))
    pixels = image.width * image.height
    low = len(compress_image(codec, image, reconstruct=False)[0]) * 8 / pixels  # quality 3
    target = low * 1.2
    data, _, choice = compress_to_target(codec, image, target_bpp=target)
    assert choice.met and choice.bpp <= target and len(data) * 8 / pixels == choice.bpp
    codec.set_quality(choice.quality + 1 / QUALITY_GRID)
    above = len(compress_image(codec, image, reconstruct=False)[0]) * 8 / pixels
    assert above > target  # the next quality on the grid is over the target
    _, _, unreachable = compress_to_target(codec, image, target_bpp=0.001)
    assert not unreachable.met and unreachable.quality == 1
    _, decoded, by_psnr = compress_to_target(codec, image, target_psnr=25)
    assert decoded is not None and (by_psnr.psnr >= 25) == by_psnr.met
    with pytest.raises(CodecError, match="one target"):
        compress_to_target(codec, image)


def test_cli_encodes_to_a_target_rate_and_refuses_it_for_a_fixed_rate_model(codec_net, tmp_path, capsys):
    path = tmp_path / "vr.pth.tar"
    torch.save({"state_dict": codec_net.state_dict(), "architecture": "feds-student"}, path)
    source = tmp_path / "a.png"
    Image.open(sorted(SAMPLES.glob("*.png"))[0]).crop((0, 0, 256, 192)).save(source)
    encoded = tmp_path / "a.feds"
    run = run_main(
        cli_main, "encode", source, "--checkpoint", path, "--target-bpp", "0.5", "-o", encoded, capsys=capsys
    )
    assert run.returncode == 0, run.stderr
    assert "quality" in run.stdout and "meets 0.5 bpp" in run.stdout
    decoded = run_main(
        cli_main, "decode", encoded, "--checkpoint", path, "-o", tmp_path / "a.out.png", capsys=capsys
    )
    assert decoded.returncode == 0, decoded.stderr
    lowest = compress_to_target(Codec.from_checkpoint(path), Image.open(source), target_bpp=0.001)[2]
    for target, nearest in (
        ("--target-bpp", f"the lowest rate this model reaches on this image is {lowest.bpp:.4f} bpp"),
        ("--target-psnr", "the highest PSNR this model reaches on this image is "),
    ):
        run = run_main(cli_main, "encode", source, "--checkpoint", path, target, "0.001" if "bpp" in target else "90",
                       "-o", encoded, capsys=capsys)  # fmt: skip
        assert (
            run.returncode == 0
            and f"CANNOT meet {'0.001 bpp' if 'bpp' in target else '90.0 dB'}: {nearest}" in run.stdout
        )
    fixed = tmp_path / "fixed.pth.tar"
    torch.save({"state_dict": FEDSStudent(N=16, M=32, groups=(8, 24)).state_dict()}, fixed)
    refused = run_main(
        cli_main, "encode", source, "--checkpoint", fixed, "--target-bpp", "0.5", capsys=capsys
    )
    assert refused.returncode == 2 and "variable-rate" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


# -- training -------------------------------------------------------------------


def test_variable_rate_training_distils_validates_per_quality_and_resumes_its_average(tmp_path):
    from dataclasses import replace

    from helpers import sample_crops
    from test_trainer import TINY_STUDENT, tiny_config

    from compressai_feds.trainer import DistillationTrainer

    torch.manual_seed(0)
    teacher = FEDSTeacher(N=32, M=64, groups=(16, 48), num_res_blocks=1, variable_rate=True)
    torch.save({"state_dict": teacher.state_dict(), "architecture": "feds-teacher"}, tmp_path / "t.pth.tar")
    data = {
        "train": sample_crops(tmp_path / "train", size=96),
        "val": sample_crops(tmp_path / "val", size=64, count=1),
        "teacher": tmp_path / "t.pth.tar",
    }
    student_args = {**TINY_STUDENT, "variable_rate": True, "auxiliary_transform": True}
    vr = {"student_args": student_args, "qualities": [1, 6], "ema_decay": 0.9}
    stages = tiny_config(data).stages
    stages[-1] = replace(stages[-1], balance_qualities=True, quality_weights=[2, 1.5, 1, 1, 1, 1])
    trainer = DistillationTrainer(tiny_config(data, **vr, stages=stages), tmp_path / "run", progress=False)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "stage" in r]
    assert logged and all("orthogonality_loss" in r for r in logged)  # the AuxT regulariser
    assert (tmp_path / "run" / "training.png").is_file()
    validation = [r for r in records if "val" in r][-1]
    assert set(validation["val"]) >= {"q1", "q6", "rd_loss"} and "val_ema" in validation
    assert validation["val"]["q6"]["bpp"] > validation["val"]["q1"]["bpp"]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pth.tar", weights_only=True)
    assert "ema" in checkpoint
    quality_rd = checkpoint["adapters"]["quality_rd"]  # the running means the balanced stage used
    assert quality_rd[6] > quality_rd[1] > 0 and quality_rd[[0, 2, 3, 4, 5]].eq(0).all()
    resumed = DistillationTrainer(replace(trainer.config), tmp_path / "run", resume=True)
    for a, b in zip(resumed.ema.parameters(), trainer.ema.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="variable-rate student needs a variable-rate teacher"):
        fixed = FEDSTeacher(N=32, M=64, groups=(16, 48), num_res_blocks=1)
        torch.save({"state_dict": fixed.state_dict(), "architecture": "feds-teacher"}, tmp_path / "f.pth.tar")
        DistillationTrainer(tiny_config({**data, "teacher": tmp_path / "f.pth.tar"}, **vr), tmp_path / "x")
    with pytest.raises(ValueError, match='"variable_rate": true'):
        DistillationTrainer(tiny_config(data, teacher=None, qualities=[1, 6]), tmp_path / "y")


def test_balanced_qualities_divide_each_image_by_its_quality_s_running_mean():
    from test_trainer import TINY_STUDENT

    from compressai_feds.config import Stage, TrainingConfig
    from compressai_feds.trainer import DistillationObjective

    student = FEDSStudent(**{**TINY_STUDENT, "variable_rate": True})
    objective = DistillationObjective(student, TrainingConfig(qualities=[1, 6]), None).train()
    x, quality = torch.rand(2, 3, 64, 64), torch.tensor([1, 6])
    torch.manual_seed(1)
    plain = objective(x, quality=quality)
    # first seen, each quality's running mean is its image's RD loss
    rd = objective.quality_rd[quality].clone()
    assert plain["loss"].item() == pytest.approx(rd.mean().item()) and rd[1] > 3 * rd[0] > 0
    assert objective.quality_rd[[0, 2, 3, 4, 5]].eq(0).all()
    running = rd * torch.tensor([0.5, 2.0])  # one quality doing better than its mean, one worse
    objective.quality_rd[quality] = running
    torch.manual_seed(1)  # the same noise: the same RD losses
    balanced = objective(x, quality=quality, balance_qualities=True)
    scale = 0.99 * running + 0.01 * rd
    assert torch.allclose(objective.quality_rd[quality], scale)
    assert balanced["loss"].item() == pytest.approx(((rd / scale).mean() * scale.mean()).item(), rel=1e-5)
    with pytest.raises(ValueError, match="balance_qualities needs variable-rate"):
        TrainingConfig(stages=[Stage("fine_tuning", 10, 1e-5, 0.0, 0.0, balance_qualities=True)])


def test_quality_weights_scale_each_balanced_term_and_are_checked():
    from test_trainer import TINY_STUDENT

    from compressai_feds.config import Stage, TrainingConfig
    from compressai_feds.trainer import DistillationObjective

    student = FEDSStudent(**{**TINY_STUDENT, "variable_rate": True})
    objective = DistillationObjective(student, TrainingConfig(qualities=[1, 6]), None).eval()
    x, quality = torch.rand(2, 3, 64, 64), torch.tensor([1, 6])
    objective.quality_rd[quality] = torch.tensor([0.5, 3.0])  # eval(): the running means stay put
    weights = torch.tensor([0.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.5])  # indexed by quality
    plain = objective(x, quality=quality, balance_qualities=True)["loss"]
    weighted = objective(x, quality=quality, balance_qualities=True, quality_weights=weights)["loss"]
    out = student(x, quality=quality)  # eval(): rounding, no noise: the same RD losses again
    rd = objective.per_image_rate_distortion(out, x, objective.lambdas[quality])["rd_per_image"]
    scale = torch.tensor([0.5, 3.0])
    assert plain.item() == pytest.approx(((rd / scale).mean() * scale.mean()).item(), rel=1e-5)
    expected = (torch.tensor([2.0, 0.5]) * rd / scale).mean() * scale.mean()
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="quality_weights weigh balanced terms"):
        Stage("fine_tuning", 10, 1e-5, 0.0, 0.0, quality_weights=[2, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="6 positive numbers"):
        Stage("fine_tuning", 10, 1e-5, 0.0, 0.0, balance_qualities=True, quality_weights=[2, 1])
    stage = {"name": "fine_tuning", "steps": 10, "lr": 1e-5, "feature_weight": 0.0, "channel_weight": 0.0}
    stage |= {"balance_qualities": True, "quality_weights": [2, 1, 1, 1, 1, 1]}  # as a config file has it
    assert TrainingConfig(qualities=[1, 6], stages=[stage]).stages[0].quality_weights == [2, 1, 1, 1, 1, 1]


def test_a_far_off_reconstruction_moves_its_quality_s_running_mean_by_at_most_a_tenth():
    from test_trainer import TINY_STUDENT

    from compressai_feds.config import TrainingConfig
    from compressai_feds.trainer import DistillationObjective

    student = FEDSStudent(**{**TINY_STUDENT, "variable_rate": True})
    objective = DistillationObjective(student, TrainingConfig(qualities=[1, 5]), None)
    objective.quality_rd[5] = 2.0
    objective._track_quality_rd(torch.tensor([1e10, 3.0]), torch.tensor([5, 1]))  # q1: first seen
    assert objective.quality_rd[5].item() == pytest.approx(0.99 * 2.0 + 0.01 * 20.0)
    assert objective.quality_rd[1].item() == 3.0


def test_fixed_rate_weights_warm_start_a_variable_rate_codec():
    fixed = FEDSStudent()
    net = FEDSStudent.from_state_dict(fixed.state_dict(), variable_rate=True)
    assert net.variable_rate and torch.equal(net.g_a[0][0].weight, fixed.g_a[0][0].weight)
    assert torch.equal(net.gain_units.log_gain, FEDSStudent(variable_rate=True).gain_units.log_gain)


def test_report_draws_a_curve_from_one_variable_rate_checkpoint(codec_net, tmp_path):
    from compressai_feds.report import learned_codecs, measure

    path = tmp_path / "vr.pth.tar"
    torch.save({"state_dict": codec_net.state_dict(), "architecture": "feds-student"}, path)
    (run,), _ = learned_codecs([], [1, 3, 6], {"variable rate": [path]})
    assert [setting.label for setting in run.settings] == [f"vr.pth.tar, quality {q}" for q in (1, 3, 6)]
    measure(
        [run], [Image.open(sorted(SAMPLES.glob("*.png"))[0]).convert("RGB").crop((0, 0, 128, 128))], False
    )
    rates = [point["bpp"] for point in run.points]
    assert rates == sorted(rates) and len(set(rates)) == 3


def test_the_variable_rate_teacher_decodes_exactly_at_a_fractional_quality(image):
    teacher = trained_v2("feds-teacher")
    teacher.quality = 2.5
    with threads(1):
        encoded = teacher.compress(image)
    with threads(2):
        assert_same_latent(teacher, encoded, decode(teacher, encoded))


def lambda_weighted_distillation(**setting: bool) -> tuple:
    """A tiny variable-rate student, its objective with ``setting``, two images at q1 and q6,
    the teacher's output and channel entropy on them, and the student's features."""
    from test_trainer import TINY_STUDENT

    from compressai_feds.config import TrainingConfig
    from compressai_feds.losses import channel_entropy_bits
    from compressai_feds.trainer import DistillationObjective

    torch.manual_seed(0)
    teacher = FEDSTeacher(N=32, M=64, groups=(16, 48), num_res_blocks=1, variable_rate=True).eval()
    student = FEDSStudent(**{**TINY_STUDENT, "variable_rate": True})
    objective = DistillationObjective(student, TrainingConfig(qualities=[1, 6], **setting), teacher)
    objective.eval()  # rounding: no noise
    x, quality = torch.rand(2, 3, 64, 64), torch.tensor([1, 6])
    with torch.no_grad():
        teacher_out = teacher(x, return_features=True, quality=quality)
    bits = channel_entropy_bits(teacher_out["likelihoods"]["y"])
    features = student(x, return_features=True, quality=quality)["features"]
    return objective, x, quality, teacher_out, bits, features


def test_the_channel_term_can_follow_each_image_s_lambda():
    """``channel_follows_lambda``: each image's channel term times its λ over the levels'
    mean λ (q1: 0.11, q6: 2.95)."""
    objective, x, quality, teacher_out, bits, features = lambda_weighted_distillation(
        channel_follows_lambda=True
    )
    got = objective(x, teacher_out, bits, 0.0, 1.0, quality=quality)["channel_loss"]
    y_student, y_teacher = features["y"], teacher_out["features"]["y"]
    each = [objective.channel_loss(y_student[i : i + 1], y_teacher[i : i + 1], bits) for i in range(2)]
    weights = objective.lambdas[quality] / objective.mean_lambda
    assert weights.tolist() == pytest.approx([0.1099, 2.948], rel=1e-3)
    assert got.item() == pytest.approx(((weights[0] * each[0] + weights[1] * each[1]) / 2).item(), rel=1e-4)


def test_the_feature_term_can_follow_each_image_s_lambda():
    """``feature_follows_lambda``: each image's feature alignment term times its λ over the
    levels' mean λ; the channel term keeps one weight for all."""
    objective, x, quality, teacher_out, bits, features = lambda_weighted_distillation(
        feature_follows_lambda=True
    )
    got = objective(x, teacher_out, bits, 1.0, 1.0, quality=quality)
    each = [
        objective.feature_loss(
            {k: v[i : i + 1] for k, v in features.items()},
            {k: v[i : i + 1] for k, v in teacher_out["features"].items()},
        )
        for i in range(2)
    ]
    weights = objective.lambdas[quality] / objective.mean_lambda
    expected = (weights[0] * each[0] + weights[1] * each[1]) / 2
    assert got["feature_loss"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert got["feature_loss"].item() != pytest.approx(((each[0] + each[1]) / 2).item(), rel=1e-2)
    unweighted = objective.channel_loss(features["y"], teacher_out["features"]["y"], bits)
    assert got["channel_loss"].item() == pytest.approx(unweighted.item(), rel=1e-4)


def test_ms_ssim_rate_distortion_per_image_is_compressai_s_at_one_lambda():
    from compressai.losses import RateDistortionLoss

    from compressai_feds.losses import PerImageRateDistortionLoss

    torch.manual_seed(0)
    x = torch.rand(2, 3, 192, 192)
    output = {
        "x_hat": (x + 0.05 * torch.randn_like(x)).clamp(0, 1),
        "likelihoods": {"y": torch.rand(2, 8, 12, 12)},
    }
    ours = PerImageRateDistortionLoss("ms-ssim")(output, x, torch.full((2,), 8.73))
    theirs = RateDistortionLoss(lmbda=8.73, metric="ms-ssim")(output, x)
    assert ours["loss"].item() == pytest.approx(theirs["loss"].item(), rel=1e-5)
    assert ours["ms_ssim_loss"].item() == pytest.approx(theirs["ms_ssim_loss"].item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the trainer runs it: MS-SSIM stays float32
        assert PerImageRateDistortionLoss("ms-ssim")(output, x, torch.full((2,), 8.73))["loss"].item() == (
            ours["loss"].item()
        )
    # each image at its own λ, its own MS-SSIM
    lmbda = torch.tensor([2.40, 60.50])
    each = PerImageRateDistortionLoss("ms-ssim")(output, x, lmbda)["rd_per_image"]
    for i in range(2):
        alone = {
            "x_hat": output["x_hat"][i : i + 1],
            "likelihoods": {"y": output["likelihoods"]["y"][i : i + 1]},
        }
        expected = RateDistortionLoss(lmbda=lmbda[i].item(), metric="ms-ssim")(alone, x[i : i + 1])["loss"]
        assert each[i].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ms_ssim_training_checks_its_window_against_the_crop():
    from compressai_feds.config import TrainingConfig

    with pytest.raises(ValueError, match="128 px crops take a window of at most 7 taps"):
        TrainingConfig(metric="ms-ssim", crop_size=128, qualities=[1, 6])
    assert TrainingConfig(metric="ms-ssim", crop_size=128, ms_ssim_window=7, qualities=[1, 6]).lmbda == 8.73
    assert TrainingConfig(metric="ms-ssim", crop_size=176, qualities=[1, 6]).ms_ssim_window == 11
    with pytest.raises(ValueError, match="odd number of taps"):
        TrainingConfig(ms_ssim_window=8)


def test_variable_rate_ms_ssim_training_validates_ms_ssim_per_quality(tmp_path):
    """rate + λ_i (1 − MS-SSIM_i) with the MS-SSIM λ table; validation reports MS-SSIM and
    MS-SSIM dB at each quality."""
    from helpers import sample_crops
    from test_trainer import TINY_STUDENT

    from compressai_feds.config import Stage, TrainingConfig
    from compressai_feds.quality import LAMBDAS
    from compressai_feds.trainer import DistillationTrainer

    config = TrainingConfig(
        data=str(sample_crops(tmp_path / "train", size=160)),
        val=str(sample_crops(tmp_path / "val", size=176, count=1)),
        student_args={**TINY_STUDENT, "variable_rate": True},
        metric="ms-ssim",
        qualities=[1, 6],
        stages=[Stage("rate_distortion", 2, 1e-4, 0.0, 0.0)],
        batch_size=2,
        crop_size=128,
        ms_ssim_window=7,
        workers=0,
        log_every=1,
    )
    trainer = DistillationTrainer(config, tmp_path / "run", progress=False)
    assert trainer.objective.lambdas[[1, 6]].tolist() == pytest.approx([2.40, 60.50])
    result = trainer.train()["val"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("ms_ssim_loss" in r for r in records if "val" not in r)
    for q in ("q1", "q6"):
        val = result[q]
        assert 0 < val["ms_ssim"] < 1
        assert val["ms_ssim_db"] == pytest.approx(-10 * np.log10(1 - val["ms_ssim"]), rel=1e-6)
        assert val["rd_loss"] == pytest.approx(
            LAMBDAS["ms-ssim"][int(q[1])] * (1 - val["ms_ssim"]) + val["bpp"], rel=1e-6
        )
    assert result["ms_ssim_db"] == pytest.approx(
        (result["q1"]["ms_ssim_db"] + result["q6"]["ms_ssim_db"]) / 2
    )
