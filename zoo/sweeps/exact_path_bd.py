"""BD-rate and decode-time cost of the exact entropy path against CompressAI's
float one, over several qualities (issue 10's acceptance figures).

Each checkpoint codes every image with the three entropy paths of
``compressai_feds.benchmark --entropy-path`` (exact, exact without the re-encoding
check, float), interleaved image by image; one point per checkpoint and path.
Writes one CompressAI results JSON per path into OUT and prints the BD-rate of
the exact path against the float one and the decode-time change per checkpoint.
Run from the repository root, training paused (see exact-path-bd.sh):

    python zoo/sweeps/exact_path_bd.py ../shared/data/kodak OUT CKPT [CKPT ...]
"""

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from compressai_feds.bdrate import Curve, bd_psnr, bd_rate
from compressai_feds.benchmark import ENTROPY_PATHS, compare_entropy_paths, image_paths
from compressai_feds.zoo import load_codec


def main(images_dir: str, out: str, checkpoints: list[str]) -> None:
    torch.set_num_threads(2)
    images = [to_tensor(Image.open(p).convert("RGB"))[None] for p in image_paths([images_dir])]
    points = {path: [] for path in ENTROPY_PATHS}
    for checkpoint in checkpoints:
        net = load_codec(checkpoint).eval()
        row = compare_entropy_paths(net, images, Path(checkpoint).name)
        exact, unchecked, floating = (row[path] for path in ENTROPY_PATHS)
        print(
            f"{Path(checkpoint).name}: bpp {exact['bpp']:.4f} vs {floating['bpp']:.4f} "
            f"({exact['bpp'] / floating['bpp'] - 1:+.2%}), PSNR {exact['psnr'] - floating['psnr']:+.4f} dB, "
            f"decode {exact['decode_s'] * 1e3:.1f} vs {floating['decode_s'] * 1e3:.1f} ms "
            f"({exact['decode_s'] / floating['decode_s'] - 1:+.1%}; "
            f"{unchecked['decode_s'] / floating['decode_s'] - 1:+.1%} unchecked), "
            f"encode {exact['encode_s'] / floating['encode_s'] - 1:+.1%}",
            flush=True,
        )
        for path in ENTROPY_PATHS:
            points[path].append(row[path])
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    curves = {}
    for path, rows in points.items():
        results = {key: [r[key] for r in rows] for key in ("bpp", "psnr", "encode_s", "decode_s")}
        results["psnr-rgb"] = results.pop("psnr")
        data = {"name": f"{path} entropy path", "checkpoints": checkpoints, "results": results}
        (folder / f"{path}.json").write_text(json.dumps(data, indent=1))
        curves[path] = Curve.from_points(data["name"], results["bpp"], results["psnr-rgb"])
    for path in ("exact", "unchecked"):
        print(
            f"BD-rate of the {path} path against the float path: "
            f"{bd_rate(curves['float_path'], curves[path]):+.3f}% "
            f"(BD-PSNR {bd_psnr(curves['float_path'], curves[path]):+.4f} dB)"
        )
    decode = [
        e["decode_s"] / f["decode_s"] - 1 for e, f in zip(points["exact"], points["float_path"], strict=True)
    ]
    print(f"decode time, exact vs float: {', '.join(f'{d:+.1%}' for d in decode)} (per checkpoint)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
