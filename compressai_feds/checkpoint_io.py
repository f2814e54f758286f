"""Checkpoint files: loading weights without code, and shipping them.

A shipped checkpoint is ``{"state_dict": ..., "metadata": ...}`` (CompressAI's
``eval_model checkpoint`` reads the ``state_dict`` key; older zoo files are a bare
state dict, read as well): the weights after ``update()`` (CDF tables built),
convolution weights in float16 if asked, equal tables stored once, and metadata
(architecture, metric, λ table, training summary) of plain types, so that
everything loads with ``weights_only=True``. CompressAI is imported where it is
used (importing it first would leave the plugin registration to a module that
this one does not import). Its name ends with the first 8 hex
digits of its SHA-256, as CompressAI's ``update_model`` names files, checked on load.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "architecture_name",
    "averaged_weights",
    "export",
    "half_precision",
    "load_codec",
    "read_checkpoint",
    "shared_duplicates",
    "verify_hash",
]


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and metadata of a checkpoint (ours, CompressAI's or a bare state
    dict), unpickled with ``weights_only=True``: files that carry code are refused
    (``ValueError``). Training checkpoints' other entries (``architecture``, ``step``)
    are part of the metadata."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot load {path} as a weights-only checkpoint: {exc}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    if "state_dict" not in checkpoint:
        return checkpoint, {}
    metadata = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "metadata")}
    return checkpoint["state_dict"], {**metadata, **checkpoint.get("metadata", {})}


def load_codec(
    path: str | Path,
    architecture: str | None = None,
    variable_rate: bool = False,
    auxiliary_transform: bool = False,
) -> nn.Module:
    """A codec from a checkpoint file (:func:`read_checkpoint`).

    The class is the one the checkpoint names, else ``architecture``, else
    :class:`FEDSCodec` (which reads its sizes off the weights). ``variable_rate``,
    ``auxiliary_transform``: the weights with gain units or an auxiliary transform
    added, at their initialisation (:meth:`FEDSCodec.from_state_dict`)."""
    from compressai.registry import MODELS

    from .models import FEDSCodec  # (the zoo, which the models import, imports this module)

    state_dict, metadata = read_checkpoint(path)
    model_class = MODELS.get(metadata.get("architecture") or architecture or "", FEDSCodec)
    if variable_rate or auxiliary_transform:
        return model_class.from_state_dict(
            state_dict, variable_rate=variable_rate, auxiliary_transform=auxiliary_transform
        )
    return model_class.from_state_dict(state_dict)


def verify_hash(path: Path) -> None:
    """``RuntimeError`` unless the file's SHA-256 starts with the prefix its name ends with."""
    expected = path.name[: -len(".pth.tar")].rsplit("-", 1)[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise RuntimeError(f"checkpoint {path} is corrupted: sha256 {digest[:8]} != {expected}")


def averaged_weights(averaged_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's weights in the state dict of a :class:`torch.optim.swa_utils.AveragedModel`
    (its ``module.`` prefix and ``n_averaged`` counter dropped)."""
    return {k.removeprefix("module."): v for k, v in averaged_state.items() if k != "n_averaged"}


def half_precision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every convolution, linear and normalisation weight and
    bias stored in float16, for shipping: entropy-model parameters, gains, CDF tables
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


def exports_of(folder: Path, name: str) -> list[Path]:
    """The files ``{name}-{sha256 prefix}.pth.tar`` in ``folder`` (as :func:`export` and
    ``update_model`` name them), sorted; not those of a longer name that begins with
    ``name`` (``feds-student-mse-seed1-…`` is not an export of ``feds-student-mse``)."""
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{8,64}\.pth\.tar")
    return sorted(path for path in folder.iterdir() if pattern.fullmatch(path.name))


def export(
    state_dict: dict[str, torch.Tensor],
    architecture: str,
    folder: Path,
    name: str,
    half: bool,
    metadata: dict[str, Any],
) -> Path:
    """Ships trained weights as ``folder/{name}-{sha256 prefix}.pth.tar`` and
    returns the path: CompressAI's ``update_model`` builds the CDF tables, then
    :func:`half_precision` (if ``half``), :func:`shared_duplicates` and the
    metadata; older exports of ``name`` are removed."""
    update_model = importlib.import_module("compressai.utils.update_model.__main__")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        weights = Path(tmp) / "weights.pth.tar"  # (update_model names its output with this suffix)
        torch.save({"state_dict": state_dict}, weights)
        update_model.main([str(weights), "-a", architecture, "-n", name, "-d", tmp])
        weights.unlink()
        (updated,) = Path(tmp).glob("*.pth.tar")
        state_dict = torch.load(updated, weights_only=True)
        updated.unlink()
        if half:
            state_dict = half_precision(state_dict)
        unhashed = Path(tmp) / f"{name}.pth.tar"
        torch.save({"state_dict": shared_duplicates(state_dict), "metadata": metadata}, unhashed)
        new = unhashed.rename(unhashed.with_name(f"{name}-{update_model.sha256_file(unhashed)}.pth.tar"))
        for old in exports_of(folder, name):
            old.unlink()
        return new.replace(folder / new.name)


def architecture_name(net: nn.Module) -> str:
    """The name a codec's class is registered under in CompressAI (e.g. ``feds-student``)."""
    from compressai.registry import MODELS

    return next((name for name, cls in MODELS.items() if cls is type(net)), type(net).__name__)
