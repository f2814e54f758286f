"""Building blocks of the FEDS codecs that CompressAI does not already provide."""

from __future__ import annotations

import torch.nn as nn
from timm.models.swin_transformer_v2 import SwinTransformerV2Block
from torch import Tensor

__all__ = ["SwinV2AttentionBlock"]


class SwinV2AttentionBlock(nn.Module):
    """Window attention on an ``NCHW`` feature map, made of timm's Swin-V2 blocks.

    The FEDS teacher (paper: teacher architecture) inserts Swin-Transformer-V2 attention
    modules into its analysis and synthesis transforms. Each module here is a
    pair of :class:`timm.models.swin_transformer_v2.SwinTransformerV2Block`:
    one with regular windows and one with windows shifted by half a window, so
    that information crosses window borders. Swin-V2 brings scaled cosine
    attention and a log-spaced continuous position bias, which does not depend
    on the window size stored in the weights.

    With ``always_partition=True`` and ``dynamic_mask=True`` the blocks pad to
    whole windows and build the shift mask at run time, so any ``H, W`` works.

    Args:
        dim: Number of channels of the feature map.
        window_size: Side of the square attention window, in feature pixels.
        head_dim: Channels per attention head; ``dim`` must be a multiple.
        mlp_ratio: Width of the blocks' MLP relative to ``dim``.
    """

    def __init__(self, dim: int, window_size: int = 8, head_dim: int = 32, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim={dim} is not a multiple of head_dim={head_dim}")
        self.blocks = nn.Sequential(
            *(
                SwinTransformerV2Block(
                    dim=dim,
                    input_resolution=(window_size, window_size),
                    num_heads=dim // head_dim,
                    window_size=window_size,
                    shift_size=shift,
                    always_partition=True,
                    dynamic_mask=True,
                    mlp_ratio=mlp_ratio,
                )
                for shift in (0, window_size // 2)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        # NCHW -> NHWC for timm's blocks, and back.
        return self.blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
