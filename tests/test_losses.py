import pytest
import torch

from compressai_feds.losses import (
    EntropyWeightedChannelLoss,
    FeatureAlignmentLoss,
    channel_entropy_bits,
    reconstruction_distillation,
    spatial_attention,
)


def test_spatial_attention_averages_one_and_follows_energy():
    feature = torch.zeros(2, 4, 8, 8)
    feature[:, :, 2, 3] = 5.0
    attention = spatial_attention(feature)
    assert attention.shape == (2, 1, 8, 8)
    assert torch.allclose(attention.mean(dim=(2, 3)), torch.ones(2, 1))
    assert attention[0, 0, 2, 3] == attention.max()


def test_feature_loss_is_zero_when_student_equals_teacher():
    loss = FeatureAlignmentLoss({"a": 8, "b": 8}, {"a": 8, "b": 8})
    features = {"a": torch.randn(2, 8, 8, 8), "b": torch.randn(2, 8, 4, 4)}
    assert loss(features, features).item() == pytest.approx(0.0, abs=1e-6)
    perturbed = {"a": features["a"] + 0.1, "b": features["b"]}
    assert loss(perturbed, features).item() > 1e-3


def test_feature_loss_stresses_where_the_teacher_has_energy():
    teacher = torch.zeros(1, 4, 8, 8)
    teacher[:, :, :4] = 3.0  # energy in the top half
    loss = FeatureAlignmentLoss({"a": 4}, {"a": 4})
    error_top, error_bottom = teacher.clone(), teacher.clone()
    error_top[:, :, 1, 1] += 1.0
    error_bottom[:, :, 6, 6] += 1.0
    assert loss({"a": error_top}, {"a": teacher}) > loss({"a": error_bottom}, {"a": teacher})


def test_feature_adapters_map_student_width_to_teacher_width():
    loss = FeatureAlignmentLoss({"a": 4}, {"a": 12})
    value = loss({"a": torch.randn(2, 4, 8, 8)}, {"a": torch.randn(2, 12, 8, 8)})
    value.backward()
    assert loss.adapters["a"].weight.shape == (12, 4, 1, 1)
    assert loss.adapters["a"].weight.grad is not None


def test_channel_entropy_is_minus_log2_likelihood_per_channel():
    likelihoods = torch.ones(2, 3, 4, 4)
    likelihoods[:, 1] = 0.5
    likelihoods[:, 2] = 0.25
    assert torch.allclose(channel_entropy_bits(likelihoods), torch.tensor([0.0, 1.0, 2.0]))


def test_channel_weights_are_normalised_and_favour_high_entropy():
    loss = EntropyWeightedChannelLoss(4, 4, weight_temperature=0.5)
    weights = loss.channel_weights(torch.tensor([0.1, 3.0, 1.0, 0.5]))
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights.argmax().item() == 1
    assert (weights[1] / weights[0]).item() == pytest.approx(
        torch.exp(torch.tensor(2.9 / 0.5)).item(), rel=1e-4
    )


def test_channel_loss_is_zero_when_student_equals_teacher():
    loss = EntropyWeightedChannelLoss(6, 6)
    latent = torch.randn(2, 6, 4, 4)
    assert loss(latent, latent, torch.rand(6)).item() == pytest.approx(0.0, abs=1e-6)


def test_channel_loss_counts_informative_channels_more():
    torch.manual_seed(0)
    loss = EntropyWeightedChannelLoss(2, 2)
    teacher = torch.randn(1, 2, 8, 8)
    bits = torch.tensor([4.0, 0.1])  # channel 0 carries the information
    noise = torch.randn(1, 1, 8, 8)
    wrong_informative, wrong_uninformative = teacher.clone(), teacher.clone()
    wrong_informative[:, 0:1] += noise
    wrong_uninformative[:, 1:2] += noise
    assert loss(wrong_informative, teacher, bits) > 5 * loss(wrong_uninformative, teacher, bits)


def test_channel_loss_maps_student_channels_and_never_updates_the_teacher():
    loss = EntropyWeightedChannelLoss(3, 5)
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 5, 4, 4, requires_grad=True)
    loss(student, teacher, torch.rand(5)).backward()
    assert student.grad is not None and loss.adapter.weight.grad is not None
    assert teacher.grad is None


