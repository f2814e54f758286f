"""Shared helpers of the tests: subprocess runs and a tiny real training run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from compressai.losses import RateDistortionLoss
from PIL import Image
from torchvision.transforms.functional import to_tensor

from compressai_feds import FEDSCodec

SAMPLES = Path(__file__).resolve().parent.parent / "compressai_feds" / "samples"


def run_python(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Runs ``python ARGS`` in a fresh interpreter as a user would; returns stdout."""
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=600,
    )
    assert result.returncode == 0, f"python {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_main(main: Callable[[list[str]], int], *args: object, capsys) -> subprocess.CompletedProcess:
    """A command's ``main(argv)`` in this process (no interpreter start-up): its exit
    status and output, as ``subprocess.run`` gives them."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out, err)


def sample_crops(folder: Path, size: int = 64, count: int = 2) -> Path:
    """Writes ``count`` small crops of the shipped sample images into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(SAMPLES.glob("*.png"))[:count]:
        Image.open(path).convert("RGB").crop((100, 100, 100 + size, 100 + size)).save(folder / path.name)
    return folder


def train_briefly(net: FEDSCodec, steps: int = 3, lmbda: float = 0.0018) -> FEDSCodec:
    """A few real optimisation steps on crops of the sample images."""
    x = torch.stack(
        [to_tensor(Image.open(p).convert("RGB").crop((0, 0, 64, 64))) for p in sorted(SAMPLES.glob("*.png"))]
    )
    criterion = RateDistortionLoss(lmbda=lmbda)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    net.train()
    for _ in range(steps):
        optimizer.zero_grad()
        criterion(net(x), x)["loss"].backward()
        optimizer.step()
    return net.eval()
