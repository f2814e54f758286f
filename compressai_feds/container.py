"""The ``.feds`` file format: a versioned, checksummed container of bitstreams.

All integers are big-endian. Strings are ASCII, prefixed by their length (1 byte).

=============  ========  ====================================================
field          bytes     meaning
=============  ========  ====================================================
magic          4         ``FEDS``
version        1         format version, currently 4 (1: float path; 2: 16-bit fixed point; 3: integer
                         quality; refused)
architecture   1 + n     e.g. ``feds-student``
metric         1 + n     ``mse`` or ``ms-ssim``
mode           1 + n     PIL mode of the original image (``RGB``, ``L``, ...)
quality        2         quality × 256 (1.0-6.0 on a grid of 1/256); 0: a fixed-rate checkpoint
model id       8         first 8 bytes of the SHA-256 of the model's weights
width, height  4 + 4     image size in pixels
tile size      4         side of the square tiles coded independently
flags          1         bit 0: alpha plane stored; bit 1: palette stored; bit 2: weights
                         from a checkpoint, not the zoo
streams        4         number of bitstreams ``k``
lengths        4 k       length of each bitstream
payload        sum       the bitstreams, in order
checksum       4         CRC-32 of every byte before it
=============  ========  ====================================================

The checksum is verified before anything else is read, so a truncated or
corrupted file is refused before any of it reaches the entropy decoder.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .quality import MAX_QUALITY, MIN_QUALITY, QUALITY_GRID

__all__ = [
    "FLAG_ALPHA",
    "FLAG_CHECKPOINT",
    "FLAG_PALETTE",
    "FORMAT_VERSION",
    "MAGIC",
    "ContainerError",
    "Header",
    "describe_model",
    "pack",
    "unpack",
]

MAGIC = b"FEDS"
FORMAT_VERSION = 4
FLAG_ALPHA = 1
FLAG_PALETTE = 2
FLAG_CHECKPOINT = 4
MAX_STREAMS = 1 << 20
_FIXED = struct.Struct(">H8sIIIB")  # quality × 256, model id, width, height, tile size, flags


class ContainerError(ValueError):
    """The bytes are not a valid ``.feds`` container (or not of this version)."""


@dataclass(frozen=True)
class Header:
    """What a decoder must know besides the bitstreams."""

    architecture: str
    metric: str
    quality: float  # 0: a fixed-rate model from a checkpoint
    model_id: bytes
    width: int
    height: int
    mode: str
    tile_size: int
    flags: int = 0

    @property
    def from_checkpoint(self) -> bool:
        return bool(self.flags & FLAG_CHECKPOINT)

    @property
    def model_name(self) -> str:
        return describe_model(
            self.architecture, self.metric, self.quality, self.model_id, self.from_checkpoint
        )


def describe_model(
    architecture: str, metric: str, quality: float, model_id: bytes, from_checkpoint: bool = False
) -> str:
    """How files and messages name a model, e.g. ``feds-student (mse, quality 3, model id ...)``
    or ``feds-student (mse, quality 2.5, a checkpoint, model id ...)``."""
    source = [f"quality {quality:g}"] if quality else []
    source += ["a checkpoint"] if from_checkpoint or not quality else []
    return f"{architecture} ({metric}, {', '.join(source)}, model id {model_id.hex()})"


def _pack_str(value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) > 255:
        raise ValueError(f"header string too long: {value!r}")
    return bytes([len(raw)]) + raw


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Serialises a header and its bitstreams into a container."""
    if len(header.model_id) != 8:
        raise ValueError("model id must be 8 bytes")
    if header.quality and not MIN_QUALITY <= header.quality <= MAX_QUALITY:
        raise ValueError(f"quality must be 0 or from {MIN_QUALITY} to {MAX_QUALITY}, got {header.quality}")
    body = b"".join(
        [
            MAGIC,
            bytes([FORMAT_VERSION]),
            _pack_str(header.architecture),
            _pack_str(header.metric),
            _pack_str(header.mode),
            _FIXED.pack(
                round(header.quality * QUALITY_GRID),
                header.model_id,
                header.width,
                header.height,
                header.tile_size,
                header.flags,
            ),
            struct.pack(">I", len(streams)),
            struct.pack(f">{len(streams)}I", *(len(s) for s in streams)),
            *streams,
        ]
    )
    return body + struct.pack(">I", zlib.crc32(body))


class _Reader:
    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.pos, self.end = data, 0, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ContainerError("the file is truncated or its header is inconsistent")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def string(self) -> str:
        raw = self.take(self.take(1)[0])
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise ContainerError("the header holds a non-ASCII name") from None


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Parses a container; raises :class:`ContainerError` with a one-line reason."""
    if len(data) < len(MAGIC) + 5:
        raise ContainerError("the file is empty or too short to be a .feds file")
    if data[:4] != MAGIC:
        raise ContainerError("not a .feds file (wrong magic bytes)")
    if data[4] != FORMAT_VERSION:
        raise ContainerError(
            f"format version {data[4]} is not supported (this decoder reads version {FORMAT_VERSION})"
        )
    (checksum,) = struct.unpack(">I", data[-4:])
    if zlib.crc32(data[:-4]) != checksum:
        raise ContainerError("checksum mismatch: the file is corrupted or truncated")
    reader = _Reader(data, len(data) - 4)
    reader.take(5)
    architecture, metric, mode = reader.string(), reader.string(), reader.string()
    quality_steps, model_id, width, height, tile_size, flags = _FIXED.unpack(reader.take(_FIXED.size))
    quality = quality_steps / QUALITY_GRID
    (count,) = struct.unpack(">I", reader.take(4))
    if count > MAX_STREAMS:
        raise ContainerError(f"implausible number of bitstreams ({count})")
    lengths = struct.unpack(f">{count}I", reader.take(4 * count))
    streams = [reader.take(n) for n in lengths]
    if reader.pos != reader.end:
        raise ContainerError("stream lengths do not match the file size")
    if width == 0 or height == 0 or tile_size == 0 or tile_size % 64:
        raise ContainerError(f"invalid image size {width}x{height} or tile size {tile_size}")
    if quality and not MIN_QUALITY <= quality <= MAX_QUALITY:
        raise ContainerError(f"invalid quality {quality:g}")
    header = Header(architecture, metric, quality, model_id, width, height, mode, tile_size, flags)
    return header, streams
