"""The two FEDS distillation losses (Fu et al., arXiv 2503.06399: feature distillation and entropy-based channel-level distillation).

The rate-distortion term is CompressAI's :class:`~compressai.losses.RateDistortionLoss`;
this module adds what FEDS puts on top of it:

* :class:`FeatureAlignmentLoss` pulls the student's intermediate features, mapped
  to the teacher's widths by 1×1 adapters, towards the teacher's, weighting each
  position by how much energy the teacher's feature carries there.
* :class:`EntropyWeightedChannelLoss` matches, channel by channel, the spatial
  distribution of the student's latent to the teacher's, and weights each
  channel by the teacher's entropy in it, so the most informative channels
  count most.

Both own their adapters, which exist at training time only: they are never
part of the student's checkpoint. :func:`reconstruction_distillation`, a decoder-side
target that FEDS does not have, is the alternative issue 40's pilots measure beside them.

:class:`PerImageRateDistortionLoss` is the rate-distortion term of variable-rate
training, where every image of a batch has its own quality and λ (MSE or MS-SSIM).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CHANNEL_FORMS",
    "EntropyWeightedChannelLoss",
    "FeatureAlignmentLoss",
    "PerImageRateDistortionLoss",
    "channel_entropy_bits",
    "largest_ms_ssim_window",
    "make_adapter",
    "per_image_distortion",
    "reconstruction_distillation",
    "spatial_attention",
    "standardize_channels",
]

#: How :class:`EntropyWeightedChannelLoss` compares a channel of the two latents.
CHANNEL_FORMS = ("spatial_kl", "standardized_kl")


def make_adapter(in_ch: int, out_ch: int) -> nn.Conv2d:
    """1×1 convolution from student to teacher width; the identity when the
    widths agree, so that a student equal to its teacher has zero loss."""
    from compressai.layers import conv1x1  # (here: importing compressai first defers the plugin hook)

    adapter = conv1x1(in_ch, out_ch)
    if in_ch == out_ch:
        with torch.no_grad():
            adapter.weight.copy_(torch.eye(in_ch)[:, :, None, None])
            adapter.bias.zero_()
    return adapter


def spatial_attention(feature: Tensor, temperature: float = 1.0) -> Tensor:
    """Where a feature map carries energy: the channel-mean squared activation,
    raised to ``1 / temperature`` and scaled to average 1 over positions
    (attention transfer, Zagoruyko & Komodakis 2017). Higher temperatures
    flatten the map.

    Returns a ``(B, 1, H, W)`` map.
    """
    energy = feature.float().pow(2).mean(dim=1, keepdim=True).pow(1 / temperature)
    return energy / (energy.mean(dim=(2, 3), keepdim=True) + 1e-12)


class FeatureAlignmentLoss(nn.Module):
    r"""Attention-weighted feature alignment (paper: feature distillation).

    For each aligned stage :math:`s` with teacher feature :math:`T_s` and student
    feature :math:`S_s`, with :math:`A(\cdot)` the spatial attention of
    :func:`spatial_attention`:

    .. math::
        L_{feat} = \sum_s \frac{\operatorname{mean}\big(A(T_s)\,(\phi_s(S_s) - T_s)^2\big)}
                              {\operatorname{mean}(T_s^2)}
                   + \big\|A(\phi_s(S_s)) - A(T_s)\big\|_2^2 / HW

    The first term is an MSE, relative to the teacher feature's energy, that
    stresses the positions the teacher attends to; the second makes the student
    attend to the same positions.

    Args:
        student_channels: Width of each aligned student feature, by name.
        teacher_channels: Width of the teacher feature of the same name.
        temperature: Softmax temperature of the attention maps.
    """

    def __init__(
        self,
        student_channels: Mapping[str, int],
        teacher_channels: Mapping[str, int],
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict(
            {name: make_adapter(ch, teacher_channels[name]) for name, ch in student_channels.items()}
        )
        self.temperature = temperature

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        image_weights: Tensor | None = None,
    ) -> Tensor:
        """``image_weights``: each image's weight (``(B,)``, e.g. its λ relative to the
        levels' mean), all 1 if ``None``."""
        per_image = torch.zeros((), device=next(self.parameters()).device)
        for name, adapter in self.adapters.items():
            target = teacher[name].float().detach()
            mapped = adapter(student[name]).float()
            attention = spatial_attention(target, self.temperature)
            # relative to each image's feature energy: scale-free across stages, and
            # a mean over images, so that split batches (DDP) give the same loss
            energy = target.pow(2).mean(dim=(1, 2, 3)) + 1e-8
            weighted_mse = (attention * (mapped - target).pow(2)).mean(dim=(1, 2, 3)) / energy
            attention_gap = (
                (spatial_attention(mapped, self.temperature) - attention).pow(2).mean(dim=(1, 2, 3))
            )
            per_image = per_image + weighted_mse + attention_gap
        if image_weights is not None:
            per_image = per_image * image_weights
        return per_image.mean()


