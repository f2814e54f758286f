"""Issue 40, step 1: which distillation term pulls the student against its rate?

On the v2 FEDS student and its teacher (``zoo/v2/``), the gradient of each loss term on the
analysis transform ``g_a`` and the synthesis transform ``g_s``, at q1, q3 and q6: its norm over
the rate-distortion term's, and its cosine with the gradient of the rate alone (a negative
cosine: descending the term raises the rate) and with the rate-distortion gradient. Terms at the
weights the v2 recipe gives them (feature 0.3, channel 10) and the alternatives of pilot N
(``run.py`` beside this folder's sibling ``feds-terms``).

The v2 checkpoints hold no adapters: they are fitted first, on the student's features detached
(``FIT_STEPS`` steps of Adam at 1e-3 on training crops at random qualities), as the trainer fits
them. Gradients are summed over ``BATCHES`` batches of 8 crops of 128 px per quality, in float32,
the student in training mode (noise in place of rounding), as in training.

    OMP_NUM_THREADS=1 python zoo/pilots/feds-gradients/measure.py   # from the repository root; writes result.json
    OMP_NUM_THREADS=1 python zoo/pilots/feds-gradients/measure.py CHECKPOINT NAME   # a trainer checkpoint

A trainer checkpoint (e.g. pilot N's trunk at 4,000 steps) brings its adapters, which the fit
continues (the standardized form's adapter starts from the spatial form's); the result is
``result-NAME.json``.
"""

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from compressai_feds.checkpoint_io import exports_of, load_codec
from compressai_feds.data import ImageCrops, StreamSampler
from compressai_feds.losses import (
    EntropyWeightedChannelLoss,
    FeatureAlignmentLoss,
    PerImageRateDistortionLoss,
    channel_entropy_bits,
    reconstruction_distillation,
)
from compressai_feds.quality import LAMBDAS

HERE = Path(__file__).resolve().parent
DATA = Path("runs/campaign/data/train")
FIT_STEPS, BATCHES, QUALITIES = 150, 4, (1, 3, 6)
MEAN_LAMBDA = sum(LAMBDAS["mse"].values()) / len(LAMBDAS["mse"])


def crops(seed: int):
    dataset = ImageCrops(DATA, 128, cache=True)
    return iter(DataLoader(dataset, batch_size=8, sampler=StreamSampler(len(dataset), 8, seed, 0, 0, 1)))


def main(checkpoint: Path | None, result_name: str) -> None:
    torch.manual_seed(0)
    (teacher_path,) = exports_of(Path("zoo/v2"), "feds-teacher-mse")
    teacher = load_codec(teacher_path).eval().requires_grad_(False)
    if checkpoint is None:
        (checkpoint,) = exports_of(Path("zoo/v2"), "feds-student-mse")
    student = load_codec(checkpoint).train()
    student_channels, teacher_channels = student.feature_channels(), teacher.feature_channels()
    feature = FeatureAlignmentLoss({n: c for n, c in student_channels.items() if n != "y"}, teacher_channels)
    channels = {
        form: EntropyWeightedChannelLoss(student.M, teacher.M, form=form)
        for form in ("spatial_kl", "standardized_kl")
    }
    adapters = torch.load(checkpoint, map_location="cpu", weights_only=True).get("adapters", {})
    if adapters:  # as the trainer left them
        feature.adapters.load_state_dict(
            {
                k.removeprefix("feature_loss.adapters."): v
                for k, v in adapters.items()
                if k.startswith("feature_loss.")
            }
        )
        spatial = {
            k.removeprefix("channel_loss."): v for k, v in adapters.items() if k.startswith("channel_loss.")
        }
        for loss in channels.values():
            loss.load_state_dict(spatial)
    adapters = [*feature.parameters(), *(p for loss in channels.values() for p in loss.parameters())]
    optimizer = torch.optim.Adam(adapters, lr=1e-3)
    batches = crops(seed=1)
    for step in range(FIT_STEPS):
        x = next(batches)
        quality = torch.randint(1, 7, (x.size(0),))
        with torch.no_grad():
            s = student(x, return_features=True, quality=quality)["features"]
            t = teacher(x, return_features=True, quality=quality)
        bits = channel_entropy_bits(t["likelihoods"]["y"])
        loss = feature(s, t["features"]) + sum(c(s["y"], t["features"]["y"], bits) for c in channels.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            print(f"adapters, step {step}: {loss.item():.4f}", file=sys.stderr)
    for p in adapters:
        p.requires_grad_(False)

    rd_loss = PerImageRateDistortionLoss()
    parts = {"g_a": list(student.g_a.parameters()), "g_s": list(student.g_s.parameters())}
    result = {}
    for q in QUALITIES:
        lmbda = LAMBDAS["mse"][q]
        sums: dict[str, dict[str, torch.Tensor]] = {}
        batches = crops(seed=2)  # the same crops at every quality
        for _ in range(BATCHES):
            x = next(batches)
            quality = torch.full((x.size(0),), q)
            out = student(x, return_features=True, quality=quality)
            with torch.no_grad():
                t = teacher(x, return_features=True, quality=quality)
            bits = channel_entropy_bits(t["likelihoods"]["y"])
            rd = rd_loss(out, x, torch.full((x.size(0),), lmbda))
            y_s, y_t = out["features"]["y"], t["features"]["y"]
            standardized = channels["standardized_kl"](y_s, y_t, bits)
            terms = {
                "rd": rd["loss"],
                "rate": rd["bpp_loss"],
                "feature x0.3": 0.3 * feature(out["features"], t["features"]),
                "channel spatial_kl x10": 10 * channels["spatial_kl"](y_s, y_t, bits),
                "channel standardized_kl x10": 10 * standardized,
                "channel standardized_kl x10, lambda-following": 10 * standardized * lmbda / MEAN_LAMBDA,
                "reconstruction x1": reconstruction_distillation(out["x_hat"], t["x_hat"], lmbda),
            }
            for name, value in terms.items():
                for part, params in parts.items():
                    grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                    flat = torch.cat(
                        [
                            (g if g is not None else torch.zeros_like(p)).flatten()
                            for g, p in zip(grads, params, strict=True)
                        ]
                    )
                    sums.setdefault(name, {}).setdefault(part, torch.zeros_like(flat)).add_(flat)
        result[f"q{q}"] = {
            name: {
                part: {
                    "norm_over_rd": (g.norm() / sums["rd"][part].norm()).item(),
                    "cos_rate": torch.cosine_similarity(g, sums["rate"][part], dim=0).item(),
                    "cos_rd": torch.cosine_similarity(g, sums["rd"][part], dim=0).item(),
                }
                for part, g in by_part.items()
            }
            for name, by_part in sums.items()
        }
        print(f"q{q} done", file=sys.stderr)
    (HERE / f"{result_name}.json").write_text(json.dumps(result, indent=1) + "\n")
    for part in parts:
        print(f"\n{part}: norm / RD's, cosine with the rate's gradient, cosine with RD's (q1 | q3 | q6)")
        for name in result["q1"]:
            cells = [result[f"q{q}"][name][part] for q in QUALITIES]
            print(
                f"{name:48} "
                + " | ".join(
                    f"{c['norm_over_rd']:6.2f} {c['cos_rate']:+.2f} {c['cos_rd']:+.2f}" for c in cells
                )
            )


if __name__ == "__main__":
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else None,
        f"result-{sys.argv[2]}" if len(sys.argv) > 2 else "result",
    )
