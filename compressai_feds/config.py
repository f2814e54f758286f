"""One place for every training setting: stage lengths, loss weights, learning rates.

Printed at the start of a run and saved as ``config.json`` beside every
checkpoint; ``--config config.json`` reads it back.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .losses import CHANNEL_FORMS, largest_ms_ssim_window
from .models import FEATURE_NAMES
from .quality import LAMBDAS, QUALITIES

__all__ = ["LR_SCHEDULES", "Stage", "TrainingConfig", "default_stages"]

LR_SCHEDULES = ("step", "cosine")


@dataclass
class Stage:
    """One FEDS training stage (paper: three-stage training strategy).

    Args:
        name: What the stage does, logged with every step (``feature_alignment``,
            ``channel_distillation``, ``reconstruction_distillation``, ``fine_tuning``).
        steps: Optimisation steps of the stage.
        lr: Learning rate of the main optimizer at the stage's start (see
            ``TrainingConfig.lr_schedule`` for how it decays).
        feature_weight: Weight of the feature alignment loss.
        channel_weight: Weight of the entropy-weighted channel loss.
        balance_qualities: Variable-rate training only: each image's RD loss is
            divided by the running mean of its quality's, so that every quality
            weighs alike in the loss (as in the geometric mean validation ranks
            by), instead of in proportion to its RD loss (q6's ~5x q1's). Not in
            the paper: pilot J of ``zoo/HISTORY.md``.
        quality_weights: With ``balance_qualities``: the weight of each balanced
            term, qualities 1 to 6 in order (``None``: all 1), to lean the objective
            towards the low rates, where the variable-rate models lag v1's
            fixed-rate ones. Not in the paper: pilot K of ``zoo/HISTORY.md``.
        reconstruction_weight: Weight of the student's reconstruction against the
            teacher's (:func:`~.losses.reconstruction_distillation`). Not in the paper:
            issue 40's decoder-side arm, the default's second stage.
        distillation_decay: The stage's distillation weights (feature, channel,
            reconstruction) fall linearly from their values at its start to 0 at its
            end, so that the stage after it starts from a student already weaned.
    """

    name: str
    steps: int
    lr: float
    feature_weight: float
    channel_weight: float
    balance_qualities: bool = False
    quality_weights: list[float] | None = None
    reconstruction_weight: float = 0.0
    distillation_decay: bool = False

    def distillation_weights(self, progress: float) -> tuple[float, float, float]:
        """The feature, channel and reconstruction weights ``progress`` (0 to 1) into
        the stage (``distillation_decay``)."""
        scale = 1.0 - progress if self.distillation_decay else 1.0
        return self.feature_weight * scale, self.channel_weight * scale, self.reconstruction_weight * scale

    def __post_init__(self) -> None:
        if min(self.feature_weight, self.channel_weight, self.reconstruction_weight) < 0:
            raise ValueError(f"stage {self.name}: loss weights must be >= 0")
        if self.quality_weights is None:
            return
        if not self.balance_qualities:
            raise ValueError(f"stage {self.name}: quality_weights weigh balanced terms (balance_qualities)")
        if len(self.quality_weights) != len(QUALITIES) or min(self.quality_weights) <= 0:
            raise ValueError(
                f"stage {self.name}: quality_weights must be {len(QUALITIES)} positive numbers, "
                f"got {self.quality_weights}"
            )


def default_stages() -> list[Stage]:
    """FEDS's three stages (paper: feature alignment, then a distillation stage, then
    fine-tuning on rate-distortion alone at a lower learning rate), at the paper-like lengths,
    with the loss weights of the best arm issue 40's paired pilots measured
    (``zoo/README.md``, "FEDS"): feature alignment at 0.3 through the first two stages, and in
    the second the teacher's reconstruction at 0.5 (:func:`~.losses.reconstruction_distillation`)
    in place of the entropy-weighted channel term, which raised the student's rate."""
    return [
        Stage("feature_alignment", steps=100_000, lr=1e-4, feature_weight=0.3, channel_weight=0.0),
        Stage(
            "reconstruction_distillation",
            steps=300_000,
            lr=1e-4,
            feature_weight=0.3,
            channel_weight=0.0,
            reconstruction_weight=0.5,
        ),
        Stage("fine_tuning", steps=100_000, lr=1e-5, feature_weight=0.0, channel_weight=0.0),
    ]


