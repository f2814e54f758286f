"""Quality-level zoo of the FEDS codecs, in CompressAI's zoo convention.

Checkpoints ship inside the package (the repository's ``zoo/`` folder, installed
as ``compressai_feds/checkpoints``); nothing is downloaded. A checkpoint is named
``{architecture}-{metric}-{quality}-{sha256 prefix}.pth.tar``, the name
``python -m compressai.utils.update_model -n {architecture}-{metric}-{quality}``
gives it, and its hash prefix is checked on load.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from compressai.registry import MODELS

from .models import FEDSCodec, FEDSStudent, FEDSTeacher

__all__ = [
    "LAMBDAS",
    "architecture_name",
    "checkpoint_dir",
    "feds_student",
    "feds_teacher",
    "half_precision",
    "load_codec",
    "shared_duplicates",
]

#: Rate-distortion trade-off of each quality level: the tables of CompressAI's
#: pretrained models (``compressai/zoo/image.py``, training λ of the MSE and
#: MS-SSIM models).
LAMBDAS: dict[str, dict[int, float]] = {
    "mse": {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483},
    "ms-ssim": {1: 2.40, 2: 4.58, 3: 8.73, 4: 16.64, 5: 31.73, 6: 60.50},
}

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


def _find_checkpoint(architecture: str, metric: str, quality: int) -> Path:
    stem = f"{architecture}-{metric}-{quality}"
    folder = checkpoint_dir()
    found = sorted(folder.glob(f"{stem}-*.pth.tar")) if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"no pretrained {architecture} checkpoint for metric={metric!r}, quality={quality}: "
            f"expected {folder / (stem + '-<sha256 prefix>.pth.tar')} (train one, then export "
            f"it there with `python -m compressai.utils.update_model -a {architecture} "
            f"-n {stem} -d {folder} CHECKPOINT`)"
        )
    if len(found) > 1:
        raise RuntimeError(f"several checkpoints match {stem}: {[p.name for p in found]}")
    return found[0]


def _verify_hash(path: Path) -> None:
    expected = path.name[: -len(".pth.tar")].rsplit("-", 1)[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise RuntimeError(f"checkpoint {path} is corrupted: sha256 {digest[:8]} != {expected}")


def load_pretrained(architecture: str, metric: str, quality: int) -> dict[str, torch.Tensor]:
    """State dict of the shipped checkpoint, hash-checked and loaded without
    unpickling code (``weights_only=True``)."""
    from compressai.zoo.pretrained import load_pretrained as remap_keys

    path = _find_checkpoint(architecture, metric, quality)
    _verify_hash(path)
    return remap_keys(torch.load(path, map_location="cpu", weights_only=True))


def _load_model(
    architecture: str,
    model_class: type[FEDSCodec],
    quality: int,
    metric: str,
    pretrained: bool,
    **kwargs: Any,
) -> FEDSCodec:
    if metric not in LAMBDAS:
        raise ValueError(f"invalid metric {metric!r}: choose from {sorted(LAMBDAS)}")
    if quality not in LAMBDAS[metric]:
        raise ValueError(f"invalid quality {quality!r}: choose from {sorted(LAMBDAS[metric])}")
    if not pretrained:
        return model_class(**kwargs)
    if kwargs:
        raise ValueError(f"pretrained {architecture} takes no architecture arguments, got {sorted(kwargs)}")
    return model_class.from_state_dict(load_pretrained(architecture, metric, quality))


def _zoo_function(architecture: str, model_class: type[FEDSCodec]) -> Callable[..., FEDSCodec]:
    def load(
        quality: int, metric: str = "mse", pretrained: bool = False, progress: bool = True, **kwargs: Any
    ) -> FEDSCodec:
        return _load_model(architecture, model_class, quality, metric, pretrained, **kwargs)

    load.__name__ = load.__qualname__ = architecture.replace("-", "_")
    load.__doc__ = f"""{model_class.__name__} at a quality level (CompressAI zoo convention).

    Args:
        quality: 1 (lowest rate) to 6; the training λ is ``LAMBDAS[metric][quality]``.
        metric: ``"mse"`` or ``"ms-ssim"``, the distortion it was trained for.
        pretrained: Load the checkpoint shipped with the package (never
            downloads; raises ``FileNotFoundError`` naming the expected file if
            it is not there).
        progress: Unused (nothing is downloaded); kept for CompressAI's signature.
        **kwargs: Constructor arguments of :class:`{model_class.__name__}`
            (untrained models only).
    """
    load.architecture = model_class
    return load


feds_teacher = _zoo_function("feds-teacher", FEDSTeacher)
feds_student = _zoo_function("feds-student", FEDSStudent)


def load_codec(path: str | Path, architecture: str | None = None) -> nn.Module:
    """A codec from a checkpoint file (ours, CompressAI's or a bare state dict),
    unpickled with ``weights_only=True``: files that carry code are refused.

    The class is the one the checkpoint names, else ``architecture``, else
    :class:`FEDSCodec` (which reads its sizes off the weights)."""
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
    return MODELS.get(name, FEDSCodec).from_state_dict(state_dict)


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
