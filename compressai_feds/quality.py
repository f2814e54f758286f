"""Quality levels and their rate-distortion trade-off λ: the one table everything else reads.

The integers 1-6 are CompressAI's quality levels and the six λ its pretrained
models were trained with (``compressai/zoo/image.py``). A variable-rate codec
(:class:`~compressai_feds.gain_units.GainUnits`) also codes at any real quality in
``[1, 6]``: between two levels its gains are interpolated, and its λ is read off
the table in the log domain (:func:`lambda_at`). Files store the quality on a
grid of ``1 / QUALITY_GRID`` (:func:`snap_quality`), so that a decoder rebuilds the
very same gains.
"""

from __future__ import annotations

import math

__all__ = [
    "LAMBDAS",
    "MAX_QUALITY",
    "MIN_QUALITY",
    "QUALITIES",
    "QUALITY_GRID",
    "check_quality",
    "lambda_at",
    "snap_quality",
]

#: Rate-distortion trade-off of each quality level: the tables of CompressAI's
#: pretrained models (``compressai/zoo/image.py``, training λ of the MSE and
#: MS-SSIM models).
LAMBDAS: dict[str, dict[int, float]] = {
    "mse": {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483},
    "ms-ssim": {1: 2.40, 2: 4.58, 3: 8.73, 4: 16.64, 5: 31.73, 6: 60.50},
}

#: The trained quality levels, lowest rate first.
QUALITIES: tuple[int, ...] = tuple(LAMBDAS["mse"])
MIN_QUALITY, MAX_QUALITY = QUALITIES[0], QUALITIES[-1]

#: Steps per quality level of the grid that files store the quality on.
QUALITY_GRID = 256


def check_quality(quality: float, integer: bool = False) -> float:
    """``quality`` if it is a (real or, with ``integer``, whole) quality in range, else ``ValueError``."""
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not math.isfinite(quality):
        raise ValueError(
            f"invalid quality {quality!r}: expected a number from {MIN_QUALITY} to {MAX_QUALITY}"
        )
    if integer and quality not in QUALITIES:
        raise ValueError(f"invalid quality {quality!r}: choose from {list(QUALITIES)}")
    if not MIN_QUALITY <= quality <= MAX_QUALITY:
        raise ValueError(
            f"invalid quality {quality!r}: expected a number from {MIN_QUALITY} to {MAX_QUALITY}"
        )
    return quality


def snap_quality(quality: float) -> float:
    """``quality`` rounded to the grid files store it on (exact in float32 and float64)."""
    return round(check_quality(quality) * QUALITY_GRID) / QUALITY_GRID


def lambda_at(quality: float, metric: str = "mse") -> float:
    """λ of a real quality: the table's at the levels, log-linear between them."""
    if metric not in LAMBDAS:
        raise ValueError(f"invalid metric {metric!r}: choose from {sorted(LAMBDAS)}")
    check_quality(quality)
    table = LAMBDAS[metric]
    if quality == int(quality):
        return table[int(quality)]
    low = int(quality)
    t = quality - low
    return math.exp((1 - t) * math.log(table[low]) + t * math.log(table[low + 1]))
