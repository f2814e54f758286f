"""Teacher vs student, measured in one run: size, real rANS encode/decode time,
rate and quality, and optionally the cost of one training step.

    python -m compressai_feds.benchmark [IMAGE_OR_DIR ...] [-q QUALITY] [--train-step]

With no images, runs on the samples shipped in the package. Uses the zoo's
checkpoints where they exist, else untrained weights (said so in the output):
times and sizes are then real, rates and PSNR are not meaningful.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median

import torch
from compressai.losses import RateDistortionLoss
from tqdm import tqdm

from .checkpoint_io import half_precision
from .images import SAMPLES, image_paths, load_rgb, psnr
from .models import FEDSCodec
from .quality import LAMBDAS, QUALITIES
from .zoo import feds_student, feds_teacher


def load_codec(factory, quality: int) -> tuple[FEDSCodec, bool]:
    """The zoo's pretrained codec if shipped, else an untrained one; and which."""
    try:
        return factory(quality=quality, pretrained=True).eval(), True
    except FileNotFoundError:
        net = factory(quality=quality).eval()
        net.update(force=True)
        return net, False


def bits_per_pixel(strings: list[list[bytes]], x: torch.Tensor) -> float:
    """Rate of one image's bitstreams."""
    return sum(len(s[0]) for s in strings) * 8 / (x.size(2) * x.size(3))


def measure_coding(net: FEDSCodec, images: list[torch.Tensor], name: str) -> dict[str, float]:
    """Median encode/decode seconds per image, mean bpp and PSNR; checks that
    every decode reproduces the encoder's reconstruction."""
    net.compress(images[0][..., :64, :64])  # warm-up: first-call allocations
    enc_times, dec_times, bpps, psnrs = [], [], [], []
    for x in tqdm(images, desc=f"{name} encode/decode", unit="img", leave=False):
        start = time.perf_counter()
        enc = net.compress(x)
        enc_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        x_hat = net.decompress(enc["strings"], enc["shape"])["x_hat"]
        dec_times.append(time.perf_counter() - start)
        if not torch.equal(x_hat, net.synthesize(enc["y_hat"], enc["shape"])):
            raise RuntimeError(f"{name}: decoded image differs from the encoder's reconstruction")
        bpps.append(bits_per_pixel(enc["strings"], x))
        psnrs.append(psnr(torch.mean((x - x_hat) ** 2).item()))
    return {
        "encode_s": median(enc_times),
        "decode_s": median(dec_times),
        "bpp": sum(bpps) / len(bpps),
        "psnr": sum(psnrs) / len(psnrs),
    }


#: The entropy paths compared by ``--entropy-path``: (exact fixed-point networks, re-encoding check).
ENTROPY_PATHS = {"exact": (True, True), "unchecked": (True, False), "float_path": (False, False)}


def compare_entropy_paths(
    net: FEDSCodec, images: list[torch.Tensor], name: str, repeats: int = 3
) -> dict[str, dict[str, float]]:
    """The exact entropy path, with and without its re-encoding check, against
    CompressAI's float evaluation (:data:`ENTROPY_PATHS`), interleaved image by
    image (in a rotating order) so that load on the machine hits all three
    alike: per path, the median over images of the best of ``repeats`` encode
    and decode times, the mean bpp and PSNR."""
    paths = list(ENTROPY_PATHS)
    per_image = {path: {"encode_s": [], "decode_s": [], "bpp": [], "psnr": []} for path in paths}
    try:
        for x in tqdm(images, desc=f"{name} entropy paths", unit="img", leave=False):
            runs: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
            for repeat in range(repeats):
                for path in paths[repeat % len(paths) :] + paths[: repeat % len(paths)]:
                    net.exact_entropy_path, net.verify_decoding = ENTROPY_PATHS[path]
                    start = time.perf_counter()
                    enc = net.compress(x)
                    encoded = time.perf_counter()
                    x_hat = net.decompress(enc["strings"], enc["shape"])["x_hat"]
                    runs[path].append((encoded - start, time.perf_counter() - encoded))
                    if repeat == 0:
                        per_image[path]["bpp"].append(bits_per_pixel(enc["strings"], x))
                        per_image[path]["psnr"].append(psnr(torch.mean((x - x_hat) ** 2).item()))
            for path, times in runs.items():
                per_image[path]["encode_s"].append(min(t[0] for t in times))
                per_image[path]["decode_s"].append(min(t[1] for t in times))
    finally:
        net.exact_entropy_path, net.verify_decoding = True, True
    return {
        path: {
            "encode_s": median(row["encode_s"]),
            "decode_s": median(row["decode_s"]),
            "bpp": sum(row["bpp"]) / len(row["bpp"]),
            "psnr": sum(row["psnr"]) / len(row["psnr"]),
        }
        for path, row in per_image.items()
    }