@dataclass
class TrainingConfig:
    """Everything a training run depends on besides its data.

    ``data`` is the folder of training photographs, ``val`` a folder of a few
    full images for validation. ``student`` is the model trained (a zoo name or a checkpoint to start
    from), ``teacher`` the model distilled from (a zoo name, trained weights
    from the zoo at ``quality``, or a checkpoint; ``None`` trains without
    distillation, on rate-distortion alone, with the same stage schedule).

    ``restart_warmup``: when a run continues mid-schedule from weights alone
    (``start_step``, fresh optimizers), its learning rate ramps up linearly
    over this many steps. Adam's first steps, without moment estimates, move
    every weight by about the full learning rate: restarted that way, the
    teacher's validation RD loss jumped from 1.259 to 1.352 within 2 steps.
    ``warmup``: the same linear ramp over a run's first steps from step 0, for
    fine-tuning trained weights (``student`` a checkpoint) with fresh optimizers.
    ``adapter_warmup``: for this many steps after the distillation adapters were
    made afresh (a run's first step, or a continue from weights alone), the
    distillation losses reach the adapters only: the student's features enter
    them detached. A student fine-tuned from trained weights starts with random
    adapters and its channel term on: at weight 10 its training rate rose from
    0.40 to 0.69 bpp in 300 steps at unchanged MSE (``zoo/sweeps/adapter-warmup``).
    ``qualities``: train a variable-rate student (``student_args``
    ``{"variable_rate": true}``) on these levels, each image of a batch at one drawn at
    random, with its λ (``quality`` and ``lmbda`` then unused); a teacher must be
    variable-rate too and runs at the same quality. Validation runs at each of
    ``val_qualities`` (default: ``qualities``) and ranks checkpoints by the geometric mean
    of their RD losses. ``ema_decay``: keep an exponential moving average of the
    student's weights, validated beside them as ``val_ema`` (``best`` keeps the better
    of the two; in the pilots the average was 4% better at a high learning rate and 2%
    worse after the last decay).
    ``lr_schedule``: how the learning rate decays within each stage (:meth:`lr_at`).
    ``clip_max_norm``: the student's gradients are scaled to at most this global norm
    (0: not clipped); the norm before clipping is logged as ``grad_norm``, and a step
    whose norm is not finite is skipped.
    ``spike_factor``: a step whose loss exceeds this multiple of the running mean of the
    stage's losses so far is skipped too (0: never): a reconstruction far off but finite.
    Before this check, teacher-vr's weights were garbage at step 8,041 (its training loss
    was normal to step 8,000), its running RD loss of q5 at 9.8e7 (2.7 at step 9,000).
    ``fast``: channels_last, and bf16 autocast where the device computes bf16 natively
    (:func:`~.trainer.native_bfloat16`).
    ``ms_ssim_window``: taps of the MS-SSIM window in training (metric ``ms-ssim``): its five
    scales need crops larger than ``16 · (window − 1)``, so 128 px crops take at most 7, 256 px
    crops CompressAI's 11. Validation, on whole images, uses 11 where they are large enough.
    ``channel_form``: how the channel term compares the latents
    (:class:`~.losses.EntropyWeightedChannelLoss`). ``channel_follows_lambda``: in
    variable-rate training, each image's channel term is weighted by its λ over the mean λ
    of the levels (q1 0.11, q3 0.41, q6 2.95), as its rate-distortion term grows with λ:
    at one weight for all, the channel term's gradient on ``g_a`` was many times the
    rate-distortion term's at q1 (``zoo/README.md``, issue 40). ``feature_follows_lambda``:
    the same for the feature alignment term, whose gradient was 21x the rate-distortion
    term's at q1 and 1.9x at q6 at the end of the v2 student's training.
    """

    data: str = ""
    val: str | None = None
    student: str = "feds-student"
    student_args: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    teacher_architecture: str = "feds-teacher"
    quality: int = 3
    metric: str = "mse"
    lmbda: float | None = None
    stages: list[Stage] = field(default_factory=default_stages)
    batch_size: int = 8
    crop_size: int = 256
    aux_lr: float = 1e-3
    clip_max_norm: float = 1.0
    spike_factor: float = 10.0
    lr_decay_at: float = 0.9
    lr_schedule: str = "step"
    fast: bool = True
    noise_quantization: bool = True
    feature_names: list[str] = field(default_factory=lambda: [n for n in FEATURE_NAMES if n != "y"])
    attention_temperature: float = 1.0
    channel_tau: float = 1.0
    entropy_temperature: float = 1.0
    channel_form: str = "spatial_kl"
    channel_follows_lambda: bool = False
    feature_follows_lambda: bool = False
    ms_ssim_window: int = 11
    seed: int = 0
    workers: int = 2
    cache_images: bool = False
    log_every: int = 10
    checkpoint_every: int = 200
    val_every: int = 1000
    restart_warmup: int = 0
    warmup: int = 0
    adapter_warmup: int = 0
    qualities: list[int] = field(default_factory=list)
    val_qualities: list[int] = field(default_factory=list)
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        self.stages = [Stage(**s) if isinstance(s, dict) else s for s in self.stages]
        if self.metric not in LAMBDAS:
            raise ValueError(f"metric must be one of {sorted(LAMBDAS)}, got {self.metric!r}")
        if self.lmbda is None:
            if self.quality not in LAMBDAS[self.metric]:
                raise ValueError(f"quality must be one of {list(QUALITIES)}, got {self.quality}")
            self.lmbda = LAMBDAS[self.metric][self.quality]
        unknown = set(self.feature_names) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown feature names {sorted(unknown)}; choose from {FEATURE_NAMES}")
        if not self.stages or any(s.steps < 0 for s in self.stages):
            raise ValueError("stages must be a non-empty list with non-negative steps")
        for name in ("qualities", "val_qualities"):
            unknown = set(getattr(self, name)) - set(QUALITIES)
            if unknown:
                raise ValueError(f"{name} must be levels of {list(QUALITIES)}, got {sorted(unknown)}")
        if self.channel_form not in CHANNEL_FORMS:
            raise ValueError(f"channel_form must be one of {CHANNEL_FORMS}, got {self.channel_form!r}")
        for name in ("channel_follows_lambda", "feature_follows_lambda"):
            if getattr(self, name) and not self.qualities:
                raise ValueError(f"{name} weighs the images of variable-rate training (qualities)")
        if self.ms_ssim_window < 3 or self.ms_ssim_window % 2 == 0:
            raise ValueError(f"ms_ssim_window must be an odd number of taps >= 3, got {self.ms_ssim_window}")
        largest = largest_ms_ssim_window(self.crop_size)
        if self.metric == "ms-ssim" and self.ms_ssim_window > largest:
            raise ValueError(
                f"MS-SSIM's five scales need crops larger than 16 x (window - 1) = "
                f"{16 * (self.ms_ssim_window - 1)} px: {self.crop_size} px crops take a window of at most "
                f"{largest} taps (ms_ssim_window)"
            )
        if self.val_qualities and not self.qualities:
            raise ValueError("val_qualities needs variable-rate training (qualities)")
        if any(stage.balance_qualities for stage in self.stages) and not self.qualities:
            raise ValueError("balance_qualities needs variable-rate training (qualities)")
        self.val_qualities = self.val_qualities or list(self.qualities)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.spike_factor < 0 or 0 < self.spike_factor <= 1:
            raise ValueError(f"spike_factor must be 0 (off) or above 1, got {self.spike_factor}")
        for name in ("restart_warmup", "warmup", "adapter_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[Stage, float]:
        """The stage that optimisation step ``step`` belongs to, and how far into
        it the step is (0 to 1)."""
        start = 0
        for stage in self.stages:
            if step < start + stage.steps:
                return stage, (step - start) / stage.steps
            start += stage.steps
        return self.stages[-1], 1.0

    def lr_at(self, step: int) -> float:
        """The main optimizer's learning rate at ``step``: each stage's ``lr``,
        divided by 10 from ``lr_decay_at`` of the stage on (``"step"``), or
        decaying along a half cosine to 0 at the stage's end (``"cosine"``,
        Loshchilov & Hutter, SGDR, ICLR 2017, without restarts)."""
        stage, progress = self.stage_at(step)
        if self.lr_schedule == "cosine":
            return stage.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return stage.lr * (0.1 if progress >= self.lr_decay_at else 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        return cls(**values)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainingConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
