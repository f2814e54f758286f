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

import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from compressai.layers import conv3x3, sequential_channel_ramp
from compressai.models.utils import conv, deconv
from torch import Tensor

from .fixed_point import FixedPointNetwork

__all__ = [
    "BitstreamError",
    "CheckedHyperLatentCodec",
    "LatentResidualGaussianLatentCodec",
    "channel_wise_hyperprior",
    "fixed_point_networks",
    "swapped_modules",
]


class BitstreamError(ValueError):
    """A bitstream that does not decode consistently: corrupted, forged, or
    decoded with another entropy model than the one that wrote it."""


#: No latent of a real image comes near this; forged streams can decode to values
#: whose re-encoding would overflow CompressAI's bypass coder (it then never ends).
MAX_LATENT_MAGNITUDE = 2.0**20


def check_reencodes(
    strings: list[bytes], decoded: Tensor, reencode: Callable[[], list[bytes]], what: str
) -> None:
    """A consistent rANS decode stays in range and re-encodes to the very bytes
    it was decoded from."""
    if not bool((decoded.abs() < MAX_LATENT_MAGNITUDE).all()) or list(reencode()) != list(strings):
        raise BitstreamError(
            f"the {what} bitstream does not decode consistently (corrupted or desynchronised)"
        )


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
        self.verify_decoding = True  # re-encode what was decoded (:func:`check_reencodes`)

    def _predict_residual(self, y_hat: Tensor, ctx_params: Tensor) -> Tensor:
        features = torch.cat([ctx_params, y_hat], dim=1)
        if isinstance(self.lrp, FixedPointNetwork):  # the exact path: its last layer is 0.5·tanh
            return y_hat + self.lrp(features)
        return y_hat + 0.5 * torch.tanh(self.lrp(features))

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
        """Decodes a slice and checks that its symbols re-encode to the same
        bytes (else :class:`BitstreamError`)."""
        (y_strings,) = strings
        scales, means = self._chunk(self.entropy_parameters(ctx_params))
        indexes = self.gaussian_conditional.build_indexes(scales)
        if indexes.shape[1:] != tuple(shape):
            raise BitstreamError(f"a latent slice has shape {tuple(indexes.shape[1:])}, not {tuple(shape)}")
        if len(y_strings) != indexes.size(0):
            raise BitstreamError(f"{len(y_strings)} latent bitstreams for {indexes.size(0)} images")
        symbols = _decode_checked(self.gaussian_conditional, y_strings, indexes, self.verify_decoding)
        y_hat = self.gaussian_conditional.dequantize(symbols, means)
        return {"y_hat": self._predict_residual(y_hat, ctx_params)}


def _decode_checked(
    model: GaussianConditional, strings: list[bytes], indexes: Tensor, verify: bool
) -> Tensor:
    """The symbols of ``strings``, as CompressAI's ``GaussianConditional.decompress``
    decodes them (its rANS coder and CDF tables), with ``verify`` each string
    re-encoded from the very lists the decoder used and compared with it
    (:func:`check_reencodes`): the check costs one rANS encode, not a second
    conversion of every symbol."""
    model._check_cdf_size()  # CompressAI's own errors for a model whose update() never ran
    model._check_cdf_length()
    model._check_offsets_size()
    tables = (
        model._quantized_cdf.tolist(),
        model._cdf_length.reshape(-1).int().tolist(),
        model._offset.reshape(-1).int().tolist(),
    )
    symbols = torch.empty(indexes.shape, dtype=torch.int32)
    for i, string in enumerate(strings):
        index_list = indexes[i].reshape(-1).int().tolist()
        values = model.entropy_coder.decode_with_indexes(string, index_list, *tables)
        # through array.array: six times faster than torch.tensor(list)
        symbols[i] = torch.from_numpy(np.asarray(array.array("i", values))).view(symbols[i].shape)
        if not verify:
            continue
        check_reencodes(
            [string],
            symbols[i],
            lambda values=values, index_list=index_list: [
                model.entropy_coder.encode_with_indexes(values, index_list, *tables)
            ],
            "latent",
        )
    return symbols.to(indexes.device)


class CheckedHyperLatentCodec(HyperLatentCodec):
    """CompressAI's hyper-latent codec, whose decoder also checks that the
    hyper-latent re-encodes to the bytes it was decoded from.

    ``side_offset``, when a variable-rate codec sets it for a call, is added to the
    side parameters ``h_s(ẑ)`` (:class:`~compressai_feds.gain_units.GainUnits`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.side_offset: Tensor | None = None
        self.verify_decoding = True  # re-encode what was decoded (:func:`check_reencodes`)

    def _side_parameters(self, params: Tensor) -> Tensor:
        return params if self.side_offset is None else params + self.side_offset

    def forward(self, y: Tensor) -> dict[str, Any]:
        out = super().forward(y)
        out["params"] = self._side_parameters(out["params"])
        return out

    def compress(self, y: Tensor) -> dict[str, Any]:
        out = super().compress(y)
        out["params"] = self._side_parameters(out["params"])
        return out

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int], **kwargs) -> dict[str, Any]:
        (z_strings,) = strings
        z_hat = self.entropy_bottleneck.decompress(z_strings, shape)
        if self.verify_decoding:
            check_reencodes(z_strings, z_hat, lambda: self.entropy_bottleneck.compress(z_hat), "hyper-latent")
        return {"params": self._side_parameters(self.h_s(z_hat))}


def _hyper_latent_codec(M: int, N: int) -> CheckedHyperLatentCodec:
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
    return CheckedHyperLatentCodec(EntropyBottleneck(N), h_a, h_s, quantizer="ste")


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


def fixed_point_networks(codec: HyperpriorLatentCodec) -> list[tuple[nn.Module, str, FixedPointNetwork]]:
    """``(parent, attribute, fixed-point twin)`` for every network between the
    decoded symbols and the CDF indexes and means: hyper-synthesis, channel
    context, entropy parameters and latent residual prediction of each slice."""
    hyper, groups = codec.latent_codec["hyper"], codec.latent_codec["y"]
    networks = [(hyper, "h_s", FixedPointNetwork(hyper.h_s))]
    networks += [
        (groups.channel_context, k, FixedPointNetwork(net)) for k, net in groups.channel_context.items()
    ]
    for slice_codec in groups.latent_codec.values():
        networks.append(
            (slice_codec, "entropy_parameters", FixedPointNetwork(slice_codec.entropy_parameters))
        )
        networks.append((slice_codec, "lrp", FixedPointNetwork(slice_codec.lrp, half_tanh=True)))
    return networks


@contextmanager
def swapped_modules(replacements: list[tuple[nn.Module, str, nn.Module]]) -> Iterator[None]:
    """Puts each module in its parent's attribute for the duration of the block."""
    originals = [(parent, name, getattr(parent, name)) for parent, name, _ in replacements]
    try:
        for parent, name, module in replacements:
            setattr(parent, name, module)
        yield
    finally:
        for parent, name, module in originals:
            setattr(parent, name, module)
