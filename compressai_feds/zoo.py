"""Zoo of the FEDS codecs, in CompressAI's zoo convention.

Checkpoints ship inside the package (the repository's ``zoo/`` folder, installed
as ``compressai_feds/checkpoints``); nothing is downloaded. A variable-rate
checkpoint serves every quality of its architecture and metric and is named
``{architecture}-{metric}-{sha256 prefix}.pth.tar``; a fixed-rate one serves one
quality, ``{architecture}-{metric}-{quality}-{sha256 prefix}.pth.tar``. These are
the names ``python -m compressai.utils.update_model -n {architecture}-{metric}[-{quality}]``
gives; the hash prefix is checked on load. Where both exist, the variable-rate
checkpoint is used.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from compressai.registry import MODELS

from .models import FEDSCodec, FEDSStudent, FEDSTeacher
from .quality import LAMBDAS, check_quality

__all__ = [
    "architecture_name",
    "checkpoint_dir",
    "feds_student",
    "feds_teacher",
    "half_precision",
    "load_codec",
    "shared_duplicates",
]

#: Environment variable that points the zoo at another checkpoint folder.
CHECKPOINT_DIR_ENV = "COMPRESSAI_FEDS_ZOO"


def checkpoint_dir() -> Path:
    """Folder the zoo loads checkpoints from: ``$COMPRESSAI_FEDS_ZOO`` if set,
    else the checkpoints installed with the package, else (editable install or
    source checkout) the repository's ``zoo/`` folder."""
    override = os.environ.get(CHECKPOINT_DIR_ENV)
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent
    installed = package / "checkpoints"
    return installed if installed.is_dir() else package.parent / "zoo"


def _matching(folder: Path, stem: str) -> list[Path]:
    """Checkpoints named ``{stem}-{sha256 prefix}.pth.tar`` in ``folder``."""
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(stem) + r"-[0-9a-f]{8,64}\.pth\.tar")
    found = sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name))
    if len(found) > 1:
        raise RuntimeError(f"several checkpoints match {stem}: {[p.name for p in found]}")
    return found


def _find_checkpoint(architecture: str, metric: str, quality: float) -> Path:
    """The variable-rate checkpoint of ``architecture`` and ``metric``, else the
    fixed-rate one of ``quality``."""
    folder = checkpoint_dir()
    found = _matching(folder, f"{architecture}-{metric}")
    if not found and quality == int(quality):
        found = _matching(folder, f"{architecture}-{metric}-{int(quality)}")
    if not found:
        stem = f"{architecture}-{metric}" + (f"-{int(quality)}" if quality == int(quality) else "")
        raise FileNotFoundError(
            f"no pretrained {architecture} checkpoint for metric={metric!r}, quality={quality:g}: "
            f"expected {folder / (stem + '-<sha256 prefix>.pth.tar')} (train one, then export "
            f"it there with `python -m compressai.utils.update_model -a {architecture} "
            f"-n {stem} -d {folder} CHECKPOINT`)"
        )
    return found[0]


