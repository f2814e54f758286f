"""The training campaign on a tiny recipe: dependency order, stop, resume from
the run folders or from the exported weights alone, exports that load."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_main, run_python, sample_crops

from compressai_feds.campaign import Campaign, Recipe, split_validation, status_line
from compressai_feds.campaign import main as campaign_main
from compressai_feds.checkpoint_io import exports_of, read_checkpoint
from compressai_feds.plots import plot_validation

TINY_TEACHER = {"N": 32, "M": 64, "groups": [16, 48], "num_res_blocks": 1}
TINY_STUDENT = {"N": 16, "M": 32, "groups": [8, 24], "num_res_blocks": 1}
REPO_RECIPE = Path(__file__).resolve().parent.parent / "zoo" / "recipe.json"
#: Long enough that the tests' stops (at a checkpoint every 2 steps) land mid-run.
TEACHER_STEPS = 40


def stage(name, steps, feature_weight=0.0, channel_weight=0.0):
    return {
        "name": name,
        "steps": steps,
        "lr": 1e-4,
        "feature_weight": feature_weight,
        "channel_weight": channel_weight,
    }


def tiny_recipe(data: Path, teacher_steps: int = TEACHER_STEPS) -> dict:
    student_stages = [stage("feature_alignment", 2, 1.0), stage("channel_distillation", 2, 1.0, 1.0)]
    return {
        "data": str(data),
        "validation_every": 3,
        "validation_offset": 1,
        "threads": 2,
        "export_minutes": 30,
        "storage": "fp16",
        "settings": {
            "batch_size": 2,
            "crop_size": 64,
            "workers": 0,
            "log_every": 1,
            "checkpoint_every": 2,
            "val_every": 1000,
        },
        "jobs": [
            {
                "name": "teacher",
                "model": "feds-teacher",
                "quality": 3,
                "export": "feds-teacher-mse-3",
                "settings": {"student_args": TINY_TEACHER},
                "stages": [stage("rate_distortion", teacher_steps)],
            },
            {
                "name": "baseline",
                "model": "feds-student",
                "quality": 3,
                "export": "ablation/feds-student-noteacher-mse-3",
                "settings": {"student_args": TINY_STUDENT},
                "stages": student_stages,
            },
            {
                "name": "student",
                "model": "feds-student",
                "quality": 3,
                "export": "feds-student-mse-3",
                "teacher": "teacher",
                "settings": {"student_args": TINY_STUDENT},
                "stages": student_stages,
            },
            {
                "name": "student-q4",
                "model": "feds-student",
                "quality": 4,
                "export": "feds-student-mse-4",
                "init": "student",
                "stages": [stage("fine_tuning", 2)],
            },
        ],
    }


@pytest.fixture
def campaign_dir(tmp_path):
    images = tmp_path / "images"
    for k, size in enumerate((96, 80, 72)):
        sample_crops(images / str(k), size=size, count=1)
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "recipe.json").write_text(json.dumps(tiny_recipe(images)))
    return tmp_path


def campaign(root: Path) -> list[str]:
    return [
        sys.executable, "-m", "compressai_feds.campaign", str(root / "zoo" / "recipe.json"),
        "--runs", str(root / "runs"),
    ]  # fmt: skip


def state(root: Path, job: str) -> dict:
    return json.loads((root / "zoo" / "training" / job / "state.json").read_text())


def test_validation_rule_is_fixed_and_disjoint():
    images = [Path(f"img{i:03d}.png") for i in range(100)]
    train, val = split_validation(list(reversed(images)), every=33, offset=16)
    assert [p.name for p in val] == ["img016.png", "img049.png", "img082.png"]
    assert len(train) == 97 and not set(train) & set(val)


def test_the_zoo_recipe_loads_and_orders_its_jobs():
    recipe = Recipe.load(REPO_RECIPE)
    names = [job.name for job in recipe.jobs]
    for job in recipe.jobs:
        assert all(names.index(need) < names.index(job.name) for need in job.needs)
    exports = [job.export for job in recipe.jobs]
    assert len(set(exports)) == len(exports)
    assert {f"feds-{a}-mse-{q}" for a in ("teacher", "student") for q in range(1, 7)} <= set(exports)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["jobs"].append(dict(r["jobs"][0])), "unique"),
        (lambda r: r["jobs"][0].update(init="nowhere"), "unknown jobs"),
        (lambda r: r["jobs"][2].update(init="student-q4"), "circular"),
        (lambda r: r["jobs"][0].update(threads=3), "threads"),
        (lambda r: r["jobs"][0].update(export="feds-teacher-mse-4"), "but exports as"),
        (lambda r: r["jobs"][0].update(export="feds-student-mse-3"), "but exports as"),
    ],
)
def test_bad_recipes_are_refused_in_one_line(campaign_dir, change, message, capsys):
    recipe = tiny_recipe(campaign_dir / "images")
    change(recipe)
    path = campaign_dir / "bad.json"
    path.write_text(json.dumps(recipe))
    result = run_main(campaign_main, path, capsys=capsys)
    assert (
        result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    )


def test_fewer_threads_than_a_finished_job_used_are_allowed(campaign_dir, capsys):
    recipe = tiny_recipe(campaign_dir / "images")
    recipe["jobs"][0]["threads"] = 2
    (campaign_dir / "zoo" / "recipe.json").write_text(json.dumps(recipe))
    root = campaign_dir
    args = [root / "zoo" / "recipe.json", "--runs", root / "runs", "--threads", "1", "--status"]
    refused = run_main(campaign_main, *args, capsys=capsys)
    assert refused.returncode == 2 and "jobs ['teacher'] want more than the 1 threads given" in refused.stderr
    done = campaign_dir / "zoo" / "training" / "teacher"
    done.mkdir(parents=True)
    (done / "state.json").write_text(json.dumps({"status": "finished", "step": TEACHER_STEPS}))
    allowed = run_main(campaign_main, *args, capsys=capsys)
    assert allowed.returncode == 0 and "finished" in allowed.stdout, allowed.stderr


def test_time_left_is_read_at_the_median_logged_speed(campaign_dir):
    recipe = Recipe.load(campaign_dir / "zoo" / "recipe.json")
    campaign = Campaign(recipe, campaign_dir / "runs", campaign_dir / "zoo", progress=False)
    teacher = campaign.jobs["teacher"]
    assert campaign.minutes_left(teacher) == 0  # no run yet
    records = [{"step": 10, "it_per_s": 0.1}, {"step": 20, "it_per_s": 0.01}, {"step": 25, "it_per_s": 0.1}]
    records.append({"step": 25, "val": {"rd_loss": 1.0}})
    run = campaign.run_dir(teacher)
    run.mkdir(parents=True)
    # the last line is still being written
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 30, "it')
    assert campaign.minutes_left(teacher) == pytest.approx((TEACHER_STEPS - 25) / 0.1 / 60)
    line = status_line(
        teacher, {"status": "running", "step": 25, "threads": 2}, campaign.minutes_left(teacher)
    )
    assert f" 25/{TEACHER_STEPS} steps" in line and "(~0.0 h left on 2 threads)" in line
    fixed_rate = {"status": "running", "step": 25, "last_val": {"step": 20, "val": {"rd_loss": 1.25}}}
    assert status_line(teacher, fixed_rate).endswith("val RD loss 1.2500 at step 20")
    at_each = {f"q{q}": {"rd_loss": q / 10} for q in range(1, 7)}
    variable_rate = {**fixed_rate, "last_val": {"step": 20, "val": {"rd_loss": 0.35, **at_each}}}
    expected = "val RD loss q1-q6 0.1000 / 0.2000 / 0.3000 / 0.4000 / 0.5000 / 0.6000 at step 20"
    assert status_line(teacher, variable_rate).endswith(expected)


def stop_when_checkpointed(process: subprocess.Popen, checkpoint: Path, step: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if torch.load(checkpoint, weights_only=True)["step"] >= step:
                break
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0, process.stdout.read()


def test_a_stop_while_the_jobs_still_start_is_a_stop_not_a_failure(campaign_dir):
    process = subprocess.Popen(
        campaign(campaign_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    started = [process.stdout.readline() for _ in range(2)]  # both first jobs launched, still importing
    assert all(" starts (" in line for line in started), started
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    assert "failed" not in output and "unfinished: teacher, baseline" in output
    assert {state(campaign_dir, job)["status"] for job in ("teacher", "baseline")} == {"stopped"}


def read_until(process: subprocess.Popen, text: str) -> list[str]:
    """The campaign's output lines up to the first that contains ``text``."""
    lines = []
    while not lines or text not in lines[-1]:
        lines.append(process.stdout.readline())
        assert lines[-1], f"the campaign ended before saying {text!r}: {lines}"
    return lines