@pytest.mark.parametrize("form", ["spatial_kl", "standardized_kl"])
def test_channel_loss_forms_are_zero_when_student_equals_teacher(form):
    latent = torch.randn(2, 6, 4, 4)
    assert EntropyWeightedChannelLoss(6, 6, form=form)(latent, latent, torch.rand(6)).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_standardized_channel_loss_leaves_the_student_s_scale_alone():
    """Scaled up or shifted, the student's latent has the same standardized loss, and the
    loss's gradient has no part along the latent (no pull on its size, which sets its
    rate); the spatial form's gradient does."""
    torch.manual_seed(0)
    teacher, student = 4 * torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    bits = torch.rand(3)
    standardized = EntropyWeightedChannelLoss(3, 3, form="standardized_kl")
    spatial = EntropyWeightedChannelLoss(3, 3, form="spatial_kl")
    assert standardized(5 * student + 2, teacher, bits).item() == pytest.approx(
        standardized(student, teacher, bits).item(), rel=1e-4
    )
    assert spatial(5 * student, teacher, bits).item() != pytest.approx(
        spatial(student, teacher, bits).item(), rel=0.1
    )

    def radial_cosine(loss: EntropyWeightedChannelLoss) -> float:
        latent = student.clone().requires_grad_(True)
        loss(latent, teacher, bits).backward()
        return torch.cosine_similarity(latent.grad.flatten(), student.flatten(), dim=0).item()

    assert abs(radial_cosine(standardized)) < 1e-3
    assert abs(radial_cosine(spatial)) > 0.05


def test_channel_loss_weighs_each_image_by_its_weight():
    torch.manual_seed(0)
    loss = EntropyWeightedChannelLoss(3, 3)
    teacher, student, bits = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.rand(3)
    each = [loss(student[i : i + 1], teacher[i : i + 1], bits).item() for i in range(2)]
    weighted = loss(student, teacher, bits, image_weights=torch.tensor([0.5, 3.0])).item()
    assert weighted == pytest.approx((0.5 * each[0] + 3.0 * each[1]) / 2, rel=1e-5)
    assert loss(student, teacher, bits, image_weights=torch.ones(2)).item() == pytest.approx(
        loss(student, teacher, bits).item()
    )


def test_channel_loss_refuses_an_unknown_form():
    with pytest.raises(ValueError, match="channel form"):
        EntropyWeightedChannelLoss(3, 3, form="l2")


def test_reconstruction_distillation_is_the_rate_distortion_term_s_distortion_against_the_teacher():
    x_hat, teacher = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8, requires_grad=True)
    assert reconstruction_distillation(teacher, teacher, 0.01).item() == 0.0
    lmbda = torch.tensor([0.0018, 0.0483])
    mse = (x_hat - teacher.detach()).pow(2).mean(dim=(1, 2, 3))
    assert reconstruction_distillation(x_hat, teacher, lmbda).item() == pytest.approx(
        (lmbda * 255**2 * mse).mean().item(), rel=1e-6
    )
    reconstruction_distillation(x_hat.requires_grad_(True), teacher, lmbda).backward()
    assert x_hat.grad is not None and teacher.grad is None


def test_reconstruction_distillation_for_ms_ssim_is_one_minus_ms_ssim_against_the_teacher():
    from pytorch_msssim import ms_ssim

    torch.manual_seed(0)
    teacher = torch.rand(2, 3, 64, 64)
    x_hat = (teacher + 0.1 * torch.randn_like(teacher)).clamp(0, 1)
    lmbda = torch.tensor([2.40, 60.50])
    assert reconstruction_distillation(teacher, teacher, lmbda, "ms-ssim", 3).item() == pytest.approx(
        0.0, abs=1e-6
    )
    similarity = ms_ssim(x_hat, teacher, data_range=1.0, size_average=False, win_size=3)
    assert reconstruction_distillation(x_hat, teacher, lmbda, "ms-ssim", 3).item() == pytest.approx(
        (lmbda * (1 - similarity)).mean().item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="metric must be mse or ms-ssim"):
        reconstruction_distillation(x_hat, teacher, lmbda, "psnr")


def test_feature_loss_does_not_depend_on_feature_scale():
    torch.manual_seed(0)
    loss = FeatureAlignmentLoss({"a": 4}, {"a": 4})
    student, teacher = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    assert loss({"a": 10 * student}, {"a": 10 * teacher}).item() == pytest.approx(
        loss({"a": student}, {"a": teacher}).item(), rel=1e-4
    )


def test_per_image_rate_distortion_loss_is_compressai_s_at_one_lambda():
    from compressai.losses import RateDistortionLoss

    from compressai_feds.losses import PerImageRateDistortionLoss

    torch.manual_seed(0)
    target = torch.rand(3, 3, 16, 24)
    output = {
        "x_hat": target + 0.05 * torch.randn_like(target),
        "likelihoods": {"y": torch.rand(3, 8, 4, 6) * 0.9 + 0.05, "z": torch.rand(3, 4, 1, 2) * 0.9 + 0.05},
    }
    ours = PerImageRateDistortionLoss()(output, target, torch.full((3,), 0.0130))
    theirs = RateDistortionLoss(lmbda=0.0130)(output, target)
    for key in ("loss", "bpp_loss", "mse_loss"):
        assert torch.allclose(ours[key], theirs[key]), key
    assert ours["rd_per_image"].shape == (3,) and torch.allclose(ours["rd_per_image"].mean(), ours["loss"])