def training_step_seconds(
    net: FEDSCodec,
    lmbda: float,
    fast: bool,
    batch: int = 8,
    size: int = 256,
    steps: int = 3,
    compiled: bool = False,
) -> float:
    """Mean seconds of one training step on random crops: ``fast`` is bf16
    autocast with channels_last, else plain fp32; ``compiled`` runs the forward
    pass through ``torch.compile`` (compilation is left out of the time)."""
    memory_format = torch.channels_last if fast else torch.contiguous_format
    net = net.train().to(memory_format=memory_format)
    forward = torch.compile(net) if compiled else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-5)
    criterion = RateDistortionLoss(lmbda=lmbda)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=memory_format)
    warm_up = 2 if compiled else 1
    times = []
    for _ in range(steps + warm_up):
        start = time.perf_counter()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=fast):
            out = forward(x)
        loss = criterion(out, x)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    net.eval().to(memory_format=torch.contiguous_format)
    return sum(times[warm_up:]) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", help="image files or folders (default: the shipped samples)")
    parser.add_argument("-q", "--quality", type=int, default=3, choices=QUALITIES)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--train-step", action="store_true", help="also time a training step, bf16 + channels_last and fp32"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the bf16 training step with torch.compile (batch 8 of --crop-size crops)",
    )
    parser.add_argument("--crop-size", type=int, default=256, help="crop side of the timed training steps")
    parser.add_argument(
        "--entropy-path",
        action="store_true",
        help="also code with CompressAI's float entropy path (and the exact one without its re-encoding "
        "check), interleaved image by image: rate, PSNR and time of the exact one against it",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="also code with the weights rounded to float16 (zoo storage): rate and PSNR against float32",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        paths = image_paths(args.images, SAMPLES)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    images = [load_rgb(p)[None].float() / 255 for p in paths]
    sizes = sorted({f"{x.size(3)}x{x.size(2)}" for x in images})
    print(
        f"{len(images)} images ({', '.join(sizes)}), quality {args.quality}, {torch.get_num_threads()} threads"
    )

    results: dict[str, dict] = {}
    for name, factory in (("teacher", feds_teacher), ("student", feds_student)):
        torch.manual_seed(0)
        net, pretrained = load_codec(factory, args.quality)
        row = {"pretrained": pretrained, "parameters": sum(p.numel() for p in net.parameters())}
        row.update(measure_coding(net, images, name))
        if args.fp16:
            rounded = type(net).from_state_dict(half_precision(net.state_dict())).eval()
            row["fp16"] = measure_coding(rounded, images, f"{name} (fp16 weights)")
        if args.entropy_path:
            row["entropy_paths"] = compare_entropy_paths(net, images, name)
        lmbda = LAMBDAS["mse"][args.quality]
        if args.train_step:
            row["train_step_s"] = training_step_seconds(net, lmbda, fast=True, size=args.crop_size)
            row["train_step_fp32_s"] = training_step_seconds(net, lmbda, fast=False, size=args.crop_size)
        if args.compile:
            row["train_step_eager_s"] = training_step_seconds(net, lmbda, fast=True, size=args.crop_size)
            row["train_step_compiled_s"] = training_step_seconds(
                net, lmbda, fast=True, size=args.crop_size, compiled=True
            )
        results[name] = row

    teacher, student = results["teacher"], results["student"]
    ratios = {
        "parameters": student["parameters"] / teacher["parameters"],
        "encode+decode": (student["encode_s"] + student["decode_s"])
        / (teacher["encode_s"] + teacher["decode_s"]),
    }
    if args.train_step:
        ratios["train_step"] = student["train_step_s"] / teacher["train_step_s"]
        for name, row in results.items():
            ratios[f"{name} bf16 speed-up"] = row["train_step_fp32_s"] / row["train_step_s"]

    print(
        f"{'model':8} {'weights':9} {'params':>11} {'encode s':>9} {'decode s':>9} {'bpp':>7} {'PSNR dB':>8}"
    )
    for name, row in results.items():
        print(
            f"{name:8} {'zoo' if row['pretrained'] else 'untrained':9} {row['parameters']:11,d} "
            f"{row['encode_s']:9.3f} {row['decode_s']:9.3f} {row['bpp']:7.3f} {row['psnr']:8.2f}"
            + (
                f"   train step {row['train_step_s']:.2f} s bf16, {row['train_step_fp32_s']:.2f} s fp32"
                if args.train_step
                else ""
            )
        )
    print("student / teacher: " + ", ".join(f"{k} {v:.1%}" for k, v in ratios.items() if "speed-up" not in k))
    if args.train_step:
        print(
            "bf16 + channels_last vs fp32: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if "speed-up" in k)
        )
    if args.entropy_path:
        print("exact vs float entropy path (interleaved, best of 3 per image, median over images):")
        for name, row in results.items():
            exact, unchecked, floating = (row["entropy_paths"][path] for path in ENTROPY_PATHS)
            print(
                f"  {name}: bpp {exact['bpp'] / floating['bpp'] - 1:+.2%}, "
                f"PSNR {exact['psnr'] - floating['psnr']:+.3f} dB, "
                f"encode {exact['encode_s'] * 1e3:.1f} vs {floating['encode_s'] * 1e3:.1f} ms "
                f"({exact['encode_s'] / floating['encode_s'] - 1:+.1%}), "
                f"decode {exact['decode_s'] * 1e3:.1f} vs {floating['decode_s'] * 1e3:.1f} ms "
                f"({exact['decode_s'] / floating['decode_s'] - 1:+.1%}; "
                f"{unchecked['decode_s'] / floating['decode_s'] - 1:+.1%} without the re-encoding check)"
            )
    if args.fp16:
        print(
            "float16 vs float32 weights: "
            + "; ".join(
                f"{name} bpp {row['fp16']['bpp'] / row['bpp'] - 1:+.3%}, PSNR {row['fp16']['psnr'] - row['psnr']:+.4f} dB"
                for name, row in results.items()
            )
        )
    if args.compile:
        print(
            "torch.compile vs eager, bf16 training step: "
            + ", ".join(
                f"{name} {row['train_step_eager_s']:.3f} -> {row['train_step_compiled_s']:.3f} s "
                f"({row['train_step_eager_s'] / row['train_step_compiled_s']:.2f}x)"
                for name, row in results.items()
            )
        )
    if not (teacher["pretrained"] and student["pretrained"]):
        print(
            "note: untrained weights (no zoo checkpoint yet): times and sizes are real, bpp and PSNR are not."
        )
    report = {"images": [str(p) for p in paths], "quality": args.quality, "models": results, "ratios": ratios}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
