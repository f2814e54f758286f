"""``compressai-feds``: one command with a sub-command per job.

    compressai-feds encode IMAGE... [-o FILE|DIR] [-a feds-student] [-q 3 | --target-bpp B | --target-psnr P]
                           [--checkpoint CKPT] [--metrics]
    compressai-feds decode FILE...  [-o IMAGE.png|DIR] [--checkpoint CKPT]
    compressai-feds info FILE...
    compressai-feds train ...       # the FEDS trainer (see compressai_feds.train)
    compressai-feds campaign ...    # the zoo's training campaign (see compressai_feds.campaign)
    compressai-feds bd-rate ANCHOR.json TEST.json...  # Bjøntegaard deltas of results JSON
    compressai-feds report IMAGES/ -o report/         # RD/speed of ours and classic codecs, BD table, plot
    compressai-feds benchmark ...   # teacher vs student, measured in one run

Every failure is one line on stderr (``error: PATH: reason``) and a non-zero
exit status; no partial output file is left behind.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from tqdm import tqdm

from .quality import LAMBDAS, MAX_QUALITY, MIN_QUALITY

if TYPE_CHECKING:
    from .codec import RateControl

SUFFIX = ".feds"


def _output_paths(inputs: list[Path], output: Path | None, suffix: str) -> list[Path]:
    """Where each input's result goes: ``-o`` itself for one input (unless it is
    a folder), else ``-o/NAME.suffix``, else beside the input."""
    if output is not None and len(inputs) == 1 and not output.is_dir():
        return [output]
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        return [output / (p.stem + suffix) for p in inputs]
    return [p.with_suffix(suffix) for p in inputs]


def _target_outcome(choice: RateControl, target_bpp: float | None, target_psnr: float | None) -> str:
    """Whether the quality chosen meets the target; where none does, the nearest the model
    comes on this image (its rate at quality 1, its PSNR at quality 6)."""
    if target_bpp is not None:
        target, nearest = (
            f"{target_bpp} bpp",
            f"the lowest rate this model reaches on this image is {choice.bpp:.4f} bpp",
        )
    else:
        target, nearest = (
            f"{target_psnr} dB",
            f"the highest PSNR this model reaches on this image is {choice.psnr:.2f} dB",
        )
    return f"meets {target}" if choice.met else f"CANNOT meet {target}: {nearest}"


def _run_each(paths: list[Path], job: Callable[[Path], str], desc: str) -> int:
    """Runs ``job`` on every path, one line of output each; returns the exit status."""
    failures = 0
    for path in tqdm(paths, desc=desc, unit="file", disable=len(paths) < 2 or None):
        try:
            line = job(path)
        except (OSError, ValueError, Image.DecompressionBombError, RuntimeError) as exc:
            failures += 1
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            tqdm.write(
                f"error: {path}: {reason.splitlines()[0] if reason else type(exc).__name__}", file=sys.stderr
            )
            continue
        tqdm.write(line)
    return 1 if failures else 0


def encode(args: argparse.Namespace) -> int:
    from .bdrate import ms_ssim_db
    from .codec import Codec, CodecError, compress_image, compress_to_target
    from .files import write_atomically
    from .images import image_ms_ssim, image_psnr, open_image

    targeted = args.target_bpp is not None or args.target_psnr is not None
    quality = 3 if args.quality is None else args.quality
    try:
        codec = (
            Codec.from_checkpoint(args.checkpoint, args.architecture, args.metric, quality)
            if args.checkpoint
            else Codec.from_zoo(args.architecture, quality, args.metric)
        )
        if targeted and not codec.net.variable_rate:
            raise CodecError(f"{codec.describe()} codes at one quality: targets need a variable-rate model")
    except (CodecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    outputs = dict(zip(args.inputs, _output_paths(args.inputs, args.output, SUFFIX), strict=True))

    def job(path: Path) -> str:
        image = open_image(path)
        start = time.perf_counter()
        if targeted:
            data, reconstruction, choice = compress_to_target(
                codec, image, args.target_bpp, args.target_psnr, args.tile_size
            )
            chosen = (
                f", quality {choice.quality:g} ({_target_outcome(choice, args.target_bpp, args.target_psnr)})"
            )
        else:
            data, reconstruction = compress_image(codec, image, args.tile_size, reconstruct=args.metrics)
            chosen = ""
        seconds = time.perf_counter() - start
        write_atomically(outputs[path], lambda tmp: tmp.write_bytes(data))
        line = f"{path} -> {outputs[path]}: {len(data) * 8 / (image.width * image.height):.4f} bpp{chosen}, {seconds:.2f} s"
        if not args.metrics:
            return line
        if reconstruction is None:
            reconstruction = compress_image(codec, image, args.tile_size)[1]
        line += f", PSNR {image_psnr(image, reconstruction):.2f} dB"
        similarity = image_ms_ssim(image, reconstruction)
        return line + (
            "" if math.isnan(similarity) else f", MS-SSIM {similarity:.4f} ({ms_ssim_db(similarity):.2f} dB)"
        )

    return _run_each(args.inputs, job, "encode")


def decode(args: argparse.Namespace) -> int:
    from .codec import Codec, decompress_streams
    from .container import unpack
    from .files import write_atomically

    codecs: dict[tuple, Codec] = {}
    outputs = dict(zip(args.inputs, _output_paths(args.inputs, args.output, ".png"), strict=True))

    def job(path: Path) -> str:
        header, streams = unpack(path.read_bytes())
        key = (header.architecture, header.metric, header.quality)
        if key not in codecs:
            if args.checkpoint:
                codecs[key] = Codec.from_checkpoint(args.checkpoint, header.architecture, header.metric)
            elif header.from_checkpoint:
                raise ValueError(f"coded with a checkpoint ({header.model_name}): pass it with --checkpoint")
            else:
                codecs[key] = Codec.from_zoo(header.architecture, header.quality, header.metric)
        codec = codecs[key]
        start = time.perf_counter()
        image = decompress_streams(codec, header, streams)
        seconds = time.perf_counter() - start
        target = outputs[path]
        image_format = Image.registered_extensions().get(target.suffix.lower(), "PNG")
        if image_format == "PNG" and image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            raise ValueError(f"PNG cannot hold mode {image.mode}: decode to a .tiff instead (-o NAME.tiff)")
        write_atomically(target, lambda tmp: image.save(tmp, format=image_format))
        return f"{path} -> {outputs[path]}: {image.width}x{image.height} {image.mode}, {seconds:.2f} s"

    return _run_each(args.inputs, job, "decode")


def info(args: argparse.Namespace) -> int:
    from .container import unpack

    def job(path: Path) -> str:
        data = path.read_bytes()
        header, streams = unpack(data)
        payload = sum(len(s) for s in streams)
        return (
            f"{path}: {header.width}x{header.height} {header.mode}, {header.model_name}, "
            f"tiles {header.tile_size}, {len(streams)} bitstreams, {len(data)} bytes "
            f"({len(data) - payload} of container), {len(data) * 8 / (header.width * header.height):.4f} bpp"
        )

    return _run_each(args.inputs, job, "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compressai-feds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    enc = commands.add_parser("encode", help="compress images to .feds files")
    enc.add_argument("inputs", nargs="+", type=Path)
    enc.add_argument("-o", "--output", type=Path, help="output file (one input) or folder")
    enc.add_argument("-a", "--architecture", default="feds-student", choices=["feds-student", "feds-teacher"])
    rate = enc.add_mutually_exclusive_group()
    rate.add_argument(
        "-q",
        "--quality",
        type=float,
        help=f"{MIN_QUALITY} (lowest rate) to {MAX_QUALITY}, default 3; a variable-rate model takes any real value between",
    )
    rate.add_argument(
        "--target-bpp",
        type=float,
        help="per image, the highest quality whose file takes at most B bits per pixel (variable-rate models)",
    )
    rate.add_argument(
        "--target-psnr",
        type=float,
        help="per image, the lowest quality whose decoded image reaches P dB PSNR-RGB (variable-rate models)",
    )
    enc.add_argument("-m", "--metric", default="mse", choices=sorted(LAMBDAS))
    enc.add_argument("--checkpoint", type=Path, help="use these weights instead of the zoo's")
    enc.add_argument("--tile-size", type=int, default=1024, help="side of the independently coded tiles")
    enc.add_argument("--metrics", action="store_true", help="also print the decoded image's PSNR and MS-SSIM")
    enc.set_defaults(run=encode)
    dec = commands.add_parser("decode", help="decompress .feds files to PNG")
    dec.add_argument("inputs", nargs="+", type=Path)
    dec.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output image (one input; its suffix picks the format) or folder (PNG)",
    )
    dec.add_argument("--checkpoint", type=Path, help="the weights the files were coded with")
    dec.set_defaults(run=decode)
    inf = commands.add_parser("info", help="describe .feds files")
    inf.add_argument("inputs", nargs="+", type=Path)
    inf.set_defaults(run=info)
    for name in ("train", "campaign", "bd-rate", "report", "benchmark"):
        commands.add_parser(name, add_help=False, help=f"see compressai-feds {name} --help")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from .train import main as train

        return train(argv[1:])
    if argv[:1] == ["campaign"]:
        from .campaign import main as campaign

        return campaign(argv[1:])
    if argv[:1] == ["bd-rate"]:
        from .bdrate import main as bd_rate

        return bd_rate(argv[1:])
    if argv[:1] == ["report"]:
        from .report import main as report

        return report(argv[1:])
    if argv[:1] == ["benchmark"]:
        from .benchmark import main as benchmark

        benchmark(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
