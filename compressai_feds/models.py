"""The FEDS teacher and student codecs (Fu et al., arXiv 2503.06399: teacher and student architectures)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.entropy_models import EntropyModel
from compressai.layers import (
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv3x3,
    subpel_conv3x3,
)
from compressai.models import SimpleVAECompressionModel
from compressai.models.utils import conv, update_registered_buffers
from compressai.ops import compute_padding
from compressai.registry import register_model
from torch import Tensor

from .auxiliary_transform import AuxiliaryTransform
from .entropy_coding import BitstreamError, channel_wise_hyperprior, fixed_point_networks, swapped_modules
from .gain_units import REFERENCE_QUALITY, GainUnits
from .layers import SwinV2AttentionBlock
from .quality import snap_quality

__all__ = ["FEDSCodec", "FEDSTeacher", "FEDSStudent", "FEATURE_NAMES"]

#: Total down-sampling of the image: 4 stride-2 stages in ``g_a``, 2 in ``h_a``.
PAD_MULTIPLE = 2**6

#: Intermediate tensors returned by ``forward(x, return_features=True)``: the
#: outputs of analysis stages 1-3 (1/2, 1/4, 1/8 resolution), the latent ``y``
#: (1/16) and the outputs of synthesis stages 1-3 (1/8, 1/4, 1/2 resolution).
FEATURE_NAMES = (
    "analysis_1",
    "analysis_2",
    "analysis_3",
    "y",
    "synthesis_1",
    "synthesis_2",
    "synthesis_3",
)


def _attention(dim: int, enabled: bool, window_size: int) -> list[nn.Module]:
    return [SwinV2AttentionBlock(dim, window_size)] if enabled else []


def _analysis_stage(N: int, num_res_blocks: int, attention: bool, window_size: int) -> nn.Sequential:
    """Halves the resolution, then refines with residual blocks and attention."""
    return nn.Sequential(
        ResidualBlockWithStride(N, N, stride=2),
        *(ResidualBlock(N, N) for _ in range(num_res_blocks)),
        *_attention(N, attention, window_size),
    )


def _synthesis_stage(N: int, num_res_blocks: int, attention: bool, window_size: int) -> nn.Sequential:
    """Refines with residual blocks and attention, then doubles the resolution."""
    return nn.Sequential(
        *(ResidualBlock(N, N) for _ in range(num_res_blocks)),
        *_attention(N, attention, window_size),
        ResidualBlockUpsample(N, N, upsample=2),
    )


def _check_image(x: Any) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.size(1) != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected an RGB image batch of shape (B, 3, H, W), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"expected a float image in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"expected a non-empty image batch, got shape {tuple(x.shape)}")


class FEDSCodec(SimpleVAECompressionModel):
    r"""Learned image codec with residual/attention transforms and a channel-wise
    context entropy model; the common architecture of the FEDS teacher and student.

    .. code-block:: none

        x ─► g_a: [stage 1][stage 2][stage 3][stage 4] ─► y ─► hyperprior +
             channel-wise context (slices, LRP) ─► y_hat ─► g_s: [stage 1]
             [stage 2][stage 3][stage 4] ─► x_hat

    Analysis stage 1 is a strided 5×5 convolution; stages 2-3 each halve the
    resolution with a :class:`~compressai.layers.ResidualBlockWithStride` and
    add ``num_res_blocks`` residual blocks; stage 4 maps to the ``M`` latent
    channels. Synthesis mirrors it with
    :class:`~compressai.layers.ResidualBlockUpsample` and a final sub-pixel
    convolution. No residual block runs at 1/2 or full resolution, where they
    would dominate the cost. With ``attention``, Swin-V2 window attention
    runs at 1/8 and 1/16 resolution: after analysis stages 3-4 and before the
    up-sampling of synthesis stages 1-2 (at 1/4 resolution it would double the
    teacher's training time).

    Inputs of any size are padded to a multiple of 64 and outputs cropped back.
    The entropy model always runs in fp32, also under autocast, so that the
    likelihoods and the rate are never computed in reduced precision.

    :meth:`compress` and :meth:`decompress` evaluate the networks that choose
    each symbol's CDF and mean in fixed point (:mod:`compressai_feds.fixed_point`),
    derived from the weights when first coding after construction,
    :meth:`load_state_dict` or :meth:`update`: the decoded latent is then
    bit-identical on every machine.
    ``exact_entropy_path = False`` restores CompressAI's float evaluation
    (for comparison only: its files decode reliably only where they were written).
    Decoders re-encode what they decoded and compare it with the bytes read;
    ``verify_decoding = False`` skips that check (CompressAI's unchecked decoding).

    With ``variable_rate``, :class:`~.gain_units.GainUnits` scale the latent per quality
    level, and one codec serves every real quality in ``[1, 6]``: ``quality`` is the one
    :meth:`compress`, :meth:`decompress` and :meth:`forward` use unless told otherwise
    (training passes one per image).

    Args:
        N: Channels of the transforms and of the hyper-latent.
        M: Channels of the latent ``y``.
        groups: Channels of each latent slice, coded in order (sum ``M``).
        num_res_blocks: Extra residual blocks per transform stage.
        attention: Whether to insert Swin-V2 attention modules.
        window_size: Attention window side (a run-time setting: it is not
            stored in the weights).
        variable_rate: Learn gains for the six quality levels (one codec for all).
        auxiliary_transform: Add linear wavelet shortcuts beside ``g_a`` and ``g_s``
            (:mod:`~.auxiliary_transform`, Li et al., ICLR 2025).
    """

    def __init__(
        self,
        N: int,
        M: int,
        groups: Sequence[int],
        num_res_blocks: int,
        attention: bool,
        window_size: int = 8,
        variable_rate: bool = False,
        auxiliary_transform: bool = False,
    ) -> None:
        super().__init__()
        self.N, self.M, self.groups = N, M, list(groups)
        self.g_a = nn.Sequential(
            # A plain strided stem keeps full-resolution work small (and torch
            # 2.14's channels_last backward of the 1x1 stride-2 skip conv of
            # ResidualBlockWithStride(3, N) crashes).
            nn.Sequential(conv(3, N, kernel_size=5, stride=2)),
            _analysis_stage(N, num_res_blocks, False, window_size),
            _analysis_stage(N, num_res_blocks, attention, window_size),
            nn.Sequential(conv3x3(N, M, stride=2), *_attention(M, attention, window_size)),
        )
        self.g_s = nn.Sequential(
            nn.Sequential(
                *_attention(M, attention, window_size),
                ResidualBlock(M, N),
                ResidualBlockUpsample(N, N, upsample=2),
            ),
            _synthesis_stage(N, num_res_blocks, attention, window_size),
            _synthesis_stage(N, num_res_blocks, False, window_size),
            nn.Sequential(subpel_conv3x3(N, 3, 2)),
        )
        self.g_a_shortcuts = AuxiliaryTransform(N, M, synthesis=False) if auxiliary_transform else None
        self.g_s_shortcuts = AuxiliaryTransform(N, M, synthesis=True) if auxiliary_transform else None
        self.latent_codec = channel_wise_hyperprior(M, N, groups)
        self.gain_units = GainUnits(M, 2 * N) if variable_rate else None
        self._quality = float(REFERENCE_QUALITY) if variable_rate else None
        self.exact_entropy_path = True
        self._fixed_point: list | None = None  # derived from the weights when first coding

    @property
    def verify_decoding(self) -> bool:
        """Whether decoding re-encodes what it decoded to check it (raising
        :class:`~.entropy_coding.BitstreamError` on an inconsistent stream)."""
        return self.latent_codec.latent_codec["hyper"].verify_decoding

    @verify_decoding.setter
    def verify_decoding(self, enabled: bool) -> None:
        for module in self.latent_codec.modules():
            if hasattr(module, "verify_decoding"):
                module.verify_decoding = enabled

    def _analysis(self, x: Tensor, features: dict[str, Tensor] | None = None) -> Tensor:
        """``g_a``, each stage's output plus its auxiliary shortcut's (if any); the
        outputs of stages 1-3 go into ``features``."""
        return self._transform(x, self.g_a, self.g_a_shortcuts, "analysis", features)

    def _synthesis(self, y_hat: Tensor, features: dict[str, Tensor] | None = None) -> Tensor:
        """``g_s``, like :meth:`_analysis`."""
        return self._transform(y_hat, self.g_s, self.g_s_shortcuts, "synthesis", features)

    @staticmethod
    def _transform(
        x: Tensor,
        stages: nn.Sequential,
        auxiliary: AuxiliaryTransform | None,
        name: str,
        features: dict[str, Tensor] | None,
    ) -> Tensor:
        h = shortcut = x
        for i, stage in enumerate(stages, start=1):
            h = stage(h)
            if auxiliary is not None:
                shortcut = auxiliary.shortcuts[i - 1](shortcut)
                h = h + shortcut
            if features is not None and i < len(stages):
                features[f"{name}_{i}"] = h
        return h

    def orthogonality_loss(self) -> Tensor | None:
        """The auxiliary transform's regulariser (its projections near-orthogonal), a
        training loss term; ``None`` without one."""
        if self.g_a_shortcuts is None:
            return None
        return self.g_a_shortcuts.orthogonality_loss() + self.g_s_shortcuts.orthogonality_loss()

    @property
    def variable_rate(self) -> bool:
        return self.gain_units is not None

    @property
    def quality(self) -> float | None:
        """The quality a variable-rate codec codes at (on the files' grid); ``None`` for a
        fixed-rate codec, which codes at the one it was trained for."""
        return self._quality

    @quality.setter
    def quality(self, value: float) -> None:
        if not self.variable_rate:
            raise ValueError("a fixed-rate codec codes at the quality it was trained for")
        self._quality = snap_quality(value)

    def _qualities(self, quality: float | Tensor | None, batch: int, device: torch.device) -> Tensor:
        """One quality per image, ``(B,)``; ``ValueError`` for a fixed-rate codec given one."""
        if not self.variable_rate:
            if quality is not None:
                raise ValueError("a fixed-rate codec codes at the quality it was trained for")
            return torch.empty(0)
        if quality is None:
            quality = self._quality
        if isinstance(quality, Tensor):
            return quality.to(device=device, dtype=torch.float64).expand(batch)
        return torch.full((batch,), snap_quality(quality), dtype=torch.float64, device=device)

    @contextmanager
    def _side_offset(self, offset: Tensor | None) -> Iterator[None]:
        """The hyperprior adds ``offset`` to its side parameters for the duration of the block."""
        hyper = self.latent_codec.latent_codec["hyper"]
        hyper.side_offset = offset
        try:
            yield
        finally:
            hyper.side_offset = None

    def update(self, *args: Any, **kwargs: Any) -> bool:
        """Builds the CDF tables (CompressAI); the fixed-point entropy path is
        derived again from the weights when next coding."""
        updated = super().update(*args, **kwargs)
        self._fixed_point = None
        return updated

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        """The checkpoint's CDF and scale tables replace the model's whatever their
        sizes (CompressAI resizes them only in its own ``load_state_dict``, and only
        empty ones: weights saved after another ``update()`` would not load into an
        updated model, nor any updated weights into a moving average's copy)."""
        for name, module in self.named_modules(prefix=prefix.removesuffix(".")):
            if isinstance(module, EntropyModel):
                tables = [
                    b
                    for b in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
                    if f"{name}.{b}" in state_dict
                ]
                update_registered_buffers(module, name, tables, state_dict, policy="resize")
        super()._load_from_state_dict(state_dict, prefix, *args)

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        result = super().load_state_dict(state_dict, *args, **kwargs)
        self._fixed_point = None
        return result

    @contextmanager
    def _entropy_path(self, device: torch.device) -> Iterator[None]:
        """The fixed-point networks in place of the float ones, for coding."""
        if self.exact_entropy_path and self._fixed_point is None:
            self._fixed_point = fixed_point_networks(self.latent_codec)
        fixed_point = self._fixed_point if self.exact_entropy_path else []
        with swapped_modules([(parent, name, net.to(device)) for parent, name, net in fixed_point]):
            yield

    def forward(
        self, x: Tensor, return_features: bool = False, quality: float | Tensor | None = None
    ) -> dict[str, Any]:
        """Training/evaluation pass with noise or straight-through quantization.

        A variable-rate codec runs at ``quality``: one for the batch or a ``(B,)`` tensor,
        one per image (default: :attr:`quality`). ``features["y"]`` is then the latent
        as coded, after its gain.

        Returns ``x_hat`` and ``likelihoods`` (``"y"``: per-element likelihoods
        of the latent, shape ``(B, M, H/16, W/16)``; ``"z"``: of the
        hyper-latent), like CompressAI's models. With ``return_features``, also
        ``"features"``: a dict of the tensors named in :data:`FEATURE_NAMES`,
        computed on the input padded to a multiple of 64.
        """
        _check_image(x)
        pad, unpad = compute_padding(x.size(2), x.size(3), min_div=PAD_MULTIPLE)
        features: dict[str, Tensor] = {}
        y = self._analysis(F.pad(x, pad), features)
        qualities = self._qualities(quality, x.size(0), x.device)  # (refuses one for a fixed-rate codec)
        gain = inverse_gain = offset = None
        if self.variable_rate:
            gain, inverse_gain, offset = self.gain_units(qualities)
            y = y * gain.to(y.dtype)
        features["y"] = y
        with torch.autocast(x.device.type, enabled=False), self._side_offset(offset):
            y_out = self.latent_codec(y.float())
        y_hat = y_out["y_hat"] if inverse_gain is None else y_out["y_hat"] * inverse_gain
        x_hat = F.pad(self._synthesis(y_hat, features), unpad)
        out = {"x_hat": x_hat, "likelihoods": y_out["likelihoods"]}
        if return_features:
            out["features"] = features
        return out

    def feature_channels(self) -> dict[str, int]:
        """Channel count of each tensor named in :data:`FEATURE_NAMES`."""
        return {name: self.M if name == "y" else self.N for name in FEATURE_NAMES}

    @torch.no_grad()
    def compress(self, x: Tensor) -> dict[str, Any]:
        """Entropy-codes ``x`` with rANS.

        Returns ``strings`` (one list of bytes per latent slice, then one for
        the hyper-latent; one entry per batch item), ``shape`` (the image's
        ``(H, W)``, all :meth:`decompress` needs besides the strings) and
        ``y_hat``, the quantized latent the decoder will reconstruct (after its gain, in a
        variable-rate codec).
        """
        _check_image(x)
        image_size = (x.size(2), x.size(3))
        pad, _ = compute_padding(*image_size, min_div=PAD_MULTIPLE)
        y = self._analysis(F.pad(x, pad)).float()
        offset = None
        if self.variable_rate:
            y = y * self.gain_units(self._qualities(None, 1, x.device))[0]
            offset = self.gain_units.coding_side_offset(self._quality).to(x.device)
        with self._entropy_path(x.device), self._side_offset(offset):
            out = self.latent_codec.compress(y)
        return {"strings": out["strings"], "shape": image_size, "y_hat": out["y_hat"]}

    @torch.no_grad()
    def decompress(self, strings: list[list[bytes]], shape: Sequence[int], **kwargs) -> dict[str, Any]:
        """Decodes the output of :meth:`compress` into ``{"x_hat": image}``;
        ``"y_hat"`` is the decoded latent. A bitstream that does not decode
        consistently raises :class:`~.entropy_coding.BitstreamError`."""
        if len(strings) != len(self.groups) + 1:
            raise ValueError(
                f"expected {len(self.groups) + 1} bitstreams (one per latent slice and "
                f"one for the hyper-latent), got {len(strings)}"
            )
        height, width = (int(s) for s in shape)
        if height <= 0 or width <= 0:  # (CompressAI's rANS coder crashes on an empty latent)
            raise ValueError(f"expected a positive image size (height, width), got {tuple(shape)}")
        pad, _ = compute_padding(height, width, min_div=PAD_MULTIPLE)
        y_size = ((height + pad[2] + pad[3]) // 16, (width + pad[0] + pad[1]) // 16)
        latent_shape = {
            "y": [(channels, *y_size) for channels in self.groups],
            "hyper": (y_size[0] // 4, y_size[1] // 4),
        }
        device = next(self.parameters()).device
        offset = self.gain_units.coding_side_offset(self._quality).to(device) if self.variable_rate else None
        with self._entropy_path(device), self._side_offset(offset):
            y_hat = self.latent_codec.decompress(strings, latent_shape)["y_hat"]
        x_hat = self.synthesize(y_hat, (height, width))
        if not torch.isfinite(x_hat).all():
            raise BitstreamError("the decoded image is not finite: the bitstream is inconsistent")
        return {"x_hat": x_hat, "y_hat": y_hat}

    def synthesize(self, y_hat: Tensor, image_size: Sequence[int]) -> Tensor:
        """Decodes a quantized latent (of :meth:`compress`) into an image of
        ``image_size``, clamped to [0, 1]."""
        _, unpad = compute_padding(*image_size, min_div=PAD_MULTIPLE)
        if self.variable_rate:
            y_hat = y_hat * self.gain_units(self._qualities(None, 1, y_hat.device))[1]
        return F.pad(self._synthesis(y_hat), unpad).clamp_(0, 1)

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Tensor], variable_rate: bool = False, auxiliary_transform: bool = False
    ) -> FEDSCodec:
        """Builds the codec a state dict was saved from and loads it.

        ``FEDSCodec.from_state_dict`` returns a :class:`FEDSTeacher` or
        :class:`FEDSStudent` when the weights have that class's default sizes.
        ``variable_rate`` adds gain units to the weights of a fixed-rate codec, at their
        start (gain 1 at quality 3): a codec trained at quality 3 is a warm start for
        variable-rate training. ``auxiliary_transform`` likewise adds the auxiliary
        transform's shortcuts, at their initialisation.
        """
        try:
            config = _config_from_state_dict(state_dict)
        except (KeyError, IndexError) as exc:
            raise ValueError(f"this state dict is not from a {cls.__name__} (missing {exc})") from None
        if cls is FEDSCodec:
            sizes = {k: v for k, v in config.items() if k not in ("variable_rate", "auxiliary_transform")}
            cls = next((sub for sub in cls.__subclasses__() if _default_config(sub) == sizes), cls)
        wanted = {
            "variable_rate": config["variable_rate"] or variable_rate,
            "auxiliary_transform": config["auxiliary_transform"] or auxiliary_transform,
        }
        added = any(wanted[name] != config[name] for name in wanted)
        net = cls(**{**config, **wanted})
        net.load_state_dict({**net.state_dict(), **state_dict} if added else state_dict)
        return net


def _default_config(cls: type[FEDSCodec]) -> dict[str, Any]:
    """The constructor defaults of a codec class, as :func:`_config_from_state_dict` reads them."""
    parameters = inspect.signature(cls.__init__).parameters
    config = {name: parameters[name].default for name in ("N", "M", "groups", "num_res_blocks", "attention")}
    config["groups"] = list(config["groups"])
    return config


def _config_from_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Reads the constructor arguments of a :class:`FEDSCodec` off its weights."""
    groups = []
    while (key := f"latent_codec.y.latent_codec.y{len(groups)}.lrp.2.weight") in state_dict:
        groups.append(state_dict[key].size(0))
    res_blocks = [k for k in state_dict if re.fullmatch(r"g_a\.1\.\d+\.conv1\.weight", k)]
    if not groups or not res_blocks:
        raise KeyError("latent slice or analysis-stage weights")
    return {
        "N": state_dict["g_a.0.0.weight"].size(0),
        "M": state_dict["g_a.3.0.weight"].size(0),
        "groups": groups,
        "num_res_blocks": len(res_blocks) - 1,  # minus the strided block
        "attention": any(".blocks.0.attn." in k for k in state_dict),
        "variable_rate": "gain_units.log_gain" in state_dict,
        "auxiliary_transform": "g_a_shortcuts.shortcuts.0.log_scales" in state_dict,
    }


@register_model("feds-teacher")
class FEDSTeacher(FEDSCodec):
    """FEDS teacher: wide transforms, extra residual blocks, Swin-V2 attention,
    expanded latent and five uneven slices (paper: teacher model).

    The defaults are sized to be trainable on a CPU; the paper-scale teacher is
    ``FEDSTeacher(N=192, M=320, groups=(16, 16, 32, 64, 192))``.
    """

    def __init__(
        self,
        N: int = 96,
        M: int = 256,
        groups: Sequence[int] = (16, 16, 32, 64, 128),
        num_res_blocks: int = 2,
        attention: bool = True,
        window_size: int = 8,
        variable_rate: bool = False,
        auxiliary_transform: bool = False,
    ) -> None:
        super().__init__(
            N, M, groups, num_res_blocks, attention, window_size, variable_rate, auxiliary_transform
        )


@register_model("feds-student")
class FEDSStudent(FEDSCodec):
    """FEDS student: the teacher's interfaces with fewer channels, one residual
    block per stage, no attention and two slices (paper: student model).

    Its parameter count is at most 37% of the default teacher's and its
    encode + decode time at most 27% (the paper's -63% and -73%).
    """

    def __init__(
        self,
        N: int = 48,
        M: int = 160,
        groups: Sequence[int] = (32, 128),
        num_res_blocks: int = 1,
        attention: bool = False,
        window_size: int = 8,
        variable_rate: bool = False,
        auxiliary_transform: bool = False,
    ) -> None:
        super().__init__(
            N, M, groups, num_res_blocks, attention, window_size, variable_rate, auxiliary_transform
        )


# The zoo functions of these classes, registered in CompressAI's zoo when that module completes.
from . import zoo  # noqa: E402, F401