def test_a_job_left_alone_takes_the_idle_thread(campaign_dir):
    recipe = tiny_recipe(campaign_dir / "images", teacher_steps=1000)  # stopped long before its end
    recipe["widen_minutes"] = 0
    recipe["jobs"] = recipe["jobs"][:2]  # the teacher and the no-teacher student, 1 thread each
    (campaign_dir / "zoo" / "recipe.json").write_text(json.dumps(recipe))
    process = subprocess.Popen(
        campaign(campaign_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # the student finishes first; then nothing can use its thread: the teacher restarts with it
    lines = read_until(process, "teacher resumes from its run folder (2 threads")
    assert "baseline: exported step 4 of 4 (finished)" in "".join(lines)
    assert "teacher restarts with 2 threads" in lines[-3] and "teacher: exported step" in lines[-2]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0
    assert state(campaign_dir, "teacher")["threads"] == 2
    # started again alone, it takes both threads at once
    process = subprocess.Popen(
        campaign(campaign_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert "teacher resumes from its run folder (2 threads" in process.stdout.readline()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0 and state(campaign_dir, "teacher")["status"] == "stopped"


def test_validation_curves_are_drawn_a_panel_per_quality(campaign_dir):
    recipe = Recipe.load(campaign_dir / "zoo" / "recipe.json")
    logs, output = campaign_dir / "zoo" / "training", campaign_dir / "validation.png"
    plot_validation(recipe.jobs, logs, output)
    assert not output.exists()  # no job has validated yet: nothing to draw
    for job, losses in (("teacher", [2.0, 1.5]), ("student", [2.2, 1.6]), ("student-q4", [3.1])):
        (logs / job).mkdir(parents=True)
        lines = [{"step": 1, "loss": 9.0}] + [
            {"step": 2 * k, "val": {"rd_loss": v}} for k, v in enumerate(losses, 1)
        ]
        (logs / job / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    plot_validation(recipe.jobs, logs, output)
    assert output.read_bytes().startswith(b"\x89PNG")
    output.unlink()
    plot_validation([], logs, output, levels=recipe.jobs)  # levels alone: no curve to draw
    assert not output.exists()
    plot_validation(recipe.jobs[:1], logs, output, levels=recipe.jobs[1:])  # the rest as their ends
    assert output.read_bytes().startswith(b"\x89PNG")


def test_campaign_stops_resumes_and_exports(campaign_dir, monkeypatch, capsys):
    root = campaign_dir
    process = subprocess.Popen(campaign(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop_when_checkpointed(process, root / "runs" / "teacher" / "checkpoint.pth.tar", 2)
    first = state(root, "teacher")
    assert first["status"] == "stopped" and 2 <= first["step"] < TEACHER_STEPS
    assert (root / "zoo" / first["export"]).is_file()
    assert not (root / "zoo" / "training" / "student").exists()  # waits for its teacher

    # the run folders are still there: resume from them
    process = subprocess.Popen(campaign(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop_when_checkpointed(process, root / "runs" / "teacher" / "checkpoint.pth.tar", first["step"] + 2)
    assert "teacher resumes from its run folder" in process.stdout.read()
    second = state(root, "teacher")
    assert first["step"] < second["step"] < TEACHER_STEPS and second["wall_seconds"] > first["wall_seconds"]

    # a fresh clone: only the exports and logs in the zoo are left
    shutil.rmtree(root / "runs")
    out = run_python(*campaign(root)[1:])
    assert f"teacher continues from its exported weights at step {second['step']}" in out
    assert "all jobs finished" in out
    for job, steps in (("teacher", TEACHER_STEPS), ("baseline", 4), ("student", 4), ("student-q4", 2)):
        assert state(root, job)["status"] == "finished" and state(root, job)["step"] == steps
    status = run_main(campaign_main, *campaign(root)[3:], "--status", capsys=capsys).stdout.splitlines()
    assert len(status) == 4 and all(" finished " in line for line in status)
    teacher_val = state(root, "teacher")["last_val"]
    assert status[0].split() == [
        "teacher", "finished", f"{TEACHER_STEPS}/{TEACHER_STEPS}", "steps",
        f"{state(root, 'teacher')['wall_seconds'] / 3600:.2f}", "h",
        "val", "RD", "loss", f"{teacher_val['val']['rd_loss']:.4f}", "at", "step", str(TEACHER_STEPS),
    ]  # fmt: skip
    records = [json.loads(line) for line in (root / "zoo/training/teacher/metrics.jsonl").open()]
    logged = [r["step"] for r in records if "val" not in r]
    assert logged == sorted(logged) and logged[-1] == TEACHER_STEPS and len(logged) == len(set(logged))
    assert sorted(p.name.rsplit("-", 1)[0] for p in (root / "zoo").glob("*.pth.tar")) == [
        "feds-student-mse-3",
        "feds-student-mse-4",
        "feds-teacher-mse-3",
    ]
    assert len(list((root / "zoo" / "ablation").glob("feds-student-noteacher-mse-3-*.pth.tar"))) == 1

    exported, metadata = read_checkpoint(next((root / "zoo").glob("feds-teacher-mse-3-*.pth.tar")))
    assert metadata["architecture"] == "feds-teacher" and metadata["qualities"] == [3]
    assert metadata["lambdas"][3] == 0.0067 and metadata["training"]["job"] == "teacher"
    assert exported["g_a.0.0.weight"].dtype == torch.float16
    assert exported["latent_codec.y.latent_codec.y0.gaussian_conditional.scale_table"].dtype == torch.float32
    cdfs = [exported[f"latent_codec.y.latent_codec.y{k}.gaussian_conditional._quantized_cdf"] for k in (0, 1)]
    assert cdfs[0].data_ptr() == cdfs[1].data_ptr()  # the slices' equal CDF tables, stored once

    # the exports are zoo checkpoints, with hashes that check
    monkeypatch.setenv("COMPRESSAI_FEDS_ZOO", str(root / "zoo"))
    from compressai_feds import feds_student, feds_teacher

    student, teacher = feds_student(quality=4, pretrained=True), feds_teacher(quality=3, pretrained=True)
    assert student.M == 32 and teacher.M == 64
    x = torch.rand(1, 3, 64, 64)
    encoded = student.compress(x)
    assert torch.equal(
        student.decompress(encoded["strings"], encoded["shape"])["x_hat"],
        student.synthesize(encoded["y_hat"], encoded["shape"]),
    )
    # nothing left to do: a new start exits at once
    assert "all jobs finished" in run_main(campaign_main, *campaign(root)[3:], capsys=capsys).stdout


def test_a_variable_rate_job_starts_from_fixed_rate_weights_and_exports_outside_the_zoo(campaign_dir):
    """As zoo v2 runs: a variable-rate student warm-started from a finished fixed-rate
    job, its moving average kept, exported to ``ablation/`` (not in the zoo's lookup)."""
    recipe = tiny_recipe(campaign_dir / "images", teacher_steps=2)
    recipe["jobs"] = [recipe["jobs"][1]]  # baseline: fixed rate, q3
    recipe["jobs"].append(
        {
            "name": "baseline-vr",
            "model": "feds-student",
            "quality": None,
            "export": "ablation/feds-student-noteacher-mse",
            "init": "baseline",
            "settings": {
                "student_args": {"variable_rate": True},
                "qualities": [1, 6],
                "ema_decay": 0.9,
                "val_every": 2,
            },
            "stages": [stage("rate_distortion", 3)],
        }
    )
    (campaign_dir / "zoo" / "recipe.json").write_text(json.dumps(recipe))
    ablation = campaign_dir / "zoo" / "ablation"
    ablation.mkdir(parents=True)
    twin = ablation / "feds-student-noteacher-mse-seed1-0123abcd.pth.tar"  # a second seed's export
    twin.write_bytes(b"another job's weights")
    run = subprocess.run(campaign(campaign_dir), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    (path,) = exports_of(ablation, "feds-student-noteacher-mse")
    assert twin.read_bytes() == b"another job's weights"  # not taken for an older export and removed
    loaded = Recipe.load(campaign_dir / "zoo" / "recipe.json")
    assert Campaign(loaded, campaign_dir / "runs", campaign_dir / "zoo").exported(loaded.jobs[1]) == path
    weights, metadata = read_checkpoint(path)
    assert "gain_units.log_gain" in weights and metadata["qualities"] == [1, 6]
    assert not list((campaign_dir / "zoo").glob("feds-student-mse-[0-9a-f]*.pth.tar"))
    assert state(campaign_dir, "baseline-vr")["status"] == "finished"


def test_a_diverged_job_continues_once_from_its_moving_average(campaign_dir):
    recipe = tiny_recipe(campaign_dir / "images")
    baseline = recipe["jobs"][1]
    baseline["settings"]["ema_decay"] = 0.5
    baseline["stages"] = [stage("rate_distortion", 2)]
    recipe["jobs"] = [baseline]
    path = campaign_dir / "zoo" / "recipe.json"
    path.write_text(json.dumps(recipe))
    assert "all jobs finished" in run_python(*campaign(campaign_dir)[1:])
    baseline["stages"] = [stage("rate_distortion", 14)]  # longer: 10 skipped steps fit
    path.write_text(json.dumps(recipe))
    checkpoint = campaign_dir / "runs" / "baseline" / "checkpoint.pth.tar"
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"]["g_a.0.0.weight"].fill_(float("nan"))  # what a diverged run leaves
    torch.save(saved, checkpoint)
    out = run_python(*campaign(campaign_dir)[1:])
    assert "baseline diverged" in out and "all jobs finished" in out
    assert "baseline continues from its weights' moving average at its last checkpoint" in out
    final = torch.load(checkpoint, weights_only=True)
    assert final["step"] == 14 and final["restarted_at"] == 2
    assert torch.isfinite(final["state_dict"]["g_a.0.0.weight"]).all()
