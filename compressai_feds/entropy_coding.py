"""Channel-wise context entropy model of the FEDS codecs.

Built from CompressAI's latent codecs: a mean-scale hyperprior
(:class:`~compressai.latent_codecs.HyperpriorLatentCodec`) whose ``y`` branch is
a :class:`~compressai.latent_codecs.ChannelGroupsLatentCodec`. The latent is
split into slices; slice ``k`` is coded with a Gaussian whose mean and scale
come from the hyperprior and from the slices ``0..k-1`` already decoded
(Minnen & Singh, "Channel-wise autoregressive entropy models for learned image
compression", ICIP 2020: the channel-conditional model). The only piece
CompressAI lacks is latent residual prediction (ibid.), added by
:class:`LatentResidualGaussianLatentCodec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from compressai.layers import conv3x3, sequential_channel_ramp
from compressai.models.utils import conv, deconv
from torch import Tensor

__all__ = ["LatentResidualGaussianLatentCodec", "channel_wise_hyperprior"]


class LatentResidualGaussianLatentCodec(GaussianConditionalLatentCodec):
    """Gaussian conditional latent codec followed by latent residual prediction.

    After a slice is quantized, ``y_hat += 0.5 * tanh(lrp([ctx_params, y_hat]))``
    predicts part of its quantization residual from what the decoder already
    knows (Minnen & Singh 2020: latent residual prediction). Encoder and decoder apply the same
    correction, so the bitstream is unchanged and decoding stays exact.

    Shapes are ``(C, H, W)``, the convention of
    :class:`~compressai.latent_codecs.ChannelGroupsLatentCodec` (CompressAI's
    own Gaussian codec uses ``(H, W)`` and so cannot decode inside it).

    Args:
        entropy_parameters: Maps context parameters to ``(scales, means)``.
        lrp: Maps ``[ctx_params, y_hat]`` to the predicted residual.
    """

    def __init__(self, entropy_parameters: nn.Module, lrp: nn.Module) -> None:
        super().__init__(entropy_parameters=entropy_parameters, quantizer="ste")
        self.lrp = lrp

    def _predict_residual(self, y_hat: Tensor, ctx_params: Tensor) -> Tensor:
        return y_hat + 0.5 * torch.tanh(self.lrp(torch.cat([ctx_params, y_hat], dim=1)))

    def forward(self, y: Tensor, ctx_params: Tensor) -> dict[str, Any]:
        out = super().forward(y, ctx_params)
        out["y_hat"] = self._predict_residual(out["y_hat"], ctx_params)
        return out

    def compress(self, y: Tensor, ctx_params: Tensor) -> dict[str, Any]:
        out = super().compress(y, ctx_params)
        out["y_hat"] = self._predict_residual(out["y_hat"], ctx_params)
        out["shape"] = tuple(y.shape[1:])
        return out

    def decompress(
        self, strings: list[list[bytes]], shape: tuple[int, int, int], ctx_params: Tensor, **kwargs
    ) -> dict[str, Any]:
        out = super().decompress(strings, tuple(shape[1:]), ctx_params, **kwargs)
        out["y_hat"] = self._predict_residual(out["y_hat"], ctx_params)
        return out


def _hyper_latent_codec(M: int, N: int) -> HyperLatentCodec:
    """Hyperprior branch (Ballé et al. 2018; Minnen et al. 2018): ``z`` has ``N``
    channels at 1/4 of the latent resolution; ``h_s`` returns ``2N`` side
    parameters for the slices' mean and scale networks."""
    h_a = nn.Sequential(
        conv(M, N, kernel_size=3, stride=1),
        nn.GELU(),
        conv(N, N, kernel_size=5, stride=2),
        nn.GELU(),
        conv(N, N, kernel_size=5, stride=2),
    )
    h_s = nn.Sequential(
        deconv(N, N, kernel_size=5, stride=2),
        nn.GELU(),
        deconv(N, N * 3 // 2, kernel_size=5, stride=2),
        nn.GELU(),
        conv(N * 3 // 2, N * 2, kernel_size=3, stride=1),
    )
    return HyperLatentCodec(EntropyBottleneck(N), h_a, h_s, quantizer="ste")


def _channel_context(in_ch: int, hidden: int, out_ch: int) -> nn.Module:
    """Channel context transform ``g_ch`` of one slice: the decoded earlier slices
    give ``out_ch`` parameters (Minnen & Singh 2020, Fig. 2, "CC")."""
    return nn.Sequential(
        conv3x3(in_ch, hidden), nn.GELU(), conv3x3(hidden, hidden), nn.GELU(), conv3x3(hidden, out_ch)
    )


def _slice_codec(params_ch: int, slice_ch: int, hidden: int) -> LatentResidualGaussianLatentCodec:
    """Gaussian codec of one slice: 1×1 parameter aggregation to ``(scales, means)``
    and a small 3×3 latent residual predictor."""
    entropy_parameters = sequential_channel_ramp(
        params_ch,
        slice_ch * 2,
        min_ch=hidden,
        num_layers=3,
        make_layer=nn.Conv2d,
        make_act=nn.GELU,
        kernel_size=1,
    )
    lrp = nn.Sequential(conv3x3(params_ch + slice_ch, hidden), nn.GELU(), conv3x3(hidden, slice_ch))
    return LatentResidualGaussianLatentCodec(entropy_parameters, lrp)


def channel_wise_hyperprior(M: int, N: int, groups: Sequence[int]) -> HyperpriorLatentCodec:
    """Hyperprior + channel-wise autoregressive context model for an ``M``-channel latent.

    Args:
        M: Latent channels; ``sum(groups)`` must equal ``M``.
        N: Hyper-latent channels and width of the context networks.
        groups: Channels of each slice, coded in this order.
    """
    groups = list(groups)
    if sum(groups) != M:
        raise ValueError(f"slice sizes {groups} do not add up to M={M}")
    side_ch = 2 * N
    channel_context = {
        f"y{k}": _channel_context(sum(groups[:k]), N, 2 * groups[k]) for k in range(1, len(groups))
    }
    slice_codecs = {
        f"y{k}": _slice_codec(side_ch + (k > 0) * 2 * groups[k], groups[k], N) for k in range(len(groups))
    }
    return HyperpriorLatentCodec(
        latent_codec={
            "y": ChannelGroupsLatentCodec(slice_codecs, channel_context, groups=groups),
            "hyper": _hyper_latent_codec(M, N),
        }
    )
