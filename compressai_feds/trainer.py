"""The three-stage FEDS trainer (paper: training strategy), from one CPU to many GPUs.

One :class:`DistillationTrainer` runs the stages of a :class:`~.config.TrainingConfig`:
feature alignment (rate-distortion + feature loss), a distillation stage (by default the
teacher's reconstruction as a target, :func:`~.config.default_stages`; the paper's
entropy-weighted channel loss where a stage weighs it), fine-tuning (rate-distortion
alone). Without a teacher it trains on rate-distortion alone with the same schedule:
teacher training, and the no-distillation baseline.

It never loses work: checkpoints are written atomically every
``checkpoint_every`` steps and on SIGTERM/SIGINT, and ``resume`` continues bit
for bit. Under ``torchrun`` it runs DistributedDataParallel (gloo on CPU, nccl
on GPU); rank 0 logs, validates and checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.losses import RateDistortionLoss
from compressai.optimizers import net_aux_optimizer
from compressai.registry import MODELS
from pytorch_msssim import ms_ssim
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .bdrate import ms_ssim_db
from .checkpoint_io import architecture_name, averaged_weights, load_codec
from .config import Stage, TrainingConfig
from .data import ImageCrops, StreamSampler
from .files import write_atomically
from .images import find_images, load_rgb, psnr
from .losses import (
    EntropyWeightedChannelLoss,
    FeatureAlignmentLoss,
    PerImageRateDistortionLoss,
    channel_entropy_bits,
    largest_ms_ssim_window,
    reconstruction_distillation,
)
from .models import FEDSCodec
from .plots import plot_metrics
from .quality import LAMBDAS

__all__ = ["DistillationObjective", "DistillationTrainer"]

CHECKPOINT = "checkpoint.pth.tar"
BEST = "best.pth.tar"
METRICS = "metrics.jsonl"
#: Steps in a row that may be skipped (a loss or gradient not finite, a loss spike) before a run is stopped.
MAX_SKIPPED_IN_A_ROW = 10
#: Steps of a stage before its running loss judges loss spikes (``TrainingConfig.spike_factor``).
SPIKE_WARMUP = 100


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (a GPU, or a CPU with AVX-512 BF16 or
    AMX). Elsewhere bf16 autocast is emulated: on a Xeon with AVX-512 but no BF16 a student
    step took 3.1× longer under it than in float32 (channels_last both)."""
    if device.type != "cpu":
        return True
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def _build_model(spec: str, architecture_args: dict[str, Any]) -> nn.Module:
    """An architecture, or the weights of a checkpoint (``{"variable_rate": true}`` or
    ``{"auxiliary_transform": true}`` in ``architecture_args`` adds gain units or the
    auxiliary transform to weights without them)."""
    if Path(spec).is_file():
        added = {k: bool(architecture_args.get(k)) for k in ("variable_rate", "auxiliary_transform")}
        return load_codec(spec, **added)
    if spec not in MODELS:
        raise ValueError(f"{spec!r} is neither a checkpoint file nor a registered architecture")
    return MODELS[spec](**architecture_args)


def _build_teacher(config: TrainingConfig) -> FEDSCodec | None:
    if config.teacher is None:
        return None
    if Path(config.teacher).is_file():
        teacher = load_codec(config.teacher)
    else:
        from compressai.zoo import image_models

        if config.teacher not in image_models:
            raise ValueError(f"teacher {config.teacher!r} is neither a checkpoint file nor a zoo model")
        teacher = image_models[config.teacher](quality=config.quality, metric=config.metric, pretrained=True)
    if not isinstance(teacher, FEDSCodec):
        raise ValueError(f"the teacher must be a FEDS codec, got {type(teacher).__name__}")
    if bool(config.qualities) != teacher.variable_rate:
        kind = "variable-rate" if config.qualities else "fixed-rate"
        raise ValueError(f"a {kind} student needs a {kind} teacher")
    return teacher.eval().requires_grad_(False)


