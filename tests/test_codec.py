"""Images to .feds files and back: exact round trips for every size and mode,
and clear refusals of bad input."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from compressai_feds import FEDSStudent
from compressai_feds.codec import Codec, CodecError, compress_image, decompress_image
from compressai_feds.container import FORMAT_VERSION, ContainerError, Header, pack, unpack


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "student.pth.tar"
    torch.save(
        {"state_dict": FEDSStudent(N=16, M=32, groups=(8, 24)).state_dict(), "architecture": "feds-student"},
        path,
    )
    return path


@pytest.fixture(scope="module")
def codec(checkpoint):
    return Codec.from_checkpoint(checkpoint)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 3 % 256, y * 5 % 256, (x + y) % 256], axis=-1)
    noise = rng.integers(0, 40, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def reencoded(image: Image.Image, fmt: str) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return Image.open(io.BytesIO(buffer.getvalue()))


def with_transparency(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return Image.open(io.BytesIO(buffer.getvalue()))


MODES = {
    "RGB": lambda im: im,
    "L": lambda im: im.convert("L"),
    "RGBA": lambda im: Image.merge("RGBA", (*im.split(), im.convert("L").point(lambda v: 255 - v))),
    "LA": lambda im: Image.merge("LA", (im.convert("L"), im.getchannel("R"))),
    "P": lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
    "P+transparency": lambda im: with_transparency(
        im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    ),
    "1": lambda im: im.convert("1"),
    "I;16": lambda im: Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257),
    "CMYK": lambda im: im.convert("CMYK"),
    "JPEG": lambda im: reencoded(im, "JPEG"),
    "WebP": lambda im: reencoded(im, "WEBP"),
    "16-bit PNG": lambda im: reencoded(
        Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257), "PNG"
    ),
}


def assert_same_image(a: Image.Image, b: Image.Image) -> None:
    assert (a.mode, a.size) == (b.mode, b.size)
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_is_exact_in_every_mode(codec, mode):
    image = MODES[mode](photo(70, 45))
    data, reconstruction = compress_image(codec, image)
    decoded = decompress_image(codec, data)
    assert_same_image(decoded, reconstruction)
    expected_mode = "RGBA" if mode == "P+transparency" else image.mode
    assert decoded.mode == expected_mode and decoded.size == image.size


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (65, 64), (130, 70)])
def test_round_trip_is_exact_at_any_size(codec, size):
    image = photo(*size)
    data, reconstruction = compress_image(codec, image)
    assert_same_image(decompress_image(codec, data), reconstruction)


def test_tiles_bound_the_work_and_round_trip_exactly(codec):
    image = photo(200, 130)
    data, reconstruction = compress_image(codec, image, tile_size=64)
    header, streams = unpack(data)
    assert header.tile_size == 64 and len(streams) == 4 * 3 * 3  # 4 x 3 tiles, 3 streams each
    assert_same_image(decompress_image(codec, data), reconstruction)
    with pytest.raises(CodecError, match="multiple of 64"):
        compress_image(codec, image, tile_size=100)


def test_alpha_and_palette_are_kept_exactly(codec):
    rgba = MODES["RGBA"](photo(40, 30))
    decoded = decompress_image(codec, compress_image(codec, rgba)[0])
    assert np.array_equal(np.asarray(decoded.getchannel("A")), np.asarray(rgba.getchannel("A")))
    palette_image = MODES["P"](photo(40, 30))
    decoded = decompress_image(codec, compress_image(codec, palette_image)[0])
    assert decoded.getpalette() == palette_image.getpalette()


def test_header_round_trips():
    header = Header("feds-student", "mse", 3, b"12345678", 4000, 3000, "RGBA", 1024, 1)
    streams = [b"abc", b"", b"\x00" * 300]
    assert unpack(pack(header, streams)) == (header, streams)


def test_file_from_another_model_is_refused_naming_both(codec, tmp_path):
    torch.manual_seed(1)
    other_path = tmp_path / "other.pth.tar"
    torch.save({"state_dict": FEDSStudent(N=16, M=32, groups=(8, 24)).state_dict()}, other_path)
    other = Codec.from_checkpoint(other_path)
    data, _ = compress_image(codec, photo(20, 20))
    with pytest.raises(CodecError) as error:
        decompress_image(other, data)
    assert codec.model_id.hex() in str(error.value) and other.model_id.hex() in str(error.value)


def test_newer_format_version_is_refused(codec):
    data = bytearray(compress_image(codec, photo(8, 8))[0])
    data[4] = FORMAT_VERSION + 1
    with pytest.raises(ContainerError, match=f"version {FORMAT_VERSION + 1} is not supported"):
        unpack(bytes(data))


def test_checkpoint_carrying_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "payload": Image.new("RGB", (1, 1))}, path)  # an arbitrary object
    with pytest.raises(CodecError, match="refusing checkpoint"):
        Codec.from_checkpoint(path)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def test_lengths_that_overrun_the_file_are_refused_even_with_a_valid_checksum(codec):
    data = compress_image(codec, photo(16, 16))[0]
    header, streams = unpack(data)
    body = bytearray(data[:-4])
    count_at = body.index(struct.pack(">I", len(streams)), 20)
    body[count_at + 4 : count_at + 8] = struct.pack(">I", 2**31)  # first stream length
    with pytest.raises(ContainerError, match="truncated or its header is inconsistent"):
        unpack(with_crc(bytes(body)))
    body[count_at : count_at + 4] = struct.pack(">I", 2**30)  # stream count
    with pytest.raises(ContainerError):
        unpack(with_crc(bytes(body)))


@pytest.fixture(scope="module")
def valid_file(codec):
    return compress_image(codec, photo(33, 20))[0]


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_containers_are_refused_cleanly(codec, valid_file, data):
    """Truncations, bit flips, byte edits and random files: a ContainerError,
    never a crash, a hang or a wrong image."""
    kind = data.draw(st.sampled_from(["truncate", "flip", "edit", "random"]))
    corrupted = bytearray(valid_file)
    if kind == "truncate":
        corrupted = corrupted[: data.draw(st.integers(0, len(valid_file) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            position = data.draw(st.integers(0, len(corrupted) - 1))
            corrupted[position] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "edit":
        position = data.draw(st.integers(0, len(corrupted) - 1))
        corrupted[position : position + 4] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        corrupted = bytearray(data.draw(st.binary(max_size=400)))
    if bytes(corrupted) == valid_file:
        return
    with pytest.raises(ContainerError):
        decompress_image(codec, bytes(corrupted))


@pytest.mark.slow
def test_4000x3000_round_trip_with_the_default_student(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "student.pth.tar"
    torch.save({"state_dict": FEDSStudent().state_dict()}, path)
    codec = Codec.from_checkpoint(path)
    image = photo(4000, 3000)
    data, reconstruction = compress_image(codec, image)
    assert unpack(data)[0].tile_size == 1024
    assert_same_image(decompress_image(codec, data), reconstruction)
