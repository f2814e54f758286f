"""Same bits on every machine: the fixed-point entropy path decodes the same
latent whatever the threads, kernels, memory layout or float rounding, and a
stream that does not decode consistently is refused."""

import copy
import itertools
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.models.utils import conv, deconv
from helpers import SAMPLES
from PIL import Image
from torchvision.transforms.functional import to_tensor

from compressai_feds import feds_student, feds_teacher, fixed_point
from compressai_feds.entropy_coding import BitstreamError
from compressai_feds.fixed_point import (
    ACTIVATION_LIMIT,
    GRID,
    FixedPointConv,
    FixedPointNetwork,
    FixedPointTable,
    _digits,
    to_grid,
)
from compressai_feds.zoo import checkpoint_dir

REPO_ZOO = Path(__file__).resolve().parent.parent / "zoo"


@contextmanager
def threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def perturbed_float_convolutions(relative: float, seed: int = 0):
    """Every float32 convolution's output multiplied by ``1 ± relative`` (random
    signs): the size of the rounding differences between thread counts."""
    generator = torch.Generator().manual_seed(seed)
    originals = {name: getattr(F, name) for name in ("conv2d", "conv_transpose2d")}

    def wrap(function):
        def perturbed(*args, **kwargs):
            out = function(*args, **kwargs)
            if out.dtype != torch.float32:
                return out
            signs = torch.randint(0, 2, out.shape, generator=generator).float() * 2 - 1
            return out * (1 + relative * signs)

        return perturbed

    try:
        for name, function in originals.items():
            setattr(F, name, wrap(function))
        yield
    finally:
        for name, function in originals.items():
            setattr(F, name, function)


@contextmanager
def products(int8: bool):
    """Force the int8 (``torch._int_mm`` on digits) or the float64 matrix products."""
    original = fixed_point.int8_products_are_fast
    fixed_point.int8_products_are_fast = lambda: int8
    try:
        yield
    finally:
        fixed_point.int8_products_are_fast = original


# -- the fixed-point layers --------------------------------------------------


@pytest.mark.parametrize("int8", [True, False], ids=["int8", "float64"])
@pytest.mark.parametrize(
    "layer, size",
    [
        (conv(24, 40, kernel_size=3, stride=1), (9, 13)),
        (conv(24, 40, kernel_size=5, stride=1), (9, 13)),
        (conv(24, 40, kernel_size=5, stride=2), (9, 13)),
        (nn.Conv2d(24, 40, 1), (9, 13)),
        (deconv(24, 40, kernel_size=5, stride=2), (5, 7)),
    ],
)
def test_fixed_point_convolution_is_exact_and_close_to_float(layer, size, int8):
    torch.manual_seed(0)
    fixed = FixedPointConv(layer)
    x = torch.randn(2, 24, *size) * 4
    a = to_grid(x)
    with products(int8), threads(1):
        out = fixed(a)
    with products(int8), threads(2):
        assert torch.equal(fixed(a.contiguous(memory_format=torch.channels_last)), out)
    # against float64 convolution of the same integers (exact below 2**53), rounded the same way
    if fixed.transposed:
        reference = F.conv_transpose2d(
            a.double(),
            fixed.weight.transpose(0, 1),
            stride=layer.stride,
            padding=layer.padding,
            output_padding=layer.output_padding,
        )
    else:
        reference = F.conv2d(a.double(), fixed.weight, stride=layer.stride, padding=layer.padding)
    assert out.dtype == torch.int32
    assert torch.equal(torch.round((reference + fixed.bias) * fixed.rescale), out.double())
    assert out.shape == layer(x).shape
    float_out = copy.deepcopy(layer).double()(x.double()) * GRID
    # weights rounded to 8 bits: about 1% of the largest output at worst (measured over 300 inits)
    assert (out - float_out).abs().max() < 0.02 * float_out.abs().max()


@pytest.mark.parametrize(
    "low, high, count",
    [(-128, 127, 1), (-129, 127, 2), (-128, 128, 2), (-32896, 32639, 2), (-32897, 0, 3), (0, 32640, 3)],
)
def test_activations_split_into_as_few_base_256_digits_as_they_need(low, high, count):
    values = torch.cat([torch.tensor([low, high]), torch.randint(low, high + 1, (1000,))]).int()
    digits = _digits(values)
    assert len(digits) == count and all(d.dtype == torch.int8 for d in digits)
    assert torch.equal(sum(d.long() * 256**i for i, d in enumerate(digits)), values.long())
    assert len(_digits(torch.tensor([-ACTIVATION_LIMIT, ACTIVATION_LIMIT]).int())) == 3