class DistillationObjective(nn.Module):
    """The student and the training-only adapters, with every loss term.

    One module, so that one (DDP-wrapped) forward computes the whole loss:
    ``loss = RD + feature_weight * L_feat + channel_weight * L_ch
    + reconstruction_weight * L_rec`` (+ the orthogonality loss of an auxiliary
    transform) and the auxiliary loss of the entropy bottleneck, which only reaches
    its quantiles.
    While the teacher runs for the feature term alone (channel weight 0), ``L_ch``
    trains its adapter on the student's latent detached, so that the channel term
    starts with a trained adapter: switched on with a random one at step 6,000,
    it raised the FEDS students' training rate from 0.905 to 1.09-1.10 bpp within
    500 steps (``zoo/HISTORY.md``, Part 2 progress).
    A variable-rate student runs each image at its quality, with its λ.
    """

    def __init__(self, student: nn.Module, config: TrainingConfig, teacher: FEDSCodec | None) -> None:
        super().__init__()
        self.student = student
        if config.qualities and not getattr(student, "variable_rate", False):
            raise ValueError('variable-rate training (qualities) needs student_args {"variable_rate": true}')
        self.rate_distortion = RateDistortionLoss(lmbda=config.lmbda, metric=config.metric)
        self.per_image_rate_distortion = PerImageRateDistortionLoss(config.metric, config.ms_ssim_window)
        self.metric, self.ms_ssim_window = config.metric, config.ms_ssim_window
        self.register_buffer(
            "lambdas", torch.tensor([0.0, *LAMBDAS[config.metric].values()]), persistent=False
        )  # indexed by quality
        if config.qualities:
            # running mean of each quality's RD loss (indexed by quality; 0: not seen yet), for the
            # stages that balance qualities (Stage.balance_qualities); checkpointed with the adapters
            self.register_buffer("quality_rd", torch.zeros_like(self.lambdas))
        self.feature_loss: FeatureAlignmentLoss | None = None
        self.channel_loss: EntropyWeightedChannelLoss | None = None
        if teacher is not None:
            if not isinstance(student, FEDSCodec):
                raise ValueError(f"distillation needs a FEDS student, got {type(student).__name__}")
            student_channels, teacher_channels = student.feature_channels(), teacher.feature_channels()
            self.feature_loss = FeatureAlignmentLoss(
                {name: student_channels[name] for name in config.feature_names},
                teacher_channels,
                temperature=config.attention_temperature,
            )
            self.channel_loss = EntropyWeightedChannelLoss(
                student.M,
                teacher.M,
                tau=config.channel_tau,
                weight_temperature=config.entropy_temperature,
                form=config.channel_form,
            )
        self.channel_follows_lambda = config.channel_follows_lambda
        self.feature_follows_lambda = config.feature_follows_lambda
        self.mean_lambda = sum(LAMBDAS[config.metric].values()) / len(LAMBDAS[config.metric])

    def forward(
        self,
        x: Tensor,
        teacher_out: dict[str, Any] | None = None,
        teacher_bits: Tensor | None = None,
        feature_weight: float = 0.0,
        channel_weight: float = 0.0,
        adapters_only: bool = False,
        quality: Tensor | None = None,
        balance_qualities: bool = False,
        quality_weights: Tensor | None = None,
        reconstruction_weight: float = 0.0,
    ) -> dict[str, Tensor]:
        """``adapters_only``: the distillation terms see the student's features
        detached, so that they train their adapters and leave the student alone.
        ``quality``: the integer level of each image (variable-rate training);
        ``balance_qualities``, ``quality_weights`` (indexed by quality): see
        :class:`~.config.Stage`."""
        distill = teacher_out is not None and (
            feature_weight > 0 or channel_weight > 0 or reconstruction_weight > 0
        )
        rate_args = {} if quality is None else {"quality": quality}
        out = self.student(x, return_features=True, **rate_args) if distill else self.student(x, **rate_args)
        features = out.get("features", {})
        if adapters_only:
            features = {name: feature.detach() for name, feature in features.items()}
        reconstruction = {"x_hat": out["x_hat"].float(), "likelihoods": out["likelihoods"]}
        lmbda = self.rate_distortion.lmbda if quality is None else self.lambdas[quality]
        if quality is None:
            losses = self.rate_distortion(reconstruction, x.float())
        else:
            losses = self.per_image_rate_distortion(reconstruction, x.float(), lmbda)
            rd = losses.pop("rd_per_image")
            if self.training:
                self._track_quality_rd(rd.detach(), quality)
            if balance_qualities:  # each image's term over its quality's mean, in the batch's units
                scale = self.quality_rd[quality]
                weight = 1.0 if quality_weights is None else quality_weights[quality]
                losses["loss"] = (weight * rd / scale).mean() * scale.mean()
        num_pixels = x.size(0) * x.size(2) * x.size(3)
        for name, likelihoods in out["likelihoods"].items():  # logged: a latent carrying 0 bits is dead
            losses[f"bpp_{name}"] = likelihoods.detach().log2().sum().neg() / num_pixels
        total = losses["loss"]
        relative_lambda = lmbda / self.mean_lambda if quality is not None else None
        if distill and feature_weight > 0:
            image_weights = relative_lambda if self.feature_follows_lambda else None
            losses["feature_loss"] = self.feature_loss(features, teacher_out["features"], image_weights)
            total = total + feature_weight * losses["feature_loss"]
        if distill:
            adapter_ahead = channel_weight == 0  # the adapter learns before its stage, the student not
            y_student = features["y"].detach() if adapter_ahead else features["y"]
            image_weights = relative_lambda if self.channel_follows_lambda else None
            losses["channel_loss"] = self.channel_loss(
                y_student, teacher_out["features"]["y"], teacher_bits, image_weights
            )
            total = total + (1.0 if adapter_ahead else channel_weight) * losses["channel_loss"]
        if distill and reconstruction_weight > 0 and not adapters_only:
            losses["reconstruction_loss"] = reconstruction_distillation(
                out["x_hat"], teacher_out["x_hat"], lmbda, self.metric, self.ms_ssim_window
            )
            total = total + reconstruction_weight * losses["reconstruction_loss"]
        orthogonality = self.student.orthogonality_loss()
        if orthogonality is not None:
            losses["orthogonality_loss"] = orthogonality
            total = total + orthogonality
        losses["loss"] = total
        losses["aux_loss"] = self.student.aux_loss()
        return losses

    def _track_quality_rd(
        self, rd: Tensor, quality: Tensor, decay: float = 0.99, outlier: float = 10.0
    ) -> None:
        """Folds the batch's mean RD loss of each quality into ``quality_rd``, each mean at
        most ``outlier`` times the running one: a reconstruction far off (a step the
        trainer then skips) must not rescale its quality for hundreds of steps."""
        if not torch.isfinite(rd).all():
            return
        sums = torch.zeros_like(self.quality_rd).index_add_(0, quality, rd.float())
        counts = torch.zeros_like(self.quality_rd).index_add_(
            0, quality, torch.ones_like(rd, dtype=torch.float)
        )
        seen = counts > 0
        means, previous = sums[seen] / counts[seen], self.quality_rd[seen]
        means = torch.where(previous > 0, torch.minimum(means, outlier * previous), means)
        self.quality_rd[seen] = torch.where(previous > 0, decay * previous + (1 - decay) * means, means)

    def adapters_state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("student.")}


