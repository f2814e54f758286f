"""The plots: learning curves of a run, validation curves of a campaign,
rate-distortion curves of a report. Matplotlib is imported when one is drawn."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .quality import QUALITIES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .bdrate import Curve
    from .campaign import Job
    from .report import CodecRun

__all__ = ["plot_metrics", "plot_rd", "plot_validation"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kept_validation(record: dict) -> dict:
    """The figures of a validation record (a line of ``metrics.jsonl``) for the weights a
    run keeps: their moving average's (``"val_ema"``) where those validated better."""
    return min(record["val"], record.get("val_ema", record["val"]), key=lambda v: v["rd_loss"])


def plot_metrics(metrics_path: Path, output: Path) -> None:
    """Training loss parts and validation RD loss / PSNR (a variable-rate run: RD
    loss per quality, raw weights and their moving average) against steps, with
    the stage boundaries, as a PNG."""
    plt = _pyplot()

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    train = [r for r in records if "val" not in r]
    val = [r for r in records if "val" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "bpp_loss", "bpp_z", "feature_loss", "channel_loss"):
        points = [(r["step"], r[key]) for r in train if key in r]
        if points:
            axes[0].plot(*zip(*points, strict=True), label=key)
    axes[0].set(xlabel="step", title="training loss", yscale="log")
    boundaries = [b["step"] for a, b in zip(train, train[1:], strict=False) if a["stage"] != b["stage"]]
    for ax in axes:
        for step in boundaries:
            ax.axvline(step, color="gray", linestyle=":", linewidth=1)
    axes[0].legend()
    levels = [key for key in val[0]["val"] if key.startswith("q")] if val else []
    if levels:  # a variable-rate run: each quality's RD loss (they differ 12-fold), raw and average
        for level, colour in zip(levels, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
            for kind, style in (("val", "o-"), ("val_ema", "s--")):
                points = [(r["step"], r[kind][level]["rd_loss"]) for r in val if kind in r]
                label = level if kind == "val" else f"{level} moving average"
                axes[1].plot(*zip(*points, strict=True), style, color=colour, label=label, markersize=3)
        axes[1].set(yscale="log", ylabel="RD loss")
        axes[1].legend(fontsize="small")
    elif val:
        steps = [r["step"] for r in val]
        lines = axes[1].plot(steps, [r["val"]["rd_loss"] for r in val], "o-", label="RD loss")
        twin = axes[1].twinx()
        lines += twin.plot(
            steps, [r["val"]["psnr"] for r in val], "s--", color="tab:green", label="PSNR (dB)"
        )
        twin.set_ylabel("PSNR (dB)")
        axes[1].legend(lines, [line.get_label() for line in lines], loc="upper left")
    axes[1].set(xlabel="step", title="validation (dotted: stage boundaries)")
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


#: Line style and colour of each role in :func:`plot_validation`.
VALIDATION_STYLES = {
    "teacher": ("-", "tab:blue"),
    "FEDS": ("-.", "tab:green"),
    "no teacher": ("--", "tab:orange"),
}


def _validation_points(job: Job, logs: Path) -> dict[int, tuple[list[int], list[float]]]:
    """A job's validation RD losses against its steps, per quality: a variable-rate job
    validates at several ("q1", ...); with a moving average of its weights, the better of
    the two (what it would export)."""
    metrics = logs / job.name / "metrics.jsonl"
    if not metrics.is_file():
        return {}
    val = [r for r in map(json.loads, metrics.read_text().splitlines()) if "val" in r]
    chosen = [(r["step"], kept_validation(r)) for r in val]
    curves = {}
    for quality in [job.quality] if job.quality else QUALITIES:
        points = [
            (step, figures if job.quality else figures.get(f"q{quality}", {})) for step, figures in chosen
        ]
        points = [(step, figures["rd_loss"]) for step, figures in points if "rd_loss" in figures]
        if points:
            steps, losses = (list(values) for values in zip(*points, strict=True))
            curves[quality] = (steps, losses)
    return curves


def _role(job: Job) -> str:
    return "teacher" if job.model == "feds-teacher" else ("no teacher" if job.teacher is None else "FEDS")


def plot_validation(jobs: list[Job], logs: Path, output: Path, levels: Sequence[Job] = ()) -> None:
    """Every job's validation RD loss against its steps, one panel per quality:
    teachers, FEDS students and no-teacher students of a quality side by side.
    ``levels``: jobs drawn as their last validation only, a dotted level across the
    panel (an earlier zoo, the one to beat; seed 0 only)."""
    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter

    curves: dict[int, list[tuple[Job, list[int], list[float]]]] = {}
    for job in jobs:
        for quality, (steps, losses) in _validation_points(job, logs).items():
            curves.setdefault(quality, []).append((job, steps, losses))
    level_lines: dict[int, list[tuple[Job, float]]] = {}
    for job in levels:
        if job.seed == 0:
            for quality, (_, losses) in _validation_points(job, logs).items():
                level_lines.setdefault(quality, []).append((job, losses[-1]))
    if not curves:
        return
    qualities = sorted(curves)
    columns = min(3, len(qualities))
    rows = -(-len(qualities) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(qualities) :]:
        ax.remove()
    for ax, quality in zip(axes.flat, qualities, strict=False):
        drawn = [loss for _, _, losses in curves[quality] for loss in losses]
        drawn += [level for _, level in level_lines.get(quality, [])]
        best, worst = min(drawn), max(drawn)
        for job, steps, losses in curves[quality]:
            linestyle, colour = VALIDATION_STYLES[_role(job)]
            seed_style = {"marker": "o"} if job.seed == 0 else {"marker": "s", "alpha": 0.55}
            ax.plot(steps, losses, linestyle, color=colour, markersize=3, label=job.name, **seed_style)
        for job, level in level_lines.get(quality, []):
            _, colour = VALIDATION_STYLES[_role(job)]
            ax.axhline(level, linestyle=":", color=colour, linewidth=1, label=f"{job.name} (end) {level:.3g}")
        ax.set(xlabel="step", title=f"q{quality} (log axis, cut at 2x the best)", yscale="log")
        ax.set_ylim(0.98 * best, 1.02 * min(worst, 2 * best))
        for axis_format in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_format(FormatStrFormatter("%.3g"))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda step, _: f"{step / 1000:g}k"))
        ax.legend(fontsize="small")
    for row in axes:
        row[0].set_ylabel("validation RD loss")
    fig.suptitle(
        "solid blue: teacher, dash-dot green: FEDS student, dashed orange: no-teacher student; pale squares: seed 1"
        + ("; dotted: the end of an earlier zoo's jobs" if level_lines else "")
    )
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