def channel_entropy_bits(likelihoods: Tensor) -> Tensor:
    """Mean information of each latent channel, in bits per element:
    ``-log2 p`` averaged over batch and positions. Returns shape ``(C,)``."""
    return -torch.log2(likelihoods.float().clamp_min(1e-9)).mean(dim=(0, 2, 3))


def standardize_channels(latent: Tensor, eps: float = 1e-5) -> Tensor:
    """Each channel of each image to zero mean and unit variance over its positions
    (``(B, C, N)`` in and out): what is left of a latent channel once its scale, which
    sets its rate, is taken away."""
    mean = latent.mean(dim=2, keepdim=True)
    return (latent - mean) / (latent.var(dim=2, keepdim=True, unbiased=False) + eps).sqrt()


class EntropyWeightedChannelLoss(nn.Module):
    r"""Entropy-weighted channel-level distillation of the latent (paper: entropy-weighted channel-level distillation).

    The student latent is mapped to the teacher's channel count by a 1×1
    adapter. For each channel :math:`c`, the spatial softmaxes (temperature
    :math:`\tau`) of teacher and student are compared by KL divergence, as in
    channel-wise distillation. The teacher's entropy :math:`H_c` in bits sets
    the channel weights :math:`w = C\,\mathrm{softmax}(H / T)` (mean 1):

    .. math::
        L_{ch} = \frac{\tau^2}{C} \sum_c w_c\,
                 \mathrm{KL}\big(\sigma(y^T_c/\tau)\,\|\,\sigma(\phi(y^S)_c/\tau)\big)

    ``form="spatial_kl"`` compares the latents as they are: a peaked teacher channel
    asks for a peaked, large student one, and the student pays for its scale in bits
    (its gradient on the encoder pulled against the rate's: ``zoo/README.md``, issue 40).
    ``"standardized_kl"`` compares them after :func:`standardize_channels`, on where each
    channel is high and low only, which leaves the scale to the rate-distortion term; it
    still pulled against the rate, less at q1 and as much at q3 and q6.

    Args:
        student_channels: Latent channels of the student.
        teacher_channels: Latent channels of the teacher.
        tau: Temperature of the spatial softmax.
        weight_temperature: Temperature of the entropy softmax, in bits; large
            values weight all channels alike.
        form: One of :data:`CHANNEL_FORMS`.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        tau: float = 1.0,
        weight_temperature: float = 1.0,
        form: str = "spatial_kl",
    ) -> None:
        super().__init__()
        if form not in CHANNEL_FORMS:
            raise ValueError(f"channel form must be one of {CHANNEL_FORMS}, got {form!r}")
        self.adapter = make_adapter(student_channels, teacher_channels)
        self.tau = tau
        self.weight_temperature = weight_temperature
        self.form = form

    def channel_weights(self, teacher_bits: Tensor) -> Tensor:
        """Weights of the teacher's channels from their entropy (mean 1)."""
        return teacher_bits.numel() * F.softmax(teacher_bits.float() / self.weight_temperature, dim=0)

    def forward(
        self,
        student_latent: Tensor,
        teacher_latent: Tensor,
        teacher_bits: Tensor,
        image_weights: Tensor | None = None,
    ) -> Tensor:
        """``teacher_bits``: per-channel entropy from :func:`channel_entropy_bits`,
        over the whole (global) batch; ``image_weights``: each image's weight (``(B,)``,
        e.g. its λ relative to the levels' mean), all 1 if ``None``."""
        mapped = self.adapter(student_latent).float().flatten(2)
        target = teacher_latent.float().detach().flatten(2)
        if self.form == "standardized_kl":
            mapped, target = standardize_channels(mapped), standardize_channels(target)
        log_p_teacher = F.log_softmax(target / self.tau, dim=2)
        log_p_student = F.log_softmax(mapped / self.tau, dim=2)
        kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=2)  # (B, C)
        per_image = (kl * self.channel_weights(teacher_bits.detach())).mean(dim=1)
        if image_weights is not None:
            per_image = per_image * image_weights
        return self.tau**2 * per_image.mean()


