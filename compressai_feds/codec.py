"""Images to ``.feds`` files and back, for any PIL image.

The image is coded in independent square tiles (``tile_size``, a multiple of
64), which bounds memory on large images. Colour is coded by the learned codec;
what it cannot code is kept exactly beside it: the alpha plane (zlib, lossless)
and the palette of palette images. The decoded image has the original size and
mode; 16-bit images are coded with 8-bit precision.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .checkpoint_io import architecture_name, load_codec
from .container import (
    FLAG_ALPHA,
    FLAG_CHECKPOINT,
    FLAG_PALETTE,
    ContainerError,
    Header,
    describe_model,
    pack,
    unpack,
)
from .images import SIXTEEN_BIT_MODES, image_psnr, to_8_bit
from .models import FEDSCodec
from .quality import MAX_QUALITY, MIN_QUALITY, QUALITY_GRID

__all__ = [
    "Codec",
    "CodecError",
    "RateControl",
    "compress_image",
    "compress_to_target",
    "decompress_image",
    "decompress_streams",
    "model_id",
]

DEFAULT_TILE_SIZE = 1024
MAX_PIXELS = 1 << 28


def _inflate(data: bytes, size: int) -> bytes:
    """zlib-decompresses at most ``size + 1`` bytes (no decompression bombs)."""
    try:
        return zlib.decompressobj().decompress(data, size + 1)
    except zlib.error as exc:
        raise ContainerError(f"the alpha plane is corrupted ({exc})") from None


class CodecError(ValueError):
    """An input the codec refuses, with a one-line reason."""


def model_id(net: FEDSCodec) -> bytes:
    """First 8 bytes of the SHA-256 of the weights and entropy-coding tables."""
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()[:8]


@dataclass
class Codec:
    """A FEDS model ready to code, and the names a file records about it."""

    net: FEDSCodec
    architecture: str
    metric: str
    fixed_quality: float  # a fixed-rate model's zoo quality (0 from a checkpoint); unused at variable rate
    model_id: bytes
    weights_from_checkpoint: bool = False

    @property
    def quality(self) -> float:
        """The quality it codes at, as its files record it (a variable-rate model's is its net's)."""
        return self.net.quality if self.net.variable_rate else self.fixed_quality

    @classmethod
    def from_zoo(cls, architecture: str, quality: float, metric: str = "mse") -> Codec:
        from compressai.zoo import image_models

        if architecture not in image_models:
            raise CodecError(f"unknown architecture {architecture!r}")
        try:
            net = image_models[architecture](quality=quality, metric=metric, pretrained=True)
        except FileNotFoundError as exc:
            raise CodecError(f"{exc}; or pass --checkpoint") from None
        return cls._ready(net, architecture, metric, quality, weights_from_checkpoint=False)

    @classmethod
    def untrained(cls, architecture: str, quality: float, metric: str = "mse") -> Codec:
        """The architecture with fresh weights (for timings: its rates mean nothing)."""
        from compressai.zoo import image_models

        if architecture not in image_models:
            raise CodecError(f"unknown architecture {architecture!r}")
        return cls._ready(image_models[architecture](quality=quality), architecture, metric, quality, False)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        architecture: str = "feds-student",
        metric: str = "mse",
        quality: float | None = None,
    ) -> Codec:
        """``architecture`` names a checkpoint that does not name itself (a bare
        state dict, as ``update_model`` writes); ``quality`` is the one a
        variable-rate checkpoint codes at (a fixed-rate one ignores it)."""
        path = Path(path)
        if not path.is_file():
            raise CodecError(f"checkpoint {path} does not exist")
        try:
            net = load_codec(path, architecture)
        except ValueError as exc:
            raise CodecError(f"refusing checkpoint {path}: {exc}") from None
        if not isinstance(net, FEDSCodec):
            raise CodecError(f"{path} is not a FEDS codec checkpoint")
        quality = (quality or net.quality) if net.variable_rate else 0
        return cls._ready(net, architecture_name(net), metric, quality, weights_from_checkpoint=True)

    @classmethod
    def _ready(
        cls, net: FEDSCodec, architecture: str, metric: str, quality: float, weights_from_checkpoint: bool
    ) -> Codec:
        net = net.eval()
        net.update()  # builds the CDFs only if the checkpoint has none
        fixed_quality = 0.0 if net.variable_rate else quality
        codec = cls(net, architecture, metric, fixed_quality, model_id(net), weights_from_checkpoint)
        if net.variable_rate:
            codec.set_quality(quality)
        return codec

    def set_quality(self, quality: float) -> None:
        """Codes at ``quality`` from now on (a variable-rate model; else ``CodecError``)."""
        if not self.net.variable_rate:
            raise CodecError(f"{self.architecture} here is a fixed-rate model: it codes at one quality only")
        try:
            self.net.quality = quality
        except ValueError as exc:
            raise CodecError(str(exc)) from None

    def describe(self) -> str:
        return describe_model(
            self.architecture, self.metric, self.quality, self.model_id, self.weights_from_checkpoint
        )


def _tiles(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    return [
        (top, left, min(size, height - top), min(size, width - left))
        for top in range(0, height, size)
        for left in range(0, width, size)
    ]


def _to_uint8(x: Tensor) -> Tensor:
    return (x[0] * 255).round().clamp(0, 255).to(torch.uint8)


def _split_image(image: Image.Image) -> tuple[Tensor, bytes | None, bytes | None, str]:
    """Colour as a ``(3, H, W)`` uint8 tensor, plus the alpha plane and palette
    to keep exactly, and the mode to restore."""
    mode = image.mode
    if mode == "F":
        raise CodecError("floating-point images (PIL mode F) are not supported")
    if mode in ("P", "PA") and ("transparency" in image.info or mode == "PA"):
        image, mode = image.convert("RGBA"), "RGBA"
    alpha = image.getchannel("A").tobytes() if mode in ("RGBA", "LA") else None
    palette = bytes(image.getpalette() or []) if mode == "P" else None
    rgb = np.asarray(to_8_bit(image).convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1), alpha, palette, mode


def _join_image(rgb: Tensor, mode: str, alpha: bytes | None, palette: bytes | None) -> Image.Image:
    image = Image.fromarray(rgb.permute(1, 2, 0).numpy())  # mode RGB
    if mode in SIXTEEN_BIT_MODES:
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(gray.astype(np.int32) if mode == "I" else gray)  # mode I or I;16
    if mode == "P":
        reference = Image.new("P", (1, 1))
        reference.putpalette(palette or b"")
        return image.quantize(palette=reference, dither=Image.Dither.NONE)
    if mode == "1":
        return image.convert("L").convert("1", dither=Image.Dither.NONE)
    if mode in ("RGBA", "LA"):
        image = image.convert(mode[0] if mode == "LA" else "RGB")
        image.putalpha(Image.frombytes("L", image.size, alpha or b""))
        return image
    return image if mode == "RGB" else image.convert(mode)


@torch.no_grad()
def compress_image(
    codec: Codec, image: Image.Image, tile_size: int = DEFAULT_TILE_SIZE, reconstruct: bool = True
) -> tuple[bytes, Image.Image | None]:
    """Codes an image; returns the file bytes and the decoded image the encoder
    computed (what :func:`decompress_image` will return; ``None`` without
    ``reconstruct``, which saves the synthesis transform)."""
    if tile_size <= 0 or tile_size % 64:
        raise CodecError(f"tile size must be a positive multiple of 64, got {tile_size}")
    rgb, alpha, palette, mode = _split_image(image)
    _, height, width = rgb.shape
    streams: list[bytes] = []
    reconstruction = torch.empty_like(rgb)
    for top, left, h, w in _tiles(height, width, tile_size):
        x = rgb[None, :, top : top + h, left : left + w].float() / 255
        enc = codec.net.compress(x)
        streams += [s[0] for s in enc["strings"]]
        if reconstruct:
            reconstruction[:, top : top + h, left : left + w] = _to_uint8(
                codec.net.synthesize(enc["y_hat"], (h, w))
            )
    flags = FLAG_CHECKPOINT if codec.weights_from_checkpoint else 0
    if alpha is not None:
        streams.append(zlib.compress(alpha, 9))
        flags |= FLAG_ALPHA
    if palette is not None:
        streams.append(palette)
        flags |= FLAG_PALETTE
    header = Header(
        codec.architecture, codec.metric, codec.quality, codec.model_id, width, height, mode, tile_size, flags
    )
    decoded = _join_image(reconstruction, mode, alpha, palette) if reconstruct else None
    return pack(header, streams), decoded


@dataclass(frozen=True)
class RateControl:
    """What :func:`compress_to_target` chose: the quality, the rate (bits per pixel, the
    whole file) and PSNR it gives, and whether it meets the target."""

    quality: float
    bpp: float
    psnr: float | None
    met: bool


def compress_to_target(
    codec: Codec,
    image: Image.Image,
    target_bpp: float | None = None,
    target_psnr: float | None = None,
    tile_size: int = DEFAULT_TILE_SIZE,
) -> tuple[bytes, Image.Image | None, RateControl]:
    """Codes ``image`` with a variable-rate model at the quality that meets a target:
    the highest whose file takes at most ``target_bpp`` bits per pixel, or the lowest
    whose decoded image reaches ``target_psnr`` dB. Bisection over the qualities the
    files store (1/256 apart), each step a real encode (about 11 in all). Where no
    quality meets it, the closest end (quality 1 or 6), with ``met`` false.
    Returns the file, the decoded image (with ``target_psnr``) and the choice."""
    if (target_bpp is None) == (target_psnr is None):
        raise CodecError("give one target: a rate in bits per pixel or a PSNR in dB")
    target = target_bpp if target_bpp is not None else target_psnr
    if not math.isfinite(target) or target <= 0:
        raise CodecError(f"the target must be a positive number, got {target}")
    pixels = image.width * image.height
    results: dict[int, tuple[bytes, Image.Image | None, RateControl]] = {}

    def code(step: int) -> tuple[bytes, Image.Image | None, RateControl]:
        if step not in results:
            codec.set_quality(step / QUALITY_GRID)
            data, decoded = compress_image(codec, image, tile_size, reconstruct=target_psnr is not None)
            bpp = len(data) * 8 / pixels
            psnr = image_psnr(image, decoded) if decoded is not None else None
            met = bpp <= target_bpp if target_bpp is not None else psnr >= target_psnr
            results[step] = (data, decoded, RateControl(step / QUALITY_GRID, bpp, psnr, met))
        return results[step]

    # the bpp target wants the highest quality that meets it, the PSNR target the lowest
    low, high = MIN_QUALITY * QUALITY_GRID, MAX_QUALITY * QUALITY_GRID
    wanted_end, other_end = (high, low) if target_bpp is not None else (low, high)
    if code(wanted_end)[2].met:
        return code(wanted_end)
    if not code(other_end)[2].met:
        return code(other_end)
    meets, fails = other_end, wanted_end  # invariant: quality `meets` meets the target, `fails` does not
    while abs(fails - meets) > 1:
        middle = (meets + fails) // 2
        if code(middle)[2].met:
            meets = middle
        else:
            fails = middle
    codec.set_quality(meets / QUALITY_GRID)
    return code(meets)


def check_model(header: Header, codec: Codec) -> None:
    """Refuses to decode a file with a model other than the one that coded it."""
    if (header.architecture, header.model_id) != (codec.architecture, codec.model_id):
        raise CodecError(
            f"this file was coded by {header.model_name}; the decoding model is {codec.describe()}"
        )


def decompress_image(codec: Codec, data: bytes) -> Image.Image:
    """Decodes the bytes of a ``.feds`` file."""
    return decompress_streams(codec, *unpack(data))


@torch.no_grad()
def decompress_streams(codec: Codec, header: Header, streams: list[bytes]) -> Image.Image:
    """Decodes the parsed contents of a ``.feds`` file (a variable-rate model at the
    file's quality)."""
    check_model(header, codec)
    if codec.net.variable_rate:
        codec.set_quality(header.quality)
    if header.width * header.height > MAX_PIXELS:
        raise CodecError(f"{header.width}x{header.height} exceeds the {MAX_PIXELS:,}-pixel limit")
    extras = bool(header.flags & FLAG_ALPHA) + bool(header.flags & FLAG_PALETTE)
    tiles = _tiles(header.height, header.width, header.tile_size)
    per_tile = len(codec.net.groups) + 1
    if len(streams) != len(tiles) * per_tile + extras:
        raise ContainerError(f"expected {len(tiles) * per_tile + extras} bitstreams, found {len(streams)}")
    rgb = torch.empty(3, header.height, header.width, dtype=torch.uint8)
    for i, (top, left, h, w) in enumerate(tiles):
        strings = [[s] for s in streams[i * per_tile : (i + 1) * per_tile]]
        rgb[:, top : top + h, left : left + w] = _to_uint8(codec.net.decompress(strings, (h, w))["x_hat"])
    rest = streams[len(tiles) * per_tile :]
    alpha = _inflate(rest.pop(0), header.width * header.height) if header.flags & FLAG_ALPHA else None
    palette = rest.pop(0) if header.flags & FLAG_PALETTE else None
    if alpha is not None and len(alpha) != header.width * header.height:
        raise ContainerError("the alpha plane does not match the image size")
    return _join_image(rgb, header.mode, alpha, palette)
