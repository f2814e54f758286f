"""Rate, quality and speed of our codecs and of classic ones, measured on the
same images in one run, with BD-rates and an RD plot.

    compressai-feds report IMAGES/ -o report/ [-a feds-student feds-teacher] [-q 1,2,3,4,5,6]
                           [--checkpoint CKPT ... --label NAME]... [--reference DIR] [--untrained]
                           [-m mse | ms-ssim]

Every codec really codes every image: ours write ``.feds`` files (rate: the
file's bytes, container included; quality: the decoded 8-bit image), the
classic codecs Pillow ships (JPEG 4:2:0 and 4:4:4, WebP, AVIF) write their
files at a sweep of quality settings. Writes ``results/<codec>.json`` in
CompressAI's results format, ``rd.png`` (ours solid, measured classics dashed,
published curves of ``--reference`` dotted) and ``report.md`` (BD-rates
against the measured AVIF curve and every published curve found, BD-rates
between our codecs, speed table). ``-m ms-ssim`` takes our zoo's MS-SSIM models and
compares every curve in MS-SSIM dB (``−10·log10(1 − MS-SSIM)``) against CompressAI's
published MS-SSIM curves.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

import torch
from PIL import Image, features
from tqdm import tqdm

from .bdrate import MS_SSIM_DB, Curve, CurveError, bd_psnr, bd_rate, quality_values
from .images import MIN_MS_SSIM_SIDE, SAMPLES, image_ms_ssim, image_paths, image_psnr, open_image, rgb_image
from .plots import plot_rd
from .quality import QUALITIES

__all__ = ["CodecRun", "classic_codecs", "learned_codecs", "measure", "write_report"]

#: Published curves drawn (dotted) and ranked when ``--reference`` holds them, by metric:
#: the classic codecs' files hold both qualities; CompressAI's models were trained for one.
PUBLISHED = {
    metric: {
        "vtm.json": "VTM (published)",
        "bpg_444_x265_ycbcr.json": "BPG 4:4:4 (published)",
        "av1.json": "AV1 (published)",
        f"compressai-mbt2018-mean_{metric}_cpu.json": f"mbt2018-mean{suffix} (published)",
        "webp.json": "WebP (published)",
        "jpeg.json": "JPEG (published)",
    }
    for metric, suffix in (("mse", ""), ("ms-ssim", " for MS-SSIM"))
}
#: The quality axis of each metric's report: a key of the results (or MS-SSIM dB) and its name.
AXES = {"mse": ("psnr-rgb", "PSNR RGB (dB)"), "ms-ssim": (MS_SSIM_DB, "MS-SSIM RGB (dB)")}
#: Published curves beside the repository (a checkout's ``../shared``), wherever the command runs.
DEFAULT_REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "rd-kodak"


@dataclass
class Setting:
    """One operating point: how to code an image, and the label of the point."""

    label: str
    encode: Callable[[Image.Image], bytes]
    decode: Callable[[bytes], Image.Image]


@dataclass
class CodecRun:
    """A codec's settings and, once measured, one averaged point per setting."""

    name: str
    kind: str  # "ours" or "classic"
    settings: list[Setting]
    points: list[dict[str, float]] = field(default_factory=list)

    def results(self) -> dict:
        keys = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")
        results = {k: [p[k] for p in self.points] for k in keys}
        if any(math.isnan(v) for v in results["ms-ssim-rgb"]):
            del results["ms-ssim-rgb"]  # images too small for MS-SSIM
        return {
            "name": self.name,
            "description": f"measured by compressai-feds report ({self.kind})",
            "settings": [s.label for s in self.settings],
            "results": results,
        }

    def quality(self, axis: str = "psnr-rgb") -> list[float]:
        """Each point's quality on ``axis`` (:func:`~.bdrate.quality_values`)."""
        return quality_values({k: [p[k] for p in self.points] for k in self.points[0]}, axis)

    def curve(self, axis: str = "psnr-rgb") -> Curve:
        return Curve.from_points(self.name, [p["bpp"] for p in self.points], self.quality(axis))