@torch.no_grad()
def evaluate(
    net: nn.Module, paths: list[Path], lmbda: float, metric: str, quality: float | None = None
) -> dict[str, float]:
    """Validation on full images: entropy-estimated bpp, PSNR, and the RD loss
    ``λ·D + bpp`` the checkpoints are ranked by; a variable-rate codec at ``quality``.
    For ``ms-ssim``, also MS-SSIM and MS-SSIM in dB (``−10·log10(1 − MS-SSIM)``), with
    the standard 11-tap window where the image is large enough (else the largest odd one
    its five scales allow)."""
    was_training = net.training
    net.eval()
    totals: dict[str, float] = defaultdict(float)
    for path in paths:
        x = load_rgb(path)[None].float() / 255
        out = net(x) if quality is None else net(x, quality=quality)
        num_pixels = x.size(2) * x.size(3)
        bpp = sum(-torch.log2(lik).sum().item() for lik in out["likelihoods"].values()) / num_pixels
        x_hat = out["x_hat"].clamp(0, 1)
        mse = torch.mean((x_hat - x) ** 2).item()
        if metric == "ms-ssim":
            window = min(11, largest_ms_ssim_window(min(x.shape[-2:])))
            similarity = ms_ssim(x_hat, x, data_range=1.0, win_size=window).item()
            totals["ms_ssim"] += similarity
            totals["ms_ssim_db"] += ms_ssim_db(min(similarity, 1 - 1e-10))
            distortion = 1 - similarity
        else:
            distortion = 255**2 * mse
        totals["bpp"] += bpp
        totals["psnr"] += psnr(mse)
        totals["rd_loss"] += lmbda * distortion + bpp
    net.train(was_training)
    return {k: v / len(paths) for k, v in totals.items()}


