"""Exact, machine-independent evaluation of the networks that choose the entropy
model (Ballé, Johnston & Minnen, "Integer networks for data compression with
latent-variable models", ICLR 2019).

The decoder recomputes, from what it has already decoded, the scale (hence the
CDF) and the mean of every latent symbol. In floating point, another thread
count, CPU or kernel rounds differently; a scale that lands on the other side
of a scale-table boundary desynchronises rANS and the rest of the image is
garbage. Here those networks (hyper-synthesis, channel context, entropy
parameters, latent residual prediction) are evaluated on integers:

* activations are int32 steps of a grid of ``2**-FRACTION_BITS``, clamped
  to ``±ACTIVATION_LIMIT``;
* each output channel's weights are scaled by a power of two to at most
  ``WEIGHT_LIMIT`` and rounded to 8-bit integers; biases are rounded to the
  accumulator's grid;
* a convolution is an exact integer matrix product (the activations taken
  from shifted views, ``unfold`` or before a ``fold``): where oneDNN has
  int8 kernels with VNNI, int8 products with int32 sums (``torch._int_mm``)
  of the weights and each base-256 digit of the activations, recombined in
  float64; elsewhere one float64 product of the same integers. Every partial
  sum is an integer below ``2**53`` (checked when the network is built), so
  both ways, every machine and every order of summation give the same result;
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
WEIGHT_LIMIT = 2**7  # weights in [-128, 127]
TABLE_RANGE = 8
EXACT_LIMIT = 2**53
DIGIT_BASE = 256


def to_grid(x: Tensor) -> Tensor:
    """Finite float32 values to int32 grid steps, rounded half to even and
    clamped (scaling a float by a power of two is exact)."""
    return torch.round(x.float() * GRID).clamp_(-ACTIVATION_LIMIT, ACTIVATION_LIMIT).to(torch.int32)


def from_grid(a: Tensor) -> Tensor:
    """Grid steps back to float32 values, exactly (``|a| <= 2**22`` fits float32
    and ``GRID`` is a power of two)."""
    return a.float().div_(GRID)


def _repunit(count: int) -> int:
    """``1 + 256 + ... + 256**(count-1)``: ``count`` balanced digits span
    ``[-128·repunit(count), 127·repunit(count)]``."""
    return (DIGIT_BASE**count - 1) // (DIGIT_BASE - 1)


def _digits(values: Tensor) -> list[Tensor]:
    """int32 ``values`` (``|values| <= ACTIVATION_LIMIT``) as balanced
    base-256 digits in ``[-128, 127]``, int8, least significant first:
    ``values == sum(digits[i] * 256**i)``; as many as the largest value needs.

    With ``n`` digits, ``values + 128·(1 + 256 + ... + 256**(n-1))`` is
    non-negative and its plain base-256 digits are the balanced ones plus 128:
    int32 shifts and masks, exact.
    """
    low, high = (int(v) for v in torch.aminmax(values)) if values.numel() else (0, 0)
    count = 1
    while not -128 * _repunit(count) <= low <= high <= 127 * _repunit(count):
        count += 1
    offset = 128 * _repunit(count)
    shifted = values + offset
    return [((shifted >> (8 * i)) & 255).sub_(128).to(torch.int8) for i in range(count)]


def int8_products_are_fast() -> bool:
    """Whether ``torch._int_mm`` runs on oneDNN's int8 kernels here (CPUs with
    AVX-512 VNNI). With oneDNN switched off it falls back to a plain loop, about
    30 times slower than a float64 product of the same integers (320 times slower
    than oneDNN's int8 on Zen 4); an AVX2-only EPYC coded as if it did."""
    return bool(
        torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and torch.cpu.get_capabilities().get("avx512_vnni", False)
    )


class FixedPointConv(nn.Module):
    """A :class:`~torch.nn.Conv2d` or :class:`~torch.nn.ConvTranspose2d` on grid
    integers: 8-bit integer weights per output channel, exact integer sums, and a
    rounded power-of-two rescaling back to the grid.

    Where :func:`int8_products_are_fast`, products are int8 matrix products
    with int32 sums (``torch._int_mm``) of the weights and each base-256 digit
    of the activations, the digits' sums scaled by their power of 256 and added
    in float64; elsewhere one float64 matrix product of the weights and the
    activations. Both sum integers below ``2**53`` (checked when the layer is
    built): the same result on every machine, either way, in any summation order.
    """

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
        weight = torch.round(torch.ldexp(weight, shift.view(-1, 1, 1, 1))).clamp_(
            -WEIGHT_LIMIT, WEIGHT_LIMIT - 1
        )
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(len(shift)).double()
        bias = torch.round(torch.ldexp(bias, shift + FRACTION_BITS))
        products = weight[0].numel()
        if products * 128 * 128 >= 2**31:
            raise ValueError("more than 2**17 products per sum would overflow int32 sums")
        # the digits' partial sums: sum(|digit_i|·256**i) <= |a| + 2**17 <= 2·ACTIVATION_LIMIT
        bound = 2 * ACTIVATION_LIMIT * weight.abs().sum(dim=(1, 2, 3)) + bias.abs()
        if bound.max() >= EXACT_LIMIT:
            raise ValueError(f"fixed-point sums could reach {bound.max():.3g}, beyond exact float64 integers")
        kernel = self.kernel_size[0]
        # stride 1 and "same" padding: the columns are shifted views of the padded digits, stacked
        self.shifted = (
            not self.transposed
            and self.stride == (1, 1)
            and self.kernel_size == (kernel, kernel)
            and kernel % 2 == 1
            and self.padding == (kernel // 2, kernel // 2)
        )
        if self.transposed:  # (out·kh·kw, in): one column block per input pixel, for ``fold``
            matrix = weight.permute(0, 2, 3, 1).reshape(-1, weight.size(1))
        elif self.shifted:  # (out, kh·kw·in): the order of the stacked shifted views
            matrix = weight.permute(0, 2, 3, 1).reshape(weight.size(0), -1)
        else:  # (out, in·kh·kw): the order of ``unfold``
            matrix = weight.reshape(weight.size(0), -1)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("matrix", matrix.to(torch.int8).contiguous(), persistent=False)
        self.register_buffer("bias", bias.view(-1, 1, 1), persistent=False)
        self.register_buffer(
            "rescale", torch.ldexp(torch.ones_like(shift), -shift).view(-1, 1, 1), persistent=False
        )

    def _product(self, values: Tensor, operand: Callable[[Tensor], Tensor]) -> Tensor:
        """``matrix @ operand(values)`` in float64, exactly: ``operand`` arranges
        a ``(C, N)`` tensor (int8 digits or float64 integers) as the columns."""
        if not int8_products_are_fast():
            return self.matrix.double() @ operand(values.double())
        digits = _digits(values.to(torch.int32))
        acc = torch._int_mm(self.matrix, operand(digits[0])).double()
        for i, digit in enumerate(digits[1:], start=1):
            acc.add_(torch._int_mm(self.matrix, operand(digit)), alpha=DIGIT_BASE**i)
        return acc

    def _convolve(self, image: Tensor) -> Tensor:
        """The integer sums of one ``(C, H, W)`` image, before rescaling."""
        channels, height, width = image.shape
        if self.shifted:
            kernel = self.kernel_size[0]
            pad = kernel // 2
            padded_width = width + 2 * pad
            # +1 row: the last tap's slice; columns beyond the width are dropped at the end
            padded = F.pad(image, (pad, pad, pad, pad + 1)).reshape(channels, -1)
            length = height * padded_width
            starts = [(tap // kernel) * padded_width + tap % kernel for tap in range(kernel * kernel)]
            acc = self._product(padded, lambda d: torch.cat([d[:, i : i + length] for i in starts]))
            return acc.view(-1, height, padded_width)[..., :width]
        if self.transposed:
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
            columns = self._product(image.reshape(channels, -1), lambda d: d)
            return F.fold(columns, size, self.kernel_size, padding=self.padding, stride=self.stride)
        size = [
            (n + 2 * p - k) // s + 1
            for n, s, p, k in zip((height, width), self.stride, self.padding, self.kernel_size, strict=True)
        ]
        # (unfold has no integer kernel; float64 holds the int32 values exactly)
        columns = F.unfold(image.double(), self.kernel_size, padding=self.padding, stride=self.stride)
        return self._product(columns, lambda d: d).view(-1, *size)

    def forward(self, a: Tensor) -> Tensor:
        acc = self._convolve(a[0])[None] if len(a) == 1 else torch.stack([self._convolve(i) for i in a])
        # multiplying by a power of two is exact; rounding is half to even
        acc.add_(self.bias).mul_(self.rescale).round_().clamp_(-ACTIVATION_LIMIT, ACTIVATION_LIMIT)
        return acc.to(torch.int32)


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
        self.register_buffer("table", torch.tensor(_table_values(name), dtype=torch.int32), persistent=False)

    def forward(self, a: Tensor) -> Tensor:
        steps = (len(self.table) - 1) // 2
        out = self.table.index_select(0, a.clamp(-steps, steps).add_(steps).flatten()).view_as(a)
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
