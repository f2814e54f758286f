"""Zoo of the FEDS codecs, in CompressAI's zoo convention.

Checkpoints ship inside the package (the repository's ``zoo/v2/`` folder, installed
as ``compressai_feds/checkpoints``); nothing is downloaded. A variable-rate
checkpoint serves every quality of its architecture and metric and is named
``{architecture}-{metric}-{sha256 prefix}.pth.tar``; a fixed-rate one serves one
quality, ``{architecture}-{metric}-{quality}-{sha256 prefix}.pth.tar``. These are
the names ``python -m compressai.utils.update_model -n {architecture}-{metric}[-{quality}]``
gives; the hash prefix is checked on load. Where both exist, the variable-rate
checkpoint is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint_io import exports_of, read_checkpoint, verify_hash
from .models import FEDSCodec, FEDSStudent, FEDSTeacher
from .quality import LAMBDAS, check_quality

__all__ = ["checkpoint_dir", "feds_student", "feds_teacher", "load_pretrained"]

#: Environment variable that points the zoo at another checkpoint folder.
CHECKPOINT_DIR_ENV = "COMPRESSAI_FEDS_ZOO"
#: The folder under the repository's ``zoo/`` whose checkpoints ship (``pyproject.toml``
#: installs the same one); ``zoo/`` itself keeps v1's fixed-rate files, which no longer do.
SHIPPED = "v2"


def checkpoint_dir() -> Path:
    """Folder the zoo loads checkpoints from: ``$COMPRESSAI_FEDS_ZOO`` if set,
    else the checkpoints installed with the package, else (editable install or
    source checkout) the repository's ``zoo/v2/`` folder (:data:`SHIPPED`)."""
    override = os.environ.get(CHECKPOINT_DIR_ENV)
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent
    installed = package / "checkpoints"
    return installed if installed.is_dir() else package.parent / "zoo" / SHIPPED


def _matching(folder: Path, stem: str) -> list[Path]:
    """Checkpoints named ``{stem}-{sha256 prefix}.pth.tar`` in ``folder``."""
    found = exports_of(folder, stem)
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


def load_pretrained(architecture: str, metric: str, quality: float) -> dict[str, torch.Tensor]:
    """State dict of the shipped checkpoint, hash-checked and loaded without
    unpickling code (``weights_only=True``)."""
    from compressai.zoo.pretrained import load_pretrained as remap_keys

    path = _find_checkpoint(architecture, metric, quality)
    verify_hash(path)
    state_dict, _ = read_checkpoint(path)
    return remap_keys(state_dict)


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
    CompressAI's zoo convention; the arguments are :func:`feds_teacher`'s
    (``kwargs``: constructor arguments of :class:`~compressai_feds.FEDSStudent`).
    """
    return _load_model("feds-student", FEDSStudent, quality, metric, pretrained, **kwargs)