def _set_noise_quantization(module: nn.Module, enabled: bool) -> None:
    """Entropy models in eval mode round instead of adding uniform noise."""
    for m in module.modules():
        if isinstance(m, (EntropyBottleneck, GaussianConditional)):
            m.train(enabled)


class DistillationTrainer:
    """Runs the FEDS stages of ``config``, writing everything to ``out_dir``.

    Args:
        config: The run's settings (saved beside every checkpoint). When
            resuming, ``None`` keeps the checkpoint's; a config given replaces
            it (e.g. longer stages), the state (weights, optimizers, step) is
            the checkpoint's.
        out_dir: Checkpoints (``checkpoint.pth.tar``: everything to resume;
            ``best.pth.tar``: the student with the best validation RD loss),
            ``config.json``, ``metrics.jsonl`` and ``training.png``.
        resume: Continue from ``out_dir/checkpoint.pth.tar``.
        from_average: With ``resume``: continue from the checkpoint's moving average of
            the weights (``ema_decay``) with fresh optimizers, as a restart from weights
            alone (``config.restart_warmup``), the running losses measured afresh: after
            a run diverged, whose average still holds the weights from before.
        start_step: Without ``resume``: the schedule position to start at
            (stage, learning rate, data stream), for continuing a run from its
            weights alone (``config.student`` a checkpoint) with fresh
            optimizers.
        progress: Show a progress bar (rank 0).
    """

    def __init__(
        self,
        config: TrainingConfig | None,
        out_dir: str | Path,
        resume: bool = False,
        from_average: bool = False,
        start_step: int = 0,
        progress: bool = True,
    ):
        self.out_dir = Path(out_dir)
        checkpoint = None
        if resume:
            path = self.out_dir / CHECKPOINT
            if not path.is_file():
                raise FileNotFoundError(f"nothing to resume: {path} does not exist")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            config = config or TrainingConfig.from_dict(checkpoint["config"])
        elif config is None:
            raise ValueError("a config is needed unless resuming")
        if start_step and resume:
            raise ValueError("start_step is for runs that do not resume from a checkpoint")
        if from_average and (checkpoint is None or "ema" not in checkpoint):
            raise ValueError(
                "from_average continues a run from the moving average its checkpoint keeps (ema_decay)"
            )
        self.config = config
        self.progress = progress
        self.rank, self.world_size, self.device = _init_distributed()
        self.is_main = self.rank == 0

        torch.manual_seed(config.seed)
        random.seed(config.seed)
        student = _build_model(config.student, config.student_args)
        self.teacher = _build_teacher(config)
        self.objective = DistillationObjective(student, config, self.teacher).to(self.device)
        memory_format = torch.channels_last if config.fast else torch.contiguous_format
        self.objective.to(memory_format=memory_format)
        if self.teacher is not None:
            self.teacher.to(self.device, memory_format=memory_format)
        self.optimizers = net_aux_optimizer(
            self.objective,
            {
                "net": {"type": "Adam", "lr": config.stages[0].lr},
                "aux": {"type": "Adam", "lr": config.aux_lr},
            },
        )
        self.restarted_at: int | None = None  # where fresh optimizers took over mid-schedule
        base_lr = config.stages[0].lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizers["net"], lambda step: self.lr_at(step) / base_lr
        )
        self.ema: AveragedModel | None = None
        if config.ema_decay:
            self.ema = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
        # seeded again: runs that differ only in their teacher and adapters (which draw random
        # weights) then draw the same qualities and quantisation noise (paired pilots)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.step = 0
        self.skipped_in_a_row = 0
        self.running_loss: dict[str, Any] = {}  # the current stage's mean loss (_spike)
        self.best_val_loss = math.inf
        if checkpoint is not None:
            self._restore(checkpoint, from_average)
        elif start_step:
            self._start_at(start_step)
        self.model: nn.Module = self.objective
        if self.world_size > 1:
            self.model = DistributedDataParallel(self.objective, find_unused_parameters=True)
        self._stop_signal: int | None = None

    @property
    def student(self) -> nn.Module:
        return self.objective.student

    @property
    def adapters_made_at(self) -> int:
        """The step the adapters began training from scratch: with the optimizers,
        at step 0 or where a run restarted from weights alone."""
        return self.restarted_at or 0

    def lr_at(self, step: int) -> float:
        """The schedule's learning rate at ``step``, ramped up linearly over the
        first ``config.warmup`` steps and, after a restart from weights alone,
        over ``config.restart_warmup`` steps from the restart."""
        lr = self.config.lr_at(step)
        if self.config.warmup:
            lr *= min(1.0, (step + 1) / self.config.warmup)
        if self.restarted_at is not None and self.config.restart_warmup:
            lr *= min(1.0, (step - self.restarted_at + 1) / self.config.restart_warmup)
        return lr

    # -- checkpoints ---------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "state_dict": self.student.state_dict(),
            "architecture": architecture_name(self.student),
            "adapters": self.objective.adapters_state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "stage": self.config.stage_at(self.step)[0].name,
            "best_val_loss": self.best_val_loss,
            "running_loss": self.running_loss,
            "restarted_at": self.restarted_at,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "config": self.config.to_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def _restore(self, checkpoint: dict[str, Any], from_average: bool = False) -> None:
        self.student.load_state_dict(
            averaged_weights(checkpoint["ema"]) if from_average else checkpoint["state_dict"]
        )
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        elif self.ema is not None:  # EMA switched on for a resumed run: it starts from here
            self.ema.update_parameters(self.student)
        self.objective.load_state_dict({**self.objective.state_dict(), **checkpoint["adapters"]})
        if not from_average:
            for key, optimizer in self.optimizers.items():
                optimizer.load_state_dict(checkpoint["optimizers"][key])
            self.running_loss = checkpoint.get("running_loss", {})
        elif hasattr(self.objective, "quality_rd"):
            self.objective.quality_rd.zero_()  # re-measured from the first batch
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.step = checkpoint["step"]
        self.restarted_at = self.step if from_average else checkpoint.get("restarted_at")
        # the learning rate of this config's schedule (a resumed run may have changed it), as
        # LambdaLR computes it: else the first step would run at the checkpoint's
        for group, base_lr, factor in zip(
            self.optimizers["net"].param_groups,
            self.scheduler.base_lrs,
            self.scheduler.lr_lambdas,
            strict=True,
        ):
            group["lr"] = base_lr * factor(self.step)
        self.best_val_loss = checkpoint["best_val_loss"]
        torch.set_rng_state(checkpoint["rng"]["torch"])
        random.setstate(checkpoint["rng"]["python"])
        if self.is_main:
            _truncate_metrics(self.out_dir / METRICS, self.step)

    def _start_at(self, step: int) -> None:
        """Positions the schedule at ``step``, as if the steps before it had run,
        with the learning rate warming up again (``config.restart_warmup``)."""
        self.restarted_at = step
        self._position_schedule(step)
        if self.is_main:
            _truncate_metrics(self.out_dir / METRICS, step)

    def _position_schedule(self, step: int) -> None:
        self.step = step
        self.scheduler.last_epoch = step
        for group in self.optimizers["net"].param_groups:
            group["lr"] = self.lr_at(step)

    def save_checkpoint(self) -> None:
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            config = json.dumps(self.config.to_dict(), indent=2) + "\n"
            write_atomically(self.out_dir / "config.json", lambda tmp: tmp.write_text(config))
            state = self._state()
            write_atomically(self.out_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))
        if self.world_size > 1:
            dist.barrier()

    # -- training ------------------------------------------------------------

    def _loader(self) -> DataLoader:
        config = self.config
        dataset = ImageCrops(config.data, config.crop_size, cache=config.cache_images)
        sampler = StreamSampler(
            len(dataset), config.batch_size, config.seed, self.step, self.rank, self.world_size
        )
        return DataLoader(
            dataset,
            batch_size=config.batch_size // self.world_size,
            sampler=sampler,
            num_workers=config.workers,
            # its own generator: creating the iterator must not draw from the
            # global RNG, whose state the checkpoints restore
            generator=torch.Generator().manual_seed(config.seed),
        )

    def _train_step(self, x: Tensor) -> dict[str, float]:
        config = self.config
        stage, progress = config.stage_at(self.step)
        feature_weight, channel_weight, reconstruction_weight = stage.distillation_weights(progress)
        x = x.to(self.device).contiguous(
            memory_format=torch.channels_last if config.fast else torch.contiguous_format
        )
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=config.fast and native_bfloat16(self.device)
        )
        rate_args = {}
        if config.qualities:  # one level per image, drawn from the global RNG (checkpointed)
            choices = torch.tensor(config.qualities)
            rate_args["quality"] = choices[torch.randint(len(choices), (x.size(0),))].to(self.device)
        teacher_out, teacher_bits = None, None
        if self.teacher is not None and (
            feature_weight > 0 or channel_weight > 0 or reconstruction_weight > 0
        ):
            with torch.no_grad(), autocast:
                teacher_out = self.teacher(x, return_features=True, **rate_args)
            teacher_bits = channel_entropy_bits(teacher_out["likelihoods"]["y"])
            if self.world_size > 1:  # entropy of the global batch, as in one process
                dist.all_reduce(teacher_bits)
                teacher_bits /= self.world_size
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        with autocast:
            adapters_only = self.step < self.adapters_made_at + config.adapter_warmup
            losses = self.model(
                x,
                teacher_out,
                teacher_bits,
                feature_weight,
                channel_weight,
                adapters_only,
                balance_qualities=stage.balance_qualities,
                quality_weights=self._quality_weights(stage),
                reconstruction_weight=reconstruction_weight,
                **rate_args,
            )
        if not self._finite(losses["loss"]):
            return self._skip(stage.name, f"loss {losses['loss'].item()}")
        global_loss = self._global_loss(losses["loss"].detach())
        spike = self._spike(global_loss, stage.name)
        if spike:
            return self._skip(stage.name, spike)
        (losses["loss"] + losses["aux_loss"]).backward()
        # the norm before clipping is logged: pilot G's climbed for ~50 steps before it diverged
        net_params = [p for group in self.optimizers["net"].param_groups for p in group["params"]]
        max_norm = config.clip_max_norm if config.clip_max_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(net_params, max_norm)
        if not self._finite(grad_norm):
            return self._skip(stage.name, f"gradient norm {grad_norm.item()}")
        self.optimizers["net"].step()
        self.optimizers["aux"].step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.student)
        self._track_loss(global_loss, stage.name)
        self.step += 1
        self.skipped_in_a_row = 0
        return {**{k: v.item() for k, v in losses.items()}, "grad_norm": grad_norm.item()}

    def _finite(self, value: Tensor) -> bool:
        """Whether ``value`` is finite on every rank (so that all skip together)."""
        finite = torch.isfinite(value.detach()).all().float().reshape(1)
        if self.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def _global_loss(self, loss: Tensor) -> float:
        """The batch's loss over all ranks (the same decision on each)."""
        loss = loss.float().reshape(1).clone()
        if self.world_size > 1:
            dist.all_reduce(loss)
            loss /= self.world_size
        return loss.item()

    def _quality_weights(self, stage: Stage) -> Tensor | None:
        """The stage's ``quality_weights``, indexed by quality (as ``lambdas``)."""
        if stage.quality_weights is None:
            return None
        return torch.tensor([0.0, *stage.quality_weights], device=self.device)

    def _spike(self, value: float, stage: str) -> str | None:
        """Why the step is a loss spike (``config.spike_factor``), or ``None``. Checked once
        the stage's running mean has seen ``SPIKE_WARMUP`` steps (one batch of flat crops
        at quality 1 is no yardstick)."""
        running = self.running_loss
        if not self.config.spike_factor or running.get("stage") != stage or running["steps"] < SPIKE_WARMUP:
            return None
        mean = running["mean"]
        if value <= self.config.spike_factor * mean:
            return None
        return f"loss {value:.4g}, {value / mean:.3g} times the stage's running mean {mean:.4g}"

    def _track_loss(self, value: float, stage: str, decay: float = 0.99) -> None:
        """Folds a step's loss into its stage's running mean (:meth:`_spike`): the plain mean
        of its first steps, then exponential; a new stage, with other loss terms, starts its own."""
        running = self.running_loss
        if running.get("stage") != stage:
            running = {"stage": stage, "mean": 0.0, "steps": 0}
        weight = max(1 - decay, 1 / (running["steps"] + 1))
        running["mean"] += weight * (value - running["mean"])
        running["steps"] += 1
        self.running_loss = running

    def _skip(self, stage: str, what: str) -> dict[str, float]:
        """Counts a step whose loss or gradient is not finite, or a loss spike, without updating
        the weights (one rare batch, e.g. a reconstruction overflowing); many
        in a row mean the run has diverged."""
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise FloatingPointError(
                f"{what} at step {self.step + 1}, skipped {MAX_SKIPPED_IN_A_ROW} steps in a row: "
                "training diverged (the checkpoints written before are kept; lower the learning rate)"
            )
        if self.is_main:
            self._log({"step": self.step + 1, "stage": stage, "skipped": what})
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self._position_schedule(self.step + 1)
        return {}

    def _handle_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def _should_stop(self) -> bool:
        stop = torch.tensor(float(self._stop_signal is not None))
        if self.world_size > 1:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        return bool(stop.item())

    def _validation_metrics(self, net: nn.Module) -> dict[str, Any]:
        """:func:`evaluate` at the run's quality, or at each of ``val_qualities`` (``"q1"``,
        ...) with their means: RD loss geometric (the levels' losses differ 12-fold), bpp and
        PSNR arithmetic."""
        config, paths = self.config, find_images(self.config.val)
        if not config.qualities:
            return evaluate(net, paths, config.lmbda, config.metric)
        per_quality = {
            f"q{q}": evaluate(net, paths, LAMBDAS[config.metric][q], config.metric, quality=q)
            for q in config.val_qualities
        }
        values = list(per_quality.values())
        means = {key: sum(m[key] for m in values) / len(values) for key in values[0] if key != "rd_loss"}
        return {
            "rd_loss": math.exp(sum(math.log(m["rd_loss"]) for m in values) / len(values)),
            **means,
            **per_quality,
        }

    def _validate(self) -> dict[str, float] | None:
        if not self.config.val or not self.is_main:
            return None
        metrics = self._validation_metrics(self.student)
        record: dict[str, Any] = {"step": self.step, "val": metrics}
        kept = self.student
        if self.ema is not None:  # the better of the two (the average wins at a high learning rate)
            record["val_ema"] = averaged = self._validation_metrics(self.ema.module)
            if averaged["rd_loss"] < metrics["rd_loss"]:
                kept, metrics = self.ema.module, averaged
        self._log(record)
        if metrics["rd_loss"] < self.best_val_loss:
            self.best_val_loss = metrics["rd_loss"]
            best = {
                "state_dict": kept.state_dict(),
                "architecture": architecture_name(self.student),
                "step": self.step,
                "val": metrics,
                "config": self.config.to_dict(),
            }
            write_atomically(self.out_dir / BEST, lambda tmp: torch.save(best, tmp))
        return metrics

    def _log(self, record: dict[str, Any]) -> None:
        with (self.out_dir / METRICS).open("a") as f:
            f.write(json.dumps(record) + "\n")

    def train(self) -> dict[str, Any]:
        """Runs (or continues) the stages to the end; returns the last
        validation metrics. On SIGTERM/SIGINT, checkpoints and raises
        ``SystemExit(128 + signal)``."""
        config = self.config
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            print(json.dumps(config.to_dict(), indent=2))
        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.objective.train()
        _set_noise_quantization(self.objective, config.noise_quantization)
        bar = tqdm(
            total=config.total_steps,
            initial=self.step,
            disable=not (self.is_main and self.progress),
            unit="step",
        )
        window: dict[str, float] = defaultdict(float)
        window_steps, window_start = 0, time.perf_counter()
        try:
            if self.step < config.total_steps:
                for x in self._loader():
                    parts = self._train_step(x)
                    for k, v in parts.items():
                        window[k] += v
                    window_steps += bool(parts)
                    stage = config.stage_at(self.step - 1)[0].name
                    bar.update(1)
                    bar.set_postfix(
                        stage=stage, **{k: f"{v:.4g}" for k, v in parts.items() if k != "aux_loss"}
                    )
                    done = self.step >= config.total_steps
                    if self.is_main and (self.step % config.log_every == 0 or done):
                        elapsed = time.perf_counter() - window_start
                        record = {k: v / window_steps for k, v in window.items()}
                        record.update(step=self.step, stage=stage, lr=self.scheduler.get_last_lr()[0])
                        record["it_per_s"] = window_steps / elapsed
                        self._log(record)
                        window, window_steps, window_start = defaultdict(float), 0, time.perf_counter()
                    healthy = self.skipped_in_a_row == 0
                    if self.step % config.val_every == 0 and not done and healthy:
                        self._validate()
                    if self.step % config.checkpoint_every == 0 and not done and healthy:
                        self.save_checkpoint()
                    if self._should_stop():
                        self.save_checkpoint()
                        raise SystemExit(128 + (self._stop_signal or signal.SIGTERM))
                    if done:
                        break
            final = self._validate()
            self.save_checkpoint()  # the final state, after the final validation
            if self.is_main:
                plot_metrics(self.out_dir / METRICS, self.out_dir / "training.png")
            return {"step": self.step, "val": final}
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops log records written after the checkpoint a run resumes from."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    write_atomically(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def _init_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device; starts the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return dist.get_rank(), world_size, torch.device("cuda", local_rank)
    return dist.get_rank(), world_size, torch.device("cpu")