@pytest.mark.parametrize("int8", [True, False], ids=["int8", "float64"])
def test_products_are_exact_up_to_the_activation_limit(int8):
    torch.manual_seed(0)
    fixed = FixedPointConv(conv(24, 40, kernel_size=3, stride=1))
    a = torch.randint(-ACTIVATION_LIMIT, ACTIVATION_LIMIT + 1, (1, 24, 6, 5)).int()
    a[0, 0, 0, 0], a[0, 1, 0, 0] = ACTIVATION_LIMIT, -ACTIVATION_LIMIT  # three base-256 digits
    reference = F.conv2d(a.double(), fixed.weight, padding=1)  # float64, exact below 2**53
    expected = torch.round((reference + fixed.bias) * fixed.rescale).clamp(
        -ACTIVATION_LIMIT, ACTIVATION_LIMIT
    )
    with products(int8):
        assert torch.equal(fixed(a).double(), expected)


def test_tables_meet_their_limits_at_the_ends():
    gelu, half_tanh = FixedPointTable("gelu"), FixedPointTable("half_tanh")
    a = torch.arange(-12 * GRID, 12 * GRID + 1).int()
    g, t = gelu(a), half_tanh(a)
    x = a.double() / GRID
    assert (g / GRID - F.gelu(x)).abs().max() <= 0.5 / GRID + 1e-12
    assert (t / GRID - 0.5 * torch.tanh(x)).abs().max() <= 0.5 / GRID + 1e-12
    assert torch.equal(g[a > 8 * GRID], a[a > 8 * GRID]) and not g[a < -8 * GRID].any()
    assert (t[a > 8 * GRID] == GRID / 2).all() and (t[a < -8 * GRID] == -GRID / 2).all()
    assert (torch.diff(g[a >= 0]) >= 0).all() and (torch.diff(t) >= 0).all()


def test_networks_too_wide_for_exact_sums_are_refused():
    with pytest.raises(ValueError, match="overflow int32"):
        FixedPointConv(nn.Conv2d(32768, 1, 3))
    tiny_weights_huge_bias = nn.Conv2d(4, 4, 1)
    with torch.no_grad():
        tiny_weights_huge_bias.weight.fill_(1e-12)
        tiny_weights_huge_bias.bias.fill_(1e3)
    with pytest.raises(ValueError, match="beyond exact float64"):
        FixedPointConv(tiny_weights_huge_bias)
    with pytest.raises(TypeError, match="no fixed-point form"):
        FixedPointNetwork(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()))


# -- the codecs, with trained weights ----------------------------------------


def trained_codecs():
    """The shipped checkpoints (behaviour depends on trained weights)."""
    codecs = []
    for factory in (feds_student, feds_teacher):
        try:
            codecs.append(factory(quality=3, pretrained=True).eval())
        except FileNotFoundError:
            pass
    ablation = sorted((REPO_ZOO / "ablation").glob("feds-student-noteacher-mse-3-*.pth.tar"))
    if not codecs and ablation:
        from compressai_feds.checkpoint_io import load_codec

        net = load_codec(ablation[0], "feds-student").eval()
        net.update()
        codecs.append(net)
    if not codecs:
        pytest.skip("no trained quality-3 checkpoint in the zoo")
    return codecs


@pytest.fixture(scope="module")
def codecs():
    return trained_codecs()


@pytest.fixture(scope="module")
def images():
    return [
        to_tensor(Image.open(p).convert("RGB"))[None, :, :256, :384] for p in sorted(SAMPLES.glob("*.png"))
    ]


def decode(net, encoded):
    return net.decompress(encoded["strings"], encoded["shape"])


def assert_same_latent(net, encoded, decoded):
    assert torch.equal(decoded["y_hat"], encoded["y_hat"])
    reference = net.synthesize(encoded["y_hat"], encoded["shape"])
    assert ((decoded["x_hat"] - reference).abs() * 255).max() <= 1


@pytest.mark.parametrize("encode_threads, decode_threads", [(1, 2), (2, 1)])
def test_other_thread_count_decodes_the_same_latent(codecs, images, encode_threads, decode_threads):
    for net in codecs:
        for x in images:
            with threads(encode_threads):
                encoded = net.compress(x)
            with threads(decode_threads):
                assert_same_latent(net, encoded, decode(net, encoded))


def assert_same_latent_without_onednn_and_in_channels_last(net, encoded):
    torch.backends.mkldnn.enabled = False
    try:
        assert_same_latent(net, encoded, decode(net, encoded))
    finally:
        torch.backends.mkldnn.enabled = True
    other = copy.deepcopy(net).to(memory_format=torch.channels_last)
    assert_same_latent(net, encoded, decode(other, encoded))


