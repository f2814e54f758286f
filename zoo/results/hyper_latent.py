"""What the hyper-latent z saves: each checkpoint's entropy-estimated rate of y with z as
coded, against the rate of y with z erased (every z at its median, what a decoder
assumes with no z bits), per quality, on a folder of images.

    python zoo/results/hyper_latent.py IMAGES/ CHECKPOINT... [-q 1,3,6] [--json OUT.json]

Eval mode (rounding, as coding does), full images, padded as the codec pads them; a
variable-rate checkpoint at each quality of ``-q``.
``saves`` = bpp_y(z erased) − bpp_y − bpp_z: positive when z pays for itself.
"""

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from compressai_feds.checkpoint_io import load_codec
from compressai_feds.images import find_images, load_rgb


class AtMedians(nn.Module):
    """A hyper-analysis whose every output is the hyper-latent's median."""

    def __init__(self, h_a: nn.Module, medians: torch.Tensor) -> None:
        super().__init__()
        self.h_a, self.medians = h_a, medians

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.medians.expand_as(self.h_a(y)).contiguous()


@contextmanager
def erased_hyper_latent(net):
    """z carries nothing: ``h_a`` outputs the medians."""
    hyper = net.latent_codec.latent_codec["hyper"]
    h_a = hyper.h_a
    hyper.h_a = AtMedians(h_a, hyper.entropy_bottleneck._get_medians().detach())
    try:
        yield
    finally:
        hyper.h_a = h_a


@torch.no_grad()
def rates(net, x: torch.Tensor) -> tuple[float, float, float]:
    """bpp of y, of z, and of y with z erased."""
    pixels = x.size(2) * x.size(3)
    out = net(x)
    bpp_y = -out["likelihoods"]["y"].log2().sum().item() / pixels
    bpp_z = -out["likelihoods"]["z"].log2().sum().item() / pixels
    with erased_hyper_latent(net):
        erased = -net(x)["likelihoods"]["y"].log2().sum().item() / pixels
    return bpp_y, bpp_z, erased


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument(
        "-q", "--qualities", default="3", help="variable-rate checkpoints: qualities, e.g. 1,3,6"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    paths = find_images(args.images)
    images = [load_rgb(p)[None].float() / 255 for p in paths]
    table = {}
    print(f"{len(images)} images of {args.images}")
    print(f"{'checkpoint':48} {'bpp_y':>7} {'bpp_z':>7} {'z share':>7} {'y, z erased':>11} {'z saves':>8}")
    for path in args.checkpoints:
        net = load_codec(path).eval()
        qualities = [float(q) for q in args.qualities.split(",")] if net.variable_rate else [None]
        for quality in qualities:
            if quality is not None:
                net.quality = quality
            name = path.name if quality is None else f"{path.name} q{quality:g}"
            sums = [0.0, 0.0, 0.0]
            for x in tqdm(images, desc=name, leave=False):
                for i, value in enumerate(rates(net, x)):
                    sums[i] += value / len(images)
            bpp_y, bpp_z, erased = sums
            saves = erased - bpp_y - bpp_z
            table[name] = {"bpp_y": bpp_y, "bpp_z": bpp_z, "bpp_y_z_erased": erased, "z_saves_bpp": saves}
            share = 100 * bpp_z / (bpp_y + bpp_z)
            print(f"{name:48} {bpp_y:7.4f} {bpp_z:7.4f} {share:6.2f}% {erased:11.4f} {saves:+8.4f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