#: One colour per codec family, shared by its measured and published curves.
FAMILY_COLOURS = {
    "jpeg": "tab:orange",
    "webp": "tab:purple",
    "avif": "tab:brown",
    "av1": "tab:brown",
    "vtm": "tab:pink",
    "bpg": "tab:gray",
    "mbt2018": "tab:cyan",
}
OUR_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:olive")
#: Our fifth to eighth curves reuse the colours with another line and marker, and so on.
OUR_LINES = (("-", "o"), ("-.", "s"), ("--", "^"), (":", "D"))


def our_style(index: int) -> dict[str, object]:
    """Line style of our ``index``-th curve: distinct for the first 16."""
    linestyle, marker = OUR_LINES[index // len(OUR_COLOURS) % len(OUR_LINES)]
    return {"color": OUR_COLOURS[index % len(OUR_COLOURS)], "linestyle": linestyle, "marker": marker}


def _colour(name: str) -> str:
    key = name.lower().split()[0]
    return next((colour for family, colour in FAMILY_COLOURS.items() if key.startswith(family)), "black")


def _draw_curves(
    ax,
    runs: list[CodecRun],
    published: list[tuple[str, Curve]],
    ours: list[str],
    axis: str = "psnr-rgb",
    axis_name: str = "PSNR RGB (dB)",
) -> None:
    for run in runs:
        bpp = [p["bpp"] for p in run.points]
        quality = run.quality(axis)
        order = np.argsort(bpp)
        if run.kind == "ours":
            style = {"linewidth": 2.2, **our_style(ours.index(run.name))}
        else:
            style = {
                "linestyle": "--",
                "marker": "s" if run.name.endswith("4:4:4") else ".",
                "color": _colour(run.name),
            }
        ax.plot(np.array(bpp)[order], np.array(quality)[order], label=f"{run.name} (measured)", **style)
    for label, curve in published:
        ax.plot(
            curve.rate,
            curve.quality,
            linestyle=":",
            marker="x",
            markersize=4,
            label=label,
            color=_colour(label),
        )
    ax.set(xlabel="bits per pixel", ylabel=axis_name)
    ax.grid(alpha=0.3)


def plot_rd(
    runs: list[CodecRun],
    published: list[tuple[str, Curve]],
    output: Path,
    title: str,
    axis: str = "psnr-rgb",
    axis_name: str = "PSNR RGB (dB)",
) -> None:
    """The RD plot, qualities on ``axis`` (named ``axis_name``): every curve up to 2 bpp and,
    when our codecs were measured, a second panel zoomed on the rates they span."""
    plt = _pyplot()

    ours = [run.name for run in runs if run.kind == "ours"]
    ours_points = [p for run in runs if run.kind == "ours" for p in run.points]
    fig, axes = plt.subplots(1, 2 if ours_points else 1, figsize=(15 if ours_points else 8, 6), squeeze=False)
    for ax in axes[0]:
        _draw_curves(ax, runs, published, ours, axis, axis_name)
    full = axes[0][0]
    measured_bpp = [p["bpp"] for run in runs for p in run.points]
    if measured_bpp:
        full.set_xlim(0, min(max(measured_bpp) * 1.05, 2.0))
    full.set_title(title)
    full.legend(fontsize=8, loc="lower right")
    if ours_points:
        zoom = axes[0][1]
        low, high = min(p["bpp"] for p in ours_points), max(p["bpp"] for p in ours_points)
        quality = [q for run in runs if run.kind == "ours" for q in run.quality(axis)]
        zoom.set_xlim(low / 1.5, high * 1.5)
        zoom.set_ylim(min(quality) - 3, max(quality) + 4)
        zoom.set_title("zoomed on our codecs' rates")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