def test_without_onednn_or_in_channels_last_decodes_the_same_latent(codecs, images):
    for net in codecs:
        for x in images:
            assert_same_latent_without_onednn_and_in_channels_last(net, net.compress(x))


def test_int8_and_float64_products_decode_the_same_latent(codecs, images):
    """A machine with oneDNN's int8 kernels and one without decode each
    other's streams."""
    for net in codecs:
        for x, (encode_int8, decode_int8) in zip(images, [(True, False), (False, True)], strict=False):
            with products(encode_int8):
                encoded = net.compress(x)
            with products(decode_int8):
                assert_same_latent(net, encoded, decode(net, encoded))


def test_perturbed_float_convolutions_decode_the_same_latent(codecs, images):
    for net in codecs:
        for x in images:
            encoded = net.compress(x)
            with perturbed_float_convolutions(1e-6):
                assert_same_latent(net, encoded, decode(net, encoded))


def test_negative_control_the_float_path_desynchronises(codecs, images):
    """CompressAI's float evaluation, under the same perturbation, decodes other
    symbols on at least one image: the tests above can fail."""
    failures = 0
    for net in codecs:
        net.exact_entropy_path = False
        try:
            for x in images:
                encoded = net.compress(x)
                with perturbed_float_convolutions(1e-6):
                    try:
                        failures += not torch.equal(decode(net, encoded)["y_hat"], encoded["y_hat"])
                    except BitstreamError:
                        failures += 1
        finally:
            net.exact_entropy_path = True
    assert failures > 0


def test_a_forged_stream_is_refused_not_decoded_to_garbage(codecs, images):
    net = codecs[0]
    encoded = net.compress(images[0])
    strings = [list(s) for s in encoded["strings"]]
    longest = max(range(len(strings)), key=lambda k: len(strings[k][0]))
    forged = bytearray(strings[longest][0])
    for i in range(0, len(forged), 7):
        forged[i] ^= 0x5A
    strings[longest][0] = bytes(forged)
    with pytest.raises(BitstreamError, match="does not decode consistently"):
        net.decompress(strings, encoded["shape"])


@pytest.mark.parametrize("version", [1, 2])  # 1: float path; 2: 16-bit fixed-point weights
def test_old_format_version_is_refused_naming_both(version):
    from compressai_feds.container import FORMAT_VERSION, ContainerError, unpack

    data = bytes(b"FEDS" + bytes([version]) + bytes(40))
    with pytest.raises(
        ContainerError, match=f"version {version} is not supported .*version {FORMAT_VERSION}"
    ):
        unpack(data)


def shipped_checkpoints() -> list[tuple[str, str, float]]:
    """(architecture, metric, quality) of every checkpoint in the zoo folder: a fixed-rate file
    at its quality, a variable-rate one at each of the six levels and at 2.5."""
    cases = []
    for path in sorted(checkpoint_dir().glob("*.pth.tar")):
        match = re.fullmatch(r"(feds-\w+?)-(mse|ms-ssim)-(?:(\d)-)?[0-9a-f]+\.pth\.tar", path.name)
        if match:
            qualities = [int(match[3])] if match[3] else [1, 2, 2.5, 3, 4, 5, 6]
            cases += [(match[1], match[2], quality) for quality in qualities]
    return cases


def test_the_zoo_folder_holds_both_architectures_for_both_metrics():
    found = {(architecture, metric) for architecture, metric, _ in shipped_checkpoints()}
    assert found == set(itertools.product(("feds-student", "feds-teacher"), ("mse", "ms-ssim")))


@pytest.mark.parametrize("architecture, metric, quality", shipped_checkpoints())
def test_every_shipped_checkpoint_round_trips_exactly(architecture, metric, quality, images):
    """Each quality's weights, not only quality 3's: loaded as a user loads them,
    they decode their own stream to the same latent and a sensible image."""
    factory = {"feds-student": feds_student, "feds-teacher": feds_teacher}[architecture]
    net = factory(quality=quality, metric=metric, pretrained=True).eval()
    x = images[0][:, :, :128, :128]
    encoded = net.compress(x)
    decoded = decode(net, encoded)
    assert_same_latent(net, encoded, decoded)
    bpp = sum(len(s[0]) for s in encoded["strings"]) * 8 / x[0, 0].numel()
    psnr = -10 * torch.log10(F.mse_loss(decoded["x_hat"].clamp(0, 1), x)).item()
    assert 0.02 < bpp < 2 and psnr > 22, (bpp, psnr)