def per_image_distortion(
    x_hat: Tensor, target: Tensor, metric: str = "mse", ms_ssim_window: int = 11
) -> Tensor:
    """Each image's distortion in CompressAI's rate-distortion units: ``255² · MSE``
    (``metric="mse"``) or ``1 − MS-SSIM`` (``"ms-ssim"``, pytorch_msssim's, in float32, with
    ``ms_ssim_window`` taps: five scales need images larger than ``16 · (window − 1)`` pixels)."""
    if metric == "mse":
        return 255**2 * (x_hat - target).pow(2).mean(dim=(1, 2, 3))
    if metric != "ms-ssim":
        raise ValueError(f"metric must be mse or ms-ssim, got {metric!r}")
    from pytorch_msssim import ms_ssim

    with torch.autocast(target.device.type, enabled=False):  # its variances cancel: float32
        similarity = ms_ssim(
            x_hat.float(), target.float(), data_range=1.0, size_average=False, win_size=ms_ssim_window
        )
    return 1 - similarity


def reconstruction_distillation(
    x_hat: Tensor, teacher_x_hat: Tensor, lmbda: Tensor | float, metric: str = "mse", ms_ssim_window: int = 11
) -> Tensor:
    """The student's reconstruction against the teacher's, in the rate-distortion term's
    units: ``mean_i(λ_i · D(x̂^S_i, x̂^T_i))``, ``D`` the training metric's
    (:func:`per_image_distortion`): a decoder-side target beside the dominant
    rate-distortion term, as Allemand et al., arXiv 2509.10366, distil the reconstruction.
    Not in FEDS; the teacher's reconstruction is never trained."""
    distortion = per_image_distortion(x_hat.float(), teacher_x_hat.float().detach(), metric, ms_ssim_window)
    return (lmbda * distortion).mean()


def largest_ms_ssim_window(side: int) -> int:
    """The most taps (odd) an MS-SSIM window may have on images ``side`` pixels across: its
    five scales need ``side > 16 · (window − 1)`` (pytorch_msssim checks it)."""
    taps = (side - 1) // 16 + 1
    return taps - 1 + taps % 2


class PerImageRateDistortionLoss(nn.Module):
    """CompressAI's :class:`~compressai.losses.RateDistortionLoss` with one λ per image:
    ``mean_i(λ_i · D_i + bpp_i)``, the objective of a variable-rate codec trained on all its
    levels at once (Cui et al., CVPR 2021, Eq. 8); ``rd_per_image`` holds each image's term.
    ``D_i`` is ``255² · MSE_i`` (``metric="mse"``) or ``1 − MS-SSIM_i`` (``"ms-ssim"``,
    pytorch_msssim's, with ``ms_ssim_window`` taps: five scales need crops larger than
    ``16 · (window − 1)`` pixels, so 128 px crops take at most 7)."""

    def __init__(self, metric: str = "mse", ms_ssim_window: int = 11) -> None:
        super().__init__()
        if metric not in ("mse", "ms-ssim"):
            raise ValueError(f"metric must be mse or ms-ssim, got {metric!r}")
        self.metric = metric
        self.ms_ssim_window = ms_ssim_window

    def forward(self, output: Mapping, target: Tensor, lmbda: Tensor) -> dict[str, Tensor]:
        pixels_per_image = target.size(2) * target.size(3)
        bpp = sum(
            likelihoods.log().flatten(1).sum(dim=1) / (-math.log(2) * pixels_per_image)
            for likelihoods in output["likelihoods"].values()
        )
        mse = (output["x_hat"] - target).pow(2).mean(dim=(1, 2, 3))
        losses = {"bpp_loss": bpp.mean(), "mse_loss": mse.mean()}
        if self.metric == "ms-ssim":
            distortion = per_image_distortion(output["x_hat"], target, "ms-ssim", self.ms_ssim_window)
            losses["ms_ssim_loss"] = (1 - distortion).mean()
        else:
            distortion = 255**2 * mse
        rd = lmbda * distortion + bpp
        return {**losses, "loss": rd.mean(), "rd_per_image": rd}
