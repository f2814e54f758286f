"""Exact, machine-independent evaluation of the networks that choose the entropy
model (Ballé, Johnston & Minnen, "Integer networks for data compression with
latent-variable models", ICLR 2019).

The decoder recomputes, from what it has already decoded, the scale (hence the
CDF) and the mean of every latent symbol. In floating point, another thread
count, CPU or kernel rounds differently; a scale that lands on the other side
of a scale-table boundary desynchronises rANS and the rest of the image is
garbage. Here those networks (hyper-synthesis, channel context, entropy
parameters, latent residual prediction) are evaluated on integers:

* activations live on a grid of ``2**-FRACTION_BITS``, clamped to
  ``±ACTIVATION_LIMIT`` grid steps;
* each output channel's weights are scaled by a power of two to at most
  ``WEIGHT_LIMIT`` and rounded; biases are rounded to the accumulator's grid;
* a convolution is an ``unfold``/``fold`` (copies and integer sums) around a
  float64 matrix product of integers whose partial sums all stay below
  ``2**53`` (checked when the network is built), so every order of summation
  gives the same, exact result;
* rescaling multiplies by a power of two and rounds half to even; GELU and
  ``0.5·tanh`` are tables on the grid over ``[-TABLE_RANGE, TABLE_RANGE]``,
  outside which they equal ``x``/``0`` and ``±0.5`` on the grid.

Outputs are float32 values on the grid, exactly representable, so CompressAI's
scale-table comparison (``build_indexes``) and ``symbol + mean`` are exact too.
Everything is derived from the float weights when a codec is loaded or updated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FixedPointConv", "FixedPointNetwork", "FixedPointTable", "from_grid", "to_grid"]

FRACTION_BITS = 12
GRID = 2.0**FRACTION_BITS
ACTIVATION_LIMIT = 2**22
WEIGHT_LIMIT = 2**15
TABLE_RANGE = 8
EXACT_LIMIT = 2**53


def to_grid(x: Tensor) -> Tensor:
    """Float values to integer grid steps (held in float64), clamped."""
    return torch.round(x.double() * GRID).clamp_(-ACTIVATION_LIMIT, ACTIVATION_LIMIT)


def from_grid(a: Tensor) -> Tensor:
    """Grid steps back to float32 values, exactly (``|a| <= 2**22`` fits float32)."""
    return (a / GRID).float()


class FixedPointConv(nn.Module):
    """A :class:`~torch.nn.Conv2d` or :class:`~torch.nn.ConvTranspose2d` on grid
    integers: integer weights per output channel, exact float64 sums, and a
    rounded power-of-two rescaling back to the grid."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise ValueError("only dense, undilated, zero-padded convolutions have a fixed-point form")
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.output_padding = conv.output_padding if self.transposed else (0, 0)
        weight = conv.weight.detach().double()
        if self.transposed:  # (in, out, kh, kw) -> (out, in, kh, kw)
            weight = weight.transpose(0, 1)
        largest = weight.abs().amax(dim=(1, 2, 3))
        _, exponent = torch.frexp(largest)  # largest < 2**exponent
        shift = math.log2(WEIGHT_LIMIT) - exponent.double()
        weight = torch.round(torch.ldexp(weight, shift.view(-1, 1, 1, 1)))
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(len(shift)).double()
        bias = torch.round(torch.ldexp(bias, shift + FRACTION_BITS))
        bound = ACTIVATION_LIMIT * weight.abs().sum(dim=(1, 2, 3)) + bias.abs()
        if bound.max() >= EXACT_LIMIT:
            raise ValueError(f"fixed-point sums could reach {bound.max():.3g}, beyond exact float64 integers")
        kernel = self.kernel_size[0]
        # stride 1 and "same" padding: one matrix per kernel tap, applied to shifted views
        self.shifted = (
            not self.transposed
            and self.stride == (1, 1)
            and self.kernel_size == (kernel, kernel)
            and kernel % 2 == 1
            and self.padding == (kernel // 2, kernel // 2)
        )
        if self.transposed:  # (out, in, kh, kw) -> (out·kh·kw, in): one column block per input pixel
            matrix = weight.permute(0, 2, 3, 1).reshape(-1, weight.size(1))
        elif self.shifted:  # (kh·kw, out, in)
            matrix = weight.permute(2, 3, 0, 1).reshape(kernel * kernel, weight.size(0), weight.size(1))
        else:
            matrix = weight.reshape(weight.size(0), -1)
        self.register_buffer("matrix", matrix.contiguous(), persistent=False)
        self.register_buffer("bias", bias.view(1, -1, 1, 1), persistent=False)
        self.register_buffer(
            "rescale", torch.ldexp(torch.ones_like(shift), -shift).view(1, -1, 1, 1), persistent=False
        )

    def _shifted_products(self, a: Tensor) -> Tensor:
        """Sum over the kernel taps of ``tap matrix @ shifted input``, each
        shifted input a contiguous slice of the padded, flattened image (no
        unfolded copy); columns beyond the image width are dropped at the end."""
        batch, channels, height, width = a.shape
        kernel = self.kernel_size[0]
        pad = kernel // 2
        padded_width = width + 2 * pad
        flat = F.pad(a, (pad, pad, pad, pad + 1)).reshape(batch, channels, -1)  # +1 row: last tap's slice
        length = height * padded_width
        acc = torch.zeros(batch, self.matrix.size(1), length, dtype=a.dtype, device=a.device)
        for tap in range(kernel * kernel):
            start = (tap // kernel) * padded_width + tap % kernel
            acc += self.matrix[tap] @ flat[:, :, start : start + length]
        return acc.view(batch, -1, height, padded_width)[..., :width]

    def forward(self, a: Tensor) -> Tensor:
        batch, _, height, width = a.shape
        if self.shifted:
            acc = self._shifted_products(a)
        elif self.transposed:
            size = [
                (n - 1) * s - 2 * p + k + o
                for n, s, p, k, o in zip(
                    (height, width),
                    self.stride,
                    self.padding,
                    self.kernel_size,
                    self.output_padding,
                    strict=True,
                )
            ]
            columns = self.matrix @ a.reshape(batch, a.size(1), -1)
            acc = F.fold(columns, size, self.kernel_size, padding=self.padding, stride=self.stride)
        else:
            size = [
                (n + 2 * p - k) // s + 1
                for n, s, p, k in zip(
                    (height, width), self.stride, self.padding, self.kernel_size, strict=True
                )
            ]
            columns = F.unfold(a, self.kernel_size, padding=self.padding, stride=self.stride)
            acc = (self.matrix @ columns).view(batch, -1, *size)
        # multiplying by a power of two is exact; rounding is half to even
        return torch.round((acc + self.bias) * self.rescale).clamp_(-ACTIVATION_LIMIT, ACTIVATION_LIMIT)


@cache
def _table_values(name: str) -> tuple[float, ...]:
    functions: dict[str, Callable[[float], float]] = {
        "gelu": lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
        "half_tanh": lambda x: 0.5 * math.tanh(x),
    }
    steps = int(TABLE_RANGE * GRID)
    return tuple(float(round(functions[name](i / GRID) * GRID)) for i in range(-steps, steps + 1))


class FixedPointTable(nn.Module):
    """An elementwise function on grid integers, by table lookup.

    ``gelu`` (exact GELU, ``x·Φ(x)``) is ``x`` above the table and ``0`` below;
    ``half_tanh`` (``0.5·tanh x``) is ``±0.5`` outside it. The tables are
    computed once with Python's float64 ``math`` functions and rounded to the
    grid, where both limits are reached at the table's ends.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in ("gelu", "half_tanh"):
            raise ValueError(f"no fixed-point table for {name!r}")
        self.name = name
        self.register_buffer(
            "table", torch.tensor(_table_values(name), dtype=torch.float64), persistent=False
        )

    def forward(self, a: Tensor) -> Tensor:
        steps = (len(self.table) - 1) // 2
        out = self.table[(a.clamp(-steps, steps) + steps).long()]
        if self.name == "gelu":
            return torch.where(a > steps, a, out)
        return out  # the table's ends are already ±0.5


class FixedPointNetwork(nn.Module):
    """A float :class:`~torch.nn.Sequential` of convolutions and GELUs evaluated
    exactly: float32 in, float32 on the grid out.

    Args:
        network: The trained float network (``Conv2d``, ``ConvTranspose2d``, ``GELU``).
        half_tanh: Apply ``0.5·tanh`` to the output (latent residual prediction).
    """

    def __init__(self, network: nn.Sequential, half_tanh: bool = False) -> None:
        super().__init__()
        gelu = FixedPointTable("gelu")
        layers: list[nn.Module] = []
        for module in network:
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                layers.append(FixedPointConv(module))
            elif isinstance(module, nn.GELU) and module.approximate == "none":
                layers.append(gelu)
            else:
                raise TypeError(f"no fixed-point form for {type(module).__name__}")
        if half_tanh:
            layers.append(FixedPointTable("half_tanh"))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return from_grid(self.layers(to_grid(x)))
