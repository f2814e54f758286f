"""Gain units: one codec for every quality level (Cui, Wang, Gao, Bai, Zhang, Bian, "Asymmetric
Gained Deep Image Compression with Continuous Rate Adaptation", CVPR 2021, Sec. 3.2-3.3).

Before quantization the latent is scaled channel by channel, ``y' = y ⊙ g(q)``; after
decoding, ``ŷ = ŷ' ⊙ g⁻¹(q)`` enters the synthesis. A large gain quantizes finely (high
rate), a small one coarsely. Gain and inverse gain are learned per quality level (they are
*asymmetric*: not constrained to be reciprocal) and interpolated in the log domain between
levels (ibid., Eq. 7), so that every real quality in ``[1, 6]`` has its own rate.

Both gains stay outside the entropy model, which codes ``y'`` exactly as a fixed-rate codec
codes ``y``. What the entropy model needs to know of the quality reaches it through
``side_offset``: a learned per-level offset of the hyperprior's side parameters (our
addition: the first latent slice is coded from the hyperprior alone, and a hyper-latent that
carries few bits could not tell it the quality). The decoder reads the quality from the file
and rebuilds the same offset exactly (:meth:`GainUnits.coding_side_offset`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from .fixed_point import from_grid, to_grid
from .quality import LAMBDAS, MIN_QUALITY, QUALITIES, snap_quality

__all__ = ["GainUnits"]

#: The level whose gains start at 1, so that a fixed-rate codec trained at it is a warm start.
REFERENCE_QUALITY = 3


class GainUnits(nn.Module):
    """Gain, inverse gain and side-parameter offset of each quality level.

    The gains start at ``sqrt(λ_q / λ_3)``, the step sizes a high-rate approximation
    of the MSE trade-off calls for (distortion ∝ step², so the best step ∝ λ^-1/2).

    Args:
        latent_channels: Channels of the latent ``y``.
        side_channels: Channels of the hyperprior's side parameters.
    """

    def __init__(self, latent_channels: int, side_channels: int) -> None:
        super().__init__()
        lambdas = torch.tensor([LAMBDAS["mse"][q] for q in QUALITIES], dtype=torch.float64)
        log_gain = (0.5 * torch.log(lambdas / LAMBDAS["mse"][REFERENCE_QUALITY])).float()
        self.log_gain = nn.Parameter(log_gain[:, None].repeat(1, latent_channels))
        self.log_inverse_gain = nn.Parameter(-log_gain[:, None].repeat(1, latent_channels))
        self.side_offset = nn.Parameter(torch.zeros(len(QUALITIES), side_channels))

    @staticmethod
    def _position(quality: Tensor) -> tuple[Tensor, Tensor]:
        """Index of the level at or below each quality (the last but one at most) and the
        fraction ``t`` of the way to the next level."""
        position = quality.double() - MIN_QUALITY
        low = position.floor().clamp(0, len(QUALITIES) - 2)
        return low.long(), position - low

    def _interpolate(self, table: Tensor, quality: Tensor) -> Tensor:
        low, t = self._position(quality)
        t = t.to(table.dtype)[:, None]
        return ((1 - t) * table[low] + t * table[low + 1])[:, :, None, None]

    def forward(self, quality: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Gain, inverse gain ``(B, M, 1, 1)`` and side offset ``(B, 2N, 1, 1)`` of each
        image's quality (a ``(B,)`` tensor of reals in ``[1, 6]``)."""
        gain = torch.exp(self._interpolate(self.log_gain, quality))
        inverse_gain = torch.exp(self._interpolate(self.log_inverse_gain, quality))
        return gain, inverse_gain, self._interpolate(self.side_offset, quality)

    def coding_side_offset(self, quality: float) -> Tensor:
        """The side offset at ``quality`` (snapped to the files' grid), ``(1, 2N, 1, 1)``,
        computed the same way on every machine: a dyadic ``t`` makes the float64
        interpolation of two float32 values exact, and the result is rounded to the
        fixed-point grid of the entropy networks."""
        quality = snap_quality(quality)
        low = min(math.floor(quality) - MIN_QUALITY, len(QUALITIES) - 2)
        t = quality - MIN_QUALITY - low  # a multiple of 1 / QUALITY_GRID: exact
        table = self.side_offset.detach().double().cpu()
        offset = (1 - t) * table[low] + t * table[low + 1]
        return from_grid(to_grid(offset))[None, :, None, None]