def _verify_hash(path: Path) -> None:
    expected = path.name[: -len(".pth.tar")].rsplit("-", 1)[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise RuntimeError(f"checkpoint {path} is corrupted: sha256 {digest[:8]} != {expected}")


def load_pretrained(architecture: str, metric: str, quality: float) -> dict[str, torch.Tensor]:
    """State dict of the shipped checkpoint, hash-checked and loaded without
    unpickling code (``weights_only=True``)."""
    from compressai.zoo.pretrained import load_pretrained as remap_keys

    path = _find_checkpoint(architecture, metric, quality)
    _verify_hash(path)
    return remap_keys(torch.load(path, map_location="cpu", weights_only=True))


def _load_model(
    architecture: str,
    model_class: type[FEDSCodec],
    quality: float,
    metric: str,
    pretrained: bool,
    **kwargs: Any,
) -> FEDSCodec:
    if metric not in LAMBDAS:
        raise ValueError(f"invalid metric {metric!r}: choose from {sorted(LAMBDAS)}")
    check_quality(quality)
    if not pretrained:
        net = model_class(**kwargs)
    elif kwargs:
        raise ValueError(f"pretrained {architecture} takes no architecture arguments, got {sorted(kwargs)}")
    else:
        net = model_class.from_state_dict(load_pretrained(architecture, metric, quality))
    if net.variable_rate:
        net.quality = quality
    elif quality != int(quality):
        raise ValueError(
            f"invalid quality {quality!r}: a fixed-rate {architecture} takes a whole quality from 1 to 6"
        )
    return net


def feds_teacher(
    quality: float, metric: str = "mse", pretrained: bool = False, progress: bool = True, **kwargs: Any
) -> FEDSTeacher:
    r"""FEDS teacher (Fu et al., arXiv 2503.06399: teacher model) at a quality, in
    CompressAI's zoo convention.

    Args:
        quality: 1 (lowest rate) to 6, the levels of CompressAI's λ table
            (:data:`~compressai_feds.quality.LAMBDAS`); a variable-rate model also
            takes any real quality between.
        metric: ``"mse"`` or ``"ms-ssim"``, the distortion it was trained for.
        pretrained: Load the checkpoint shipped with the package (never
            downloads; raises ``FileNotFoundError`` naming the expected file if
            it is not there).
        progress: Unused (nothing is downloaded); kept for CompressAI's signature.
        **kwargs: Constructor arguments of :class:`~compressai_feds.FEDSTeacher`
            (untrained models only).
    """
    return _load_model("feds-teacher", FEDSTeacher, quality, metric, pretrained, **kwargs)


def feds_student(
    quality: float, metric: str = "mse", pretrained: bool = False, progress: bool = True, **kwargs: Any
) -> FEDSStudent:
    r"""FEDS student (Fu et al., arXiv 2503.06399: student model) at a quality, in
    CompressAI's zoo convention.

    Args:
        quality: 1 (lowest rate) to 6, the levels of CompressAI's λ table
            (:data:`~compressai_feds.quality.LAMBDAS`); a variable-rate model also
            takes any real quality between.
        metric: ``"mse"`` or ``"ms-ssim"``, the distortion it was trained for.
        pretrained: Load the checkpoint shipped with the package (never
            downloads; raises ``FileNotFoundError`` naming the expected file if
            it is not there).
        progress: Unused (nothing is downloaded); kept for CompressAI's signature.
        **kwargs: Constructor arguments of :class:`~compressai_feds.FEDSStudent`
            (untrained models only).
    """
    return _load_model("feds-student", FEDSStudent, quality, metric, pretrained, **kwargs)


def load_codec(path: str | Path, architecture: str | None = None, variable_rate: bool = False) -> nn.Module:
    """A codec from a checkpoint file (ours, CompressAI's or a bare state dict),
    unpickled with ``weights_only=True``: files that carry code are refused.

    The class is the one the checkpoint names, else ``architecture``, else
    :class:`FEDSCodec` (which reads its sizes off the weights). ``variable_rate``:
    a fixed-rate codec's weights with gain units added
    (:meth:`FEDSCodec.from_state_dict`)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot load {path} as a weights-only checkpoint: {exc}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    state_dict = checkpoint.get("state_dict", checkpoint)
    name = checkpoint.get("architecture") or architecture or ""
    model_class = MODELS.get(name, FEDSCodec)
    if variable_rate:
        return model_class.from_state_dict(state_dict, variable_rate=True)
    return model_class.from_state_dict(state_dict)


def half_precision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every convolution, linear and normalisation weight and
    bias stored in float16, for shipping: entropy-model parameters, CDF tables
    and scale tables stay as they are (the CDFs were built from them)."""
    return {
        key: value.half() if value.dtype == torch.float32 and key.endswith((".weight", ".bias")) else value
        for key, value in state_dict.items()
    }


def shared_duplicates(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with equal tensors replaced by one object, which
    :func:`torch.save` then stores once: every latent slice's Gaussian
    conditional holds the same CDF table (built from the same scale table),
    0.8 MB each, five times in a teacher."""
    kept: list[torch.Tensor] = []
    shared = {}
    for key, value in state_dict.items():
        same = (
            other
            for other in kept
            if other.dtype == value.dtype and other.shape == value.shape and torch.equal(other, value)
        )
        shared[key] = next(same, None)
        if shared[key] is None:
            shared[key] = value
            kept.append(value)
    return shared


def architecture_name(net: nn.Module) -> str:
    """The name a codec's class is registered under in CompressAI (e.g. ``feds-student``)."""
    return next((name for name, cls in MODELS.items() if cls is type(net)), type(net).__name__)
