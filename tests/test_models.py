import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from compressai_feds import FEATURE_NAMES, FEDSCodec, FEDSStudent, FEDSTeacher


def num_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_student_has_at_most_37_percent_of_teacher_parameters(student, teacher):
    assert num_parameters(student) <= 0.37 * num_parameters(teacher)


@pytest.mark.parametrize("codec", ["student", "teacher"])
def test_forward_returns_likelihoods_and_named_features(codec, request):
    net: FEDSCodec = request.getfixturevalue(codec)
    x = torch.rand(2, 3, 64, 128)
    out = net(x, return_features=True)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (2, net.M, 4, 8)
    assert set(out["features"]) == set(FEATURE_NAMES)
    expected_sizes = {"analysis_1": 2, "analysis_2": 4, "analysis_3": 8, "y": 16}
    expected_sizes.update(synthesis_1=8, synthesis_2=4, synthesis_3=2)
    for name, factor in expected_sizes.items():
        assert out["features"][name].shape[2:] == (64 // factor, 128 // factor), name
    assert out["features"]["y"].size(1) == net.M
    assert "features" not in net(x)


def test_forward_pads_and_crops_any_size(student):
    x = torch.rand(1, 3, 33, 70)
    out = student(x)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape[2:] == (4, 8)  # padded to 64 x 128


@pytest.mark.parametrize("codec", ["student", "teacher"])
@pytest.mark.parametrize("size", [(1, 1), (17, 5), (64, 64), (70, 130)])
def test_decompress_reproduces_the_encoder_side_reconstruction(codec, size, request):
    net: FEDSCodec = request.getfixturevalue(codec)
    torch.manual_seed(sum(size))
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        enc = net.compress(x)
        expected = net.synthesize(enc["y_hat"], enc["shape"])
        x_hat = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert x_hat.shape == x.shape
    assert torch.equal(x_hat, expected)
    assert len(enc["strings"]) == len(net.groups) + 1


@pytest.mark.parametrize("threads", [1, 2])
def test_decoding_is_exact_at_each_thread_count(student, threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand(1, 3, 96, 80)
        enc = student.compress(x)
        x_hat = student.decompress(enc["strings"], enc["shape"])["x_hat"]
        expected = student.synthesize(enc["y_hat"], enc["shape"])
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(x_hat, expected)


def test_decoding_with_another_thread_count_stays_in_sync(teacher):
    """Float kernels round differently with other thread counts; the fixed-point
    entropy path makes the decoded latent identical all the same (more in
    test_exact.py, with trained weights)."""
    saved = torch.get_num_threads()
    x = torch.rand(1, 3, 128, 192)
    try:
        torch.set_num_threads(1)
        enc = teacher.compress(x)
        torch.set_num_threads(2)
        y_hat = teacher.decompress(enc["strings"], enc["shape"])["y_hat"]
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(y_hat, enc["y_hat"])


def test_batch_compression_round_trips(student):
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        enc = student.compress(x)
        x_hat = student.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert all(len(s) == 3 for s in enc["strings"])
    assert torch.equal(x_hat, student.synthesize(enc["y_hat"], enc["shape"]))


@pytest.mark.parametrize("cls", [FEDSStudent, FEDSTeacher])
def test_from_state_dict_rebuilds_the_same_codec(cls):
    torch.manual_seed(1)
    custom = cls(N=64, M=96, groups=(16, 80), num_res_blocks=1).eval()
    custom.update(force=True)
    rebuilt = cls.from_state_dict(custom.state_dict()).eval()
    assert (rebuilt.N, rebuilt.M, rebuilt.groups) == (64, 96, [16, 80])
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x)["x_hat"], custom(x)["x_hat"])
        enc = custom.compress(x)
        assert torch.equal(
            rebuilt.decompress(enc["strings"], enc["shape"])["x_hat"],
            custom.decompress(enc["strings"], enc["shape"])["x_hat"],
        )


def test_from_state_dict_rejects_foreign_weights():
    from compressai.models import FactorizedPrior

    with pytest.raises(ValueError, match="not from a FEDSStudent"):
        FEDSStudent.from_state_dict(FactorizedPrior(8, 8).state_dict())


def test_paper_scale_teacher_is_available():
    net = FEDSTeacher(N=192, M=320, groups=(16, 16, 32, 64, 192))
    assert net.M == 320 and net.g_a[0][0].out_channels == 192


def test_aux_loss_and_update(student):
    net = FEDSStudent()
    assert net.aux_loss().item() > 0
    assert net.update(force=True)


@pytest.mark.parametrize(
    "bad,message",
    [
        (torch.rand(3, 32, 32), r"shape \(B, 3, H, W\)"),
        (torch.rand(1, 1, 32, 32), r"shape \(B, 3, H, W\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float image"),
        ("image.png", "got str"),
        (torch.rand(1, 3, 0, 32), "non-empty"),
        (torch.rand(0, 3, 32, 32), "non-empty"),
    ],
)
def test_bad_images_are_refused_with_a_message(student, bad, message):
    with pytest.raises(ValueError, match=message):
        student.compress(bad)
    with pytest.raises(ValueError, match=message):
        student(bad)


def test_wrong_number_of_bitstreams_is_refused(student):
    enc = student.compress(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="expected 3 bitstreams"):
        student.decompress(enc["strings"][:-1], enc["shape"])


@pytest.mark.parametrize("shape", [(0, 0), (32, 0), (-5, 32)])
def test_empty_or_negative_decode_size_is_refused(student, shape):
    enc = student.compress(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="positive image size"):
        student.decompress(enc["strings"], shape)


def test_weights_load_into_a_codec_whose_tables_have_other_sizes():
    """A resumed run rebuilds its model from a checkpoint, then loads its own weights:
    their CDF tables may have other sizes (another ``update()``); they replace the model's."""
    torch.manual_seed(0)
    target = FEDSStudent(N=32, M=48, groups=(16, 32), num_res_blocks=1).eval()
    source = FEDSStudent(N=32, M=48, groups=(16, 32), num_res_blocks=1).eval()
    source.latent_codec.hyper.entropy_bottleneck.quantiles.data[..., 2] += 7  # wider tables
    target.update(force=True)
    source.update(force=True)
    key = "latent_codec.hyper.entropy_bottleneck._quantized_cdf"
    assert target.state_dict()[key].shape != source.state_dict()[key].shape
    target.load_state_dict(source.state_dict())
    average = AveragedModel(FEDSStudent(N=32, M=48, groups=(16, 32), num_res_blocks=1)).eval()
    average.module.update(force=True)
    average.load_state_dict(AveragedModel(source).state_dict())  # a moving average's copy, nested
    never_updated = AveragedModel(FEDSStudent(N=32, M=48, groups=(16, 32), num_res_blocks=1)).eval()
    never_updated.load_state_dict(AveragedModel(source).state_dict())  # a run resumed in its folder
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = source.compress(x)["strings"]
        assert target.compress(x)["strings"] == expected
        assert average.module.compress(x)["strings"] == expected
        assert never_updated.module.compress(x)["strings"] == expected
