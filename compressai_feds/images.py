"""Image files: finding them, reading any PIL mode, 16-bit samples to 8 bits, PSNR and MS-SSIM.

The one place the coding, measuring and training code read images from.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim
from torch import Tensor

__all__ = [
    "IMAGE_SUFFIXES",
    "MIN_MS_SSIM_SIDE",
    "SAMPLES",
    "SIXTEEN_BIT_MODES",
    "find_images",
    "image_ms_ssim",
    "image_paths",
    "image_psnr",
    "load_rgb",
    "open_image",
    "psnr",
    "rgb_image",
    "to_8_bit",
]

#: The sample images shipped in the package (the main job's default).
SAMPLES = Path(__file__).resolve().parent / "samples"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm"}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def find_images(folder: str | Path) -> list[Path]:
    """All image files under ``folder``, recursively, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return paths


def image_paths(inputs: list[str | Path], default: Path) -> list[Path]:
    """Files and folders (``default`` when there are none) expanded into image
    files; ``FileNotFoundError`` names a missing one."""
    paths: list[Path] = []
    for item in inputs or [default]:
        path = Path(item)
        paths += [path] if path.is_file() else find_images(path)
    return paths


def open_image(path: str | Path) -> Image.Image:
    """An image file, read whole, in its own mode; ``ValueError`` with the reason when
    it is not an image PIL can read (a missing file stays ``FileNotFoundError``)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (FileNotFoundError, Image.DecompressionBombError):
        raise
    except OSError as exc:
        raise ValueError(f"cannot read the image ({exc})") from None


def to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale reduced to 8 bits (mode L); other images unchanged."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    return Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))


def rgb_image(image: Image.Image) -> Image.Image:
    """The 8-bit RGB rendering of any image: grayscale replicated, alpha dropped,
    palettes expanded, 16-bit samples reduced to 8 bits."""
    return to_8_bit(image).convert("RGB")


def load_rgb(path: str | Path) -> Tensor:
    """An image file as a ``(3, H, W)`` uint8 tensor (its :func:`rgb_image`)."""
    array = np.asarray(rgb_image(open_image(path)))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error; ``inf`` for 0."""
    return 10 * math.log10(peak**2 / mse) if mse > 0 else math.inf


def image_psnr(a: Image.Image, b: Image.Image) -> float:
    """PSNR in dB of two images' 8-bit RGB renderings."""
    x = np.asarray(rgb_image(a), dtype=np.float64)
    y = np.asarray(rgb_image(b), dtype=np.float64)
    return psnr(float(np.mean((x - y) ** 2)), peak=255.0)


#: The smallest side MS-SSIM's five scales take with its standard 11-tap window.
MIN_MS_SSIM_SIDE = 161


def image_ms_ssim(a: Image.Image, b: Image.Image) -> float:
    """MS-SSIM of two images' 8-bit RGB renderings, as CompressAI's ``eval_model`` computes
    it (pytorch_msssim, 11-tap window, five scales); ``nan`` for images smaller than
    :data:`MIN_MS_SSIM_SIDE` a side."""
    if min(a.size) < MIN_MS_SSIM_SIDE:
        return math.nan
    x, y = (
        torch.from_numpy(np.asarray(rgb_image(i), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        for i in (a, b)
    )
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # oneDNN is ~5x slower on these small filters
    try:
        return ms_ssim(x, y, data_range=1.0).item()
    finally:
        torch.backends.mkldnn.enabled = onednn
