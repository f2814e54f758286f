"""The auxiliary transform (AuxT, Li et al., ICLR 2025) beside the codec's transforms."""

import pytest
import torch

from compressai_feds import FEDSCodec, FEDSStudent
from compressai_feds.auxiliary_transform import InverseWaveletShortcut, WaveletShortcut


def haar_subbands(x: torch.Tensor) -> torch.Tensor:
    """The four Haar subbands written out pixel by pixel, subband-major (LL, details)."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    bands = [(a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2]
    return torch.cat(bands, dim=1)


def test_the_analysis_shortcut_projects_scaled_haar_subbands():
    torch.manual_seed(0)
    shortcut = WaveletShortcut(3, 8)
    with torch.no_grad():
        shortcut.log_scales.normal_()
    x = torch.rand(2, 3, 6, 10)
    scales = shortcut.log_scales.exp().reshape(1, 12, 1, 1)  # (subband, channel) subband-major
    assert torch.allclose(shortcut(x), shortcut.projection(haar_subbands(x) * scales), atol=1e-6)


def test_the_synthesis_shortcut_inverts_the_analysis_one():
    torch.manual_seed(0)
    analysis, synthesis = WaveletShortcut(3, 12), InverseWaveletShortcut(12, 3)
    with torch.no_grad():
        analysis.log_scales.normal_()
        synthesis.log_scales.copy_(analysis.log_scales)
        synthesis.projection.weight.copy_(analysis.projection.weight.flatten(1).t()[..., None, None])
        synthesis.projection.bias.zero_()
    x = torch.rand(1, 3, 8, 14)
    assert torch.allclose(synthesis(analysis(x)), x, atol=1e-5)  # orthogonal projections at init
    assert analysis.projection.orthogonality_loss() < 1e-10


def test_a_codec_with_the_auxiliary_transform_codes_exactly_and_is_rebuilt_from_its_weights():
    torch.manual_seed(0)
    net = FEDSStudent(variable_rate=True, auxiliary_transform=True)
    plain = sum(p.numel() for p in FEDSStudent(variable_rate=True).parameters())
    assert 1.0 < sum(p.numel() for p in net.parameters()) / plain < 1.06  # linear and light
    out = net(torch.rand(2, 3, 64, 64), return_features=True, quality=torch.tensor([1.0, 6.0]))
    assert out["features"]["analysis_1"].shape == (2, net.N, 32, 32)
    loss = net.orthogonality_loss()
    assert loss.item() < 1e-10  # orthogonal at initialisation
    with torch.no_grad():
        net.g_s_shortcuts.shortcuts[0].projection.weight.mul_(1.5)
    # its Gram matrix (160 x 160, the smaller side) is now 2.25 I: mean squared error 1.25^2 / 160
    assert net.orthogonality_loss().item() == pytest.approx(1.25**2 / 160, rel=1e-4)
    assert FEDSStudent().orthogonality_loss() is None

    net.update(force=True)
    net.eval()
    coded = net.compress(torch.rand(1, 3, 40, 70))
    decoded = net.decompress(coded["strings"], coded["shape"])
    assert torch.equal(decoded["y_hat"], coded["y_hat"])
    rebuilt = FEDSCodec.from_state_dict(net.state_dict())
    assert type(rebuilt) is FEDSStudent and rebuilt.g_a_shortcuts is not None and rebuilt.variable_rate
    image = torch.rand(1, 3, 40, 70)
    assert torch.equal(rebuilt(image)["x_hat"], net(image)["x_hat"])


@pytest.mark.parametrize("side", ["g_a_shortcuts", "g_s_shortcuts"])
def test_each_side_of_the_auxiliary_transform_is_in_the_path(side):
    torch.manual_seed(0)
    net = FEDSStudent(auxiliary_transform=True).eval()
    x = torch.rand(1, 3, 64, 64)
    with_both = net(x)["x_hat"]
    setattr(net, side, None)
    assert not torch.allclose(net(x)["x_hat"], with_both, atol=1e-4)


def test_trained_weights_warm_start_a_codec_with_the_auxiliary_transform(tmp_path):
    from compressai_feds.checkpoint_io import load_codec

    trained = FEDSStudent()
    torch.save({"state_dict": trained.state_dict(), "architecture": "feds-student"}, tmp_path / "q3.pth.tar")
    net = load_codec(tmp_path / "q3.pth.tar", variable_rate=True, auxiliary_transform=True)
    assert net.variable_rate and net.g_a_shortcuts is not None and net.orthogonality_loss() < 1e-10
    assert torch.equal(net.g_s[1][0].conv1.weight, trained.g_s[1][0].conv1.weight)