def _pillow_setting(image_format: str, quality: int, **options) -> Setting:
    def encode(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=image_format, quality=quality, **options)
        return buffer.getvalue()

    def decode(data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")

    return Setting(f"quality {quality}", encode, decode)


def classic_codecs() -> list[CodecRun]:
    """JPEG (4:2:0 and 4:4:4), WebP and AVIF through Pillow, each at a sweep of
    quality settings (formats this Pillow lacks are left out)."""
    sweep = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
    runs = [
        CodecRun("JPEG 4:2:0", "classic", [_pillow_setting("JPEG", q, subsampling=2) for q in sweep]),
        CodecRun("JPEG 4:4:4", "classic", [_pillow_setting("JPEG", q, subsampling=0) for q in sweep]),
    ]
    if features.check("webp"):
        runs.append(CodecRun("WebP", "classic", [_pillow_setting("WEBP", q) for q in sweep]))
    if features.check("avif"):
        runs.append(CodecRun("AVIF", "classic", [_pillow_setting("AVIF", q) for q in sweep]))
    return runs


def _learned_setting(codec, label: str) -> Setting:
    from .codec import compress_image, decompress_image

    def encode(image: Image.Image) -> bytes:
        return compress_image(codec, image, reconstruct=False)[0]

    def decode(data: bytes) -> Image.Image:
        return decompress_image(codec, data)

    return Setting(label, encode, decode)


def learned_codecs(
    architectures: list[str],
    qualities: list[int],
    curves: dict[str, list[Path]],
    untrained: bool = False,
    metric: str = "mse",
) -> tuple[list[CodecRun], list[str]]:
    """Our codecs: each architecture at each quality from the zoo's models for ``metric`` (or
    untrained weights), and one more curve per entry of ``curves`` (label ->
    checkpoints; a variable-rate checkpoint gives its curve a point at each quality).
    Returns the runs and one note per quality skipped for want of a checkpoint."""
    from compressai.zoo import image_models

    from .codec import Codec, CodecError

    runs, notes = [], []
    for architecture in architectures:
        if architecture not in image_models:
            raise ValueError(f"unknown architecture {architecture!r}")
        settings = []
        for quality in qualities:
            if untrained:
                torch.manual_seed(0)
                codec = Codec.untrained(architecture, quality)
            else:
                try:
                    codec = Codec.from_zoo(architecture, quality, metric)
                except CodecError:
                    notes.append(
                        f"{architecture} quality {quality}: no pretrained {metric} checkpoint, skipped"
                    )
                    continue
            settings.append(_learned_setting(codec, f"quality {quality}"))
        if settings:
            suffix = ", untrained" if untrained else ""
            runs.append(CodecRun(f"{architecture}{suffix}", "ours", settings))
    for label, checkpoints in curves.items():
        settings = []
        for path in checkpoints:
            try:
                codec = Codec.from_checkpoint(path)
            except CodecError as exc:
                raise ValueError(str(exc)) from None
            if not codec.net.variable_rate:
                settings.append(_learned_setting(codec, path.name))
                continue
            for quality in qualities:  # one variable-rate checkpoint: a point per quality
                codec = Codec.from_checkpoint(path, quality=quality)
                settings.append(_learned_setting(codec, f"{path.name}, quality {quality}"))
        runs.append(CodecRun(label, "ours", settings))
    return runs, notes


def measure(runs: list[CodecRun], images: list[Image.Image], progress: bool = True) -> None:
    """Codes every image with every setting of every run; fills ``run.points``
    with the means over the images."""
    total = sum(len(run.settings) for run in runs) * len(images)
    with tqdm(total=total, unit="code", disable=not progress, desc="report") as bar:
        for run in runs:
            run.points = []
            for setting in run.settings:
                bar.set_postfix_str(f"{run.name}, {setting.label}")
                per_image = []
                for image in images:
                    start = time.perf_counter()
                    data = setting.encode(image)
                    encoding = time.perf_counter() - start
                    start = time.perf_counter()
                    decoded = setting.decode(data)
                    decoding = time.perf_counter() - start
                    if decoded.size != image.size:
                        raise RuntimeError(f"{run.name}: decoded size {decoded.size} != {image.size}")
                    psnr_db, msssim = image_psnr(image, decoded), image_ms_ssim(image, decoded)
                    pixels = image.width * image.height
                    per_image.append((len(data) * 8 / pixels, psnr_db, msssim, encoding, decoding, pixels))
                    bar.update(1)
                columns = list(zip(*per_image, strict=True))
                run.points.append(
                    {
                        "bpp": mean(columns[0]),
                        "psnr-rgb": mean(columns[1]),
                        "ms-ssim-rgb": mean(columns[2]),
                        "encoding_time": mean(columns[3]),
                        "decoding_time": mean(columns[4]),
                        "megapixels": mean(columns[5]) / 1e6,
                    }
                )


def published_curves(reference: Path | None, metric: str = "mse") -> list[tuple[str, Curve]]:
    """The published curves of :data:`PUBLISHED` for ``metric`` found in ``reference``, on
    its quality axis."""
    if reference is None or not reference.is_dir():
        return []
    from .bdrate import load_curve

    return [
        (label, load_curve(reference / name, AXES[metric][0]))
        for name, label in PUBLISHED[metric].items()
        if (reference / name).is_file()
    ]


def _bd_cell(anchor: Curve | None, test: Curve) -> str:
    if anchor is None:
        return "n/a"
    try:
        return f"{bd_rate(anchor, test):+.1f}% ({bd_psnr(anchor, test):+.2f} dB)"
    except CurveError as exc:
        return f"n/a ({exc.reason})"


def _bd_table(rows: list[tuple[str, Curve | str]], anchors: dict[str, Curve | str | None]) -> list[str]:
    """A markdown table of each row curve's BD-rate against each anchor (a
    string instead of a curve says why there is none)."""
    lines = [
        "| codec | points | " + " | ".join(f"vs {name}" for name in anchors) + " |",
        "|---|---|" + "---|" * len(anchors),
    ]
    for name, curve in rows:
        if isinstance(curve, str):
            lines.append(f"| {name} | | " + " | ".join(f"n/a ({curve})" for _ in anchors) + " |")
            continue
        cells = [
            "anchor" if anchor is curve else _bd_cell(anchor if isinstance(anchor, Curve) else None, curve)
            for anchor in anchors.values()
        ]
        lines.append(f"| {name} | {len(curve.rate)} | " + " | ".join(cells) + " |")
    return lines


def _curve_or_reason(run: CodecRun, axis: str) -> Curve | str:
    try:
        return run.curve(axis)
    except CurveError as exc:
        return exc.reason


def _file_name(name: str) -> str:
    """A codec's name as a file name: ``JPEG 4:2:0`` -> ``jpeg-420``,
    ``feds-student, no teacher`` -> ``feds-student-no-teacher``."""
    return re.sub(r"[^a-z0-9.+]+", "-", name.lower().replace(":", "")).strip("-")


def write_report(
    runs: list[CodecRun],
    published: list[tuple[str, Curve]],
    out: Path,
    images: list[Path],
    notes: list[str],
    command: str,
    metric: str = "mse",
) -> str:
    """Writes the results JSON, the plot and ``report.md`` (qualities on ``metric``'s axis,
    :data:`AXES`); returns the markdown."""
    axis, axis_name = AXES[metric]
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    for run in runs:
        (results / f"{_file_name(run.name)}.json").write_text(json.dumps(run.results(), indent=2) + "\n")
    title = f"{len(images)} images from {images[0].parent.name}/"
    plot_rd(runs, published, out / "rd.png", title, axis, axis_name)

    curves: list[tuple[str, Curve | str]] = [
        (run.name + " (measured)", _curve_or_reason(run, axis)) for run in runs
    ]
    curves += published
    avif = next((c for name, c in curves if name == "AVIF (measured)" and isinstance(c, Curve)), None)
    anchors: dict[str, Curve | None] = {"AVIF (measured)": avif, **dict(published)}
    ours = [(run.name + " (measured)", _curve_or_reason(run, axis)) for run in runs if run.kind == "ours"]
    quality = "PSNR" if metric == "mse" else "MS-SSIM (dB)"
    lines = [
        "# Rate-distortion and speed report",
        "",
        f"{len(images)} images ({', '.join(p.name for p in images[:4])}{', ...' if len(images) > 4 else ''}). "
        "Measured codecs really coded every image; bpp from the file sizes, PSNR (RGB) and MS-SSIM on the "
        "decoded 8-bit images, averaged over the images. Published curves come from `--reference` and were "
        "measured elsewhere, on the Kodak set.",
        "",
        f"Command: `{command}`",
        "",
        f"## BD-rate (negative: fewer bits at equal {quality}; in brackets the {quality} gained at equal rate)",
        "",
        *_bd_table(curves, anchors),
    ]
    if len(ours) > 1:
        lines += ["", "Between our codecs:", "", *_bd_table(ours, dict(ours))]
    lines += [
        "",
        "## Speed (this machine, mean over all settings and images)",
        "",
        "| codec | encode ms/image | decode ms/image | encode Mpixel/s | decode Mpixel/s |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        encoding = mean(p["encoding_time"] for p in run.points)
        decoding = mean(p["decoding_time"] for p in run.points)
        megapixels = mean(p["megapixels"] for p in run.points)
        lines.append(
            f"| {run.name} | {encoding * 1e3:.1f} | {decoding * 1e3:.1f} | "
            f"{megapixels / encoding:.2f} | {megapixels / decoding:.2f} |"
        )
    lines += ["", f"## Points (bpp, {axis_name})", ""]
    for run in runs:
        lines.append(
            f"**{run.name}**: "
            + "; ".join(
                f"{s.label}: {p['bpp']:.3f} bpp, {value:.2f} dB"
                for s, p, value in zip(run.settings, run.points, run.quality(axis), strict=True)
            )
        )
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    lines += ["![RD plot](rd.png)", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compressai-feds report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "images", nargs="*", help="images or folders (default: the samples shipped in the package)"
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("report"), help="output folder")
    parser.add_argument("-a", "--architectures", nargs="*", default=["feds-student", "feds-teacher"])
    parser.add_argument("-q", "--qualities", default="1,2,3,4,5,6", help="comma-separated quality levels")
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        type=Path,
        action="append",
        default=[],
        help="checkpoints: one more curve (repeat the option for more curves)",
    )
    parser.add_argument(
        "--label", action="append", default=[], help="name of the --checkpoint curve, one per --checkpoint"
    )
    parser.add_argument(
        "--reference", type=Path, help=f"published curves (default: {DEFAULT_REFERENCE} if it exists)"
    )
    parser.add_argument(
        "-m",
        "--metric",
        choices=sorted(AXES),
        default="mse",
        help="our zoo's models for this metric, and the quality axis: PSNR (mse) or MS-SSIM in dB",
    )
    parser.add_argument("--no-classic", action="store_true", help="leave out JPEG/WebP/AVIF")
    parser.add_argument("--untrained", action="store_true", help="untrained weights (speed only)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        qualities = sorted({int(q) for q in args.qualities.split(",")})
        if not set(qualities) <= set(QUALITIES):
            raise ValueError(f"qualities must be in {QUALITIES[0]}..{QUALITIES[-1]}, got {args.qualities}")
        paths = image_paths(args.images, SAMPLES)
        images = [_rgb(p) for p in paths]
        if args.metric == "ms-ssim" and min(min(image.size) for image in images) < MIN_MS_SSIM_SIDE:
            raise ValueError(f"MS-SSIM's five scales need images of at least {MIN_MS_SSIM_SIDE} px a side")
        runs, notes = learned_codecs(
            args.architectures,
            qualities,
            checkpoint_curves(args.checkpoint, args.label),
            args.untrained,
            args.metric,
        )
        if not args.no_classic:
            runs += classic_codecs()
        if not runs:
            raise ValueError("nothing to measure: " + "; ".join(notes))
        reference = args.reference or (DEFAULT_REFERENCE if DEFAULT_REFERENCE.is_dir() else None)
        if args.reference is not None and not args.reference.is_dir():
            raise FileNotFoundError(f"reference folder {args.reference} does not exist")
        published = published_curves(reference, args.metric)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    measure(runs, images, progress=not args.no_progress)
    text = write_report(
        runs, published, args.output, paths, notes, "compressai-feds report " + shlex.join(argv), args.metric
    )
    print(text.split("## Points")[0].rstrip())
    print(f"\nwrote {args.output / 'report.md'}, {args.output / 'rd.png'}, {args.output / 'results'}/")
    return 0


def checkpoint_curves(groups: list[list[Path]], labels: list[str]) -> dict[str, list[Path]]:
    """Pair each ``--checkpoint`` group with its ``--label`` (in order); a single
    group may go unnamed ("checkpoints")."""
    if len(groups) == 1 and not labels:
        labels = ["checkpoints"]
    if len(labels) != len(groups):
        raise ValueError(f"{len(groups)} --checkpoint curves need as many --label names, got {len(labels)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"--label names must differ, got {labels}")
    return dict(zip(labels, groups, strict=True))


def _rgb(path: Path) -> Image.Image:
    try:
        return rgb_image(open_image(path))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
