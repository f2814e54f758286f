"""Auxiliary transform (AuxT): linear wavelet shortcuts beside ``g_a`` and ``g_s``.

Li et al., "On Disentangled Training for Nonlinear Transform in Learned Image
Compression", ICLR 2025, Sec. 3: a linear branch, summed into the nonlinear
transform after each change of resolution, takes on the coarse energy compaction
(a Haar wavelet, a learnable scale per subband and an orthogonal channel
projection), leaving the nonlinear stages the details; reported to halve the
steps to convergence at about 1% better BD-rate. The branch stays in the model
(it is linear and light).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AuxiliaryTransform", "OrthogonalProjection", "WaveletShortcut", "InverseWaveletShortcut"]

#: One level of the orthonormal 2-D Haar transform of a 2×2 block (pixels in
#: raster order: top-left, top-right, bottom-left, bottom-right),
#: a subband per row: LL, then the horizontal, vertical and diagonal details.
_HAAR = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0

#: Initial log-scale of each subband (LL and the two first details ×e^0.5, the
#: diagonal ×1), as in CompressAI's reference integration of AuxT.
_INITIAL_LOG_SCALES = (0.5, 0.5, 0.5, 0.0)


class OrthogonalProjection(nn.Conv2d):
    """A 1×1 convolution (a linear map of the channels) initialised orthogonal and
    kept near-orthogonal by :meth:`orthogonality_loss` (AuxT's OLP, Sec. 3.2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)
        nn.init.orthogonal_(self.weight)
        nn.init.zeros_(self.bias)

    def orthogonality_loss(self) -> Tensor:
        """Mean squared distance of the Gram matrix of the smaller side from I."""
        w = self.weight.flatten(1)
        gram = w @ w.t() if w.size(0) <= w.size(1) else w.t() @ w
        return F.mse_loss(gram, torch.eye(gram.size(0), device=gram.device, dtype=gram.dtype))


def _subband_scales(channels: int) -> nn.Parameter:
    return nn.Parameter(torch.tensor(_INITIAL_LOG_SCALES).view(4, 1, 1, 1).repeat(1, channels, 1, 1))


class WaveletShortcut(nn.Module):
    """Halves the resolution: Haar subbands, scaled, projected to ``out_channels``
    (AuxT's WLS). The three linear maps run as one 2×2 convolution of stride 2: the
    teacher's four, forward and backward, took 132 ms against 174 ms as a 1×1
    convolution of ``pixel_unshuffle`` blocks (one CPU thread, beside two training jobs)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.log_scales = _subband_scales(in_channels)
        self.projection = OrthogonalProjection(4 * in_channels, out_channels)  # input: subband-major
        self.register_buffer("haar", _HAAR.clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.projection.weight.view(-1, 4, x.size(1))  # (out, subband, channel)
        weight = torch.einsum("osc,sk->ock", weight * self.log_scales.view(1, 4, -1).exp(), self.haar)
        kernel = weight.reshape(weight.size(0), x.size(1), 2, 2)  # pixel k = 2 * row + column
        return F.conv2d(x, kernel.to(x.dtype), self.projection.bias, stride=2)


class InverseWaveletShortcut(nn.Module):
    """Doubles the resolution: projects to four subbands of ``out_channels``,
    unscales them and inverts the Haar transform (AuxT's iWLS), as one 1×1
    convolution followed by a pixel shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.log_scales = _subband_scales(out_channels)
        self.projection = OrthogonalProjection(in_channels, 4 * out_channels)  # output: subband-major
        self.register_buffer("haar", _HAAR.clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        unscale = (-self.log_scales).exp().view(4, -1, 1)  # (subband, channel, 1)
        weight = self.projection.weight.view(4, -1, x.size(1)) * unscale
        bias = self.projection.bias.view(4, -1, 1) * unscale
        # the Haar matrix is its own inverse: pixel k of channel c is sum_s H[s, k] * subband s
        weight = torch.einsum("sci,sk->cki", weight, self.haar).flatten(0, 1)
        bias = torch.einsum("sci,sk->cki", bias, self.haar).flatten()
        return F.pixel_shuffle(F.conv2d(x, weight[..., None, None].to(x.dtype), bias.to(x.dtype)), 2)


class AuxiliaryTransform(nn.Module):
    """The shortcuts of one transform, one per resolution stage: four
    :class:`WaveletShortcut` for the analysis (3 → N → N → N → M channels) or four
    :class:`InverseWaveletShortcut` for the synthesis (M → N → N → N → 3). The codec
    adds the output of shortcut ``i`` to that of its stage ``i``; each shortcut reads
    the previous shortcut's output (the linear branch runs on its own)."""

    def __init__(self, N: int, M: int, synthesis: bool) -> None:
        super().__init__()
        widths = (M, N, N, N, 3) if synthesis else (3, N, N, N, M)
        shortcut = InverseWaveletShortcut if synthesis else WaveletShortcut
        self.shortcuts = nn.ModuleList(shortcut(a, b) for a, b in pairwise(widths))

    def orthogonality_loss(self) -> Tensor:
        return sum(s.projection.orthogonality_loss() for s in self.shortcuts)
