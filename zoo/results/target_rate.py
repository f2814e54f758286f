"""How close ``compressai-feds encode --target-bpp`` comes to its target: per image, the
rate reached over the target, for a variable-rate checkpoint.

    python zoo/results/target_rate.py IMAGES/ CHECKPOINT --targets 0.25,0.5,1.0

Where the target is reachable (between the rates of quality 1 and quality 6), the
file's rate must be at most the target and within 3% of it.
"""

import argparse
from pathlib import Path

from tqdm import tqdm

from compressai_feds.codec import Codec, compress_to_target
from compressai_feds.images import find_images, open_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--targets", default="0.25,0.5,1.0")
    args = parser.parse_args()
    codec = Codec.from_checkpoint(args.checkpoint)
    images = [open_image(p) for p in find_images(args.images)]
    print(f"{len(images)} images of {args.images}, {args.checkpoint.name}")
    print(
        f"{'target bpp':>10} {'reachable':>9} {'reached/target: mean':>21} {'min':>6} {'max':>6} {'quality':>14}"
    )
    for target in (float(t) for t in args.targets.split(",")):
        ratios, qualities, unreachable = [], [], 0
        for image in tqdm(images, desc=f"{target} bpp", leave=False):
            _, _, choice = compress_to_target(codec, image, target_bpp=target)
            if not choice.met or choice.quality == 6:
                unreachable += 1  # below quality 1's rate, or above quality 6's
                continue
            ratios.append(choice.bpp / target)
            qualities.append(choice.quality)
        if ratios:
            print(
                f"{target:10.3f} {len(ratios):5d}/{len(images):<3d} {sum(ratios) / len(ratios):21.4f} "
                f"{min(ratios):6.4f} {max(ratios):6.4f} {min(qualities):6.3f}-{max(qualities):.3f}"
            )
        else:
            print(f"{target:10.3f} {0:5d}/{len(images):<3d} (unreachable on every image)")


if __name__ == "__main__":
    main()
