"""Short real training runs with tiny models on crops of the sample images."""

import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from helpers import run_main, run_python, sample_crops

from compressai_feds import FEDSTeacher
from compressai_feds import trainer as trainer_module
from compressai_feds.checkpoint_io import averaged_weights, load_codec
from compressai_feds.config import Stage, TrainingConfig
from compressai_feds.train import main as train_main
from compressai_feds.trainer import DistillationTrainer

TINY_STUDENT = {"N": 16, "M": 32, "groups": [8, 24], "num_res_blocks": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    torch.manual_seed(0)
    teacher = FEDSTeacher(N=32, M=64, groups=(16, 48), num_res_blocks=1)
    torch.save({"state_dict": teacher.state_dict(), "architecture": "feds-teacher"}, root / "teacher.pth.tar")
    return {
        "train": sample_crops(root / "train", size=96),
        "val": sample_crops(root / "val", size=64, count=1),
        "teacher": root / "teacher.pth.tar",
    }


def tiny_config(data, **overrides) -> TrainingConfig:
    config = TrainingConfig(
        data=str(data["train"]),
        val=str(data["val"]),
        student_args=TINY_STUDENT,
        teacher=str(data["teacher"]),
        stages=[
            Stage("feature_alignment", 2, 1e-4, feature_weight=1.0, channel_weight=0.0),
            Stage("channel_distillation", 2, 1e-4, feature_weight=1.0, channel_weight=1.0),
            Stage("fine_tuning", 2, 1e-5, feature_weight=0.0, channel_weight=0.0),
        ],
        batch_size=2,
        crop_size=64,
        workers=0,
        log_every=1,
        checkpoint_every=2,
        val_every=3,
    )
    return replace(config, **overrides)


def tiny_cli_args(data, out, steps="2,2,2", *extra):
    return [
        "-m", "compressai_feds.train", "--out", str(out), "--data", str(data["train"]), "--val", str(data["val"]),
        "--teacher", str(data["teacher"]), "--student-args", json.dumps(TINY_STUDENT), "--steps", steps,
        "--batch-size", "2", "--crop-size", "64", "--workers", "0", "--log-every", "1", "--no-progress", *extra,
    ]  # fmt: skip


def test_three_stages_run_with_their_losses(data, tmp_path):
    trainer = DistillationTrainer(tiny_config(data), tmp_path, progress=False)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    result = trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in records if "val" not in r}
    assert "feature_loss" in by_step[1] and "channel_loss" in by_step[1]  # its adapter learns ahead
    assert "feature_loss" in by_step[3] and "channel_loss" in by_step[3]
    assert "feature_loss" not in by_step[5] and "channel_loss" not in by_step[5]
    assert [r["stage"] for r in by_step.values()] == ["feature_alignment"] * 2 + [
        "channel_distillation"
    ] * 2 + ["fine_tuning"] * 2
    assert by_step[6]["lr"] == pytest.approx(1e-6)  # fine-tuning lr, decayed at 90% of the stage
    for record in by_step.values():  # the rate of each latent, logged apart
        assert record["bpp_y"] + record["bpp_z"] == pytest.approx(record["bpp_loss"], rel=1e-5)
        assert math.isfinite(record["grad_norm"]) and record["grad_norm"] > 0  # before clipping
    assert result["step"] == 6 and result["val"]["bpp"] > 0
    assert any("val" in r for r in records)
    for name in ("checkpoint.pth.tar", "best.pth.tar", "config.json", "training.png"):
        assert (tmp_path / name).is_file(), name
    assert TrainingConfig.load(tmp_path / "config.json") == trainer.config
    # the teacher is frozen, never updated; adapters stay out of the student
    assert trainer.teacher.training is False
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in trainer.teacher.state_dict().items())
    checkpoint = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert not any("adapter" in k for k in checkpoint["state_dict"])
    assert any("adapter" in k for k in checkpoint["adapters"])
    assert load_codec(tmp_path / "best.pth.tar").M == 32


def test_gradients_reach_the_student_and_adapters_only(data, tmp_path):
    trainer = DistillationTrainer(tiny_config(data), tmp_path, progress=False)
    trainer.step = 2  # channel-level distillation: every loss term is active
    trainer.objective.train()
    x = next(iter(trainer._loader()))
    trainer._train_step(x)
    objective = trainer.objective
    assert all(p.grad is not None for p in objective.feature_loss.adapters.parameters())
    assert all(p.grad is not None for p in objective.channel_loss.adapter.parameters())
    assert objective.student.g_a[0][0].weight.grad is not None
    assert all(p.grad is None for p in trainer.teacher.parameters())


def test_channel_adapter_learns_during_feature_alignment_without_moving_the_student(data, tmp_path):
    trainer = DistillationTrainer(tiny_config(data), tmp_path, progress=False)
    objective = trainer.objective.eval()  # rounding, not noise: the two forwards below agree
    x = next(iter(trainer._loader()))
    teacher_out = trainer.teacher(x, return_features=True)
    bits = torch.ones(trainer.teacher.M)
    losses = objective(x, teacher_out, bits, feature_weight=1.0, channel_weight=0.0)
    losses["channel_loss"].backward()
    assert all(p.grad.abs().sum() > 0 for p in objective.channel_loss.adapter.parameters())
    assert all(p.grad is None for p in objective.student.parameters())
    assert all(p.grad is None for p in objective.feature_loss.adapters.parameters())
    # the term is in the loss the stage minimises, at unit weight
    rate_distortion = objective(x)["loss"]
    assert torch.allclose(losses["loss"] - losses["feature_loss"] - losses["channel_loss"], rate_distortion)


def test_fresh_adapters_warm_up_on_a_detached_student(data, tmp_path):
    trainer = DistillationTrainer(tiny_config(data, adapter_warmup=3), tmp_path, progress=False)
    trainer.objective.train()
    x = next(iter(trainer._loader()))
    teacher_out = trainer.teacher(x, return_features=True)
    bits = torch.ones(trainer.teacher.M)
    objective = trainer.objective
    for adapters_only in (True, False):
        objective.zero_grad(set_to_none=True)
        losses = objective(x, teacher_out, bits, 1.0, 1.0, adapters_only)
        (losses["feature_loss"] + losses["channel_loss"]).backward()
        # the distillation terms reach the student only after the warm-up
        student_grads = [p.grad for p in objective.student.parameters() if p.grad is not None]
        assert bool(student_grads) != adapters_only
        assert all(p.grad.abs().sum() > 0 for p in objective.channel_loss.adapter.parameters())

    calls = []
    trainer.model = lambda *args, **kwargs: calls.append(args[-1]) or objective(*args, **kwargs)
    trainer.train()  # 6 steps: the adapters alone learn from the distillation terms in the first 3
    assert calls == [True] * 3 + [False] * 3
    assert DistillationTrainer(None, tmp_path, resume=True).adapters_made_at == 0
    restarted = DistillationTrainer(tiny_config(data, adapter_warmup=3), tmp_path / "restart", start_step=2)
    assert restarted.adapters_made_at == 2  # continuing from weights alone: the adapters are new again


def test_training_without_teacher_uses_rate_distortion_only(data, tmp_path):
    trainer = DistillationTrainer(tiny_config(data, teacher=None), tmp_path, progress=False)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not any("feature_loss" in r or "channel_loss" in r for r in records)
    assert trainer.objective.feature_loss is None


def test_compressai_eval_model_reads_the_trainer_checkpoint(data, tmp_path):
    DistillationTrainer(tiny_config(data, teacher=None), tmp_path, progress=False).train()
    images = sample_crops(tmp_path / "images", size=176, count=1)
    out = run_python(
        "-m", "compressai.utils.eval_model", "checkpoint", str(images),
        "-a", "feds-student", "-p", str(tmp_path / "checkpoint.pth.tar"),
    )  # fmt: skip
    assert json.loads(out)["results"]["bpp"][0] > 0


def final_student(out_dir):
    return torch.load(out_dir / "checkpoint.pth.tar", weights_only=True)["state_dict"]


def test_resume_after_kill_continues_bit_for_bit(data, tmp_path):
    steps = "3,3,2"
    run_python(*tiny_cli_args(data, tmp_path / "uninterrupted", steps))
    records = [
        json.loads(line) for line in (tmp_path / "uninterrupted" / "metrics.jsonl").read_text().splitlines()
    ]
    terms = {
        (r["stage"], term) for r in records for term in ("feature_loss", "reconstruction_loss") if term in r
    }
    assert terms == {  # the default stages: feature alignment, then with the teacher's x̂, then RD alone
        ("feature_alignment", "feature_loss"),
        ("reconstruction_distillation", "feature_loss"),
        ("reconstruction_distillation", "reconstruction_loss"),
    }
    killed = tmp_path / "killed"
    args = tiny_cli_args(data, killed, steps, "--checkpoint-every", "1")
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoint.pth.tar"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["step"] >= 3:
            break
        time.sleep(0.05)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    step_at_kill = torch.load(checkpoint, weights_only=True)["step"]  # whatever the moment, it loads
    assert 3 <= step_at_kill <= 8
    run_python("-m", "compressai_feds.train", "--resume", "--out", str(killed), "--no-progress")
    expected, resumed = final_student(tmp_path / "uninterrupted"), final_student(killed)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    steps_logged = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps_logged)) == list(range(1, 9))
    assert len([s for s in steps_logged]) == len(
        (tmp_path / "uninterrupted" / "metrics.jsonl").read_text().splitlines()
    )


def test_sigterm_checkpoints_and_exits(data, tmp_path):
    args = tiny_cli_args(data, tmp_path, "200,0,0", "--checkpoint-every", "1000")
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    checkpoint = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert 2 <= checkpoint["step"] < 200


def test_cli_reports_bad_arguments_without_traceback(tmp_path, capsys):
    result = run_main(train_main, "--out", tmp_path, capsys=capsys)
    assert result.returncode == 2 and "--data is required" in result.stderr
    result = run_main(train_main, "--resume", "--out", tmp_path / "none", capsys=capsys)
    assert result.returncode == 2 and "nothing to resume" in result.stderr
    result = run_main(
        train_main, "--out", tmp_path, "--data", tmp_path, "--restart-warmup", "-1", capsys=capsys
    )
    assert result.returncode == 2 and result.stderr.strip() == "error: restart_warmup must be >= 0, got -1"
    result = run_main(train_main, "--out", tmp_path, "--from-average", capsys=capsys)
    assert (
        result.returncode == 2
        and result.stderr.strip() == "error: --from-average continues a run: it needs --resume"
    )


@pytest.mark.slow  # two torchrun processes: ~50 s, and the zoo trains on one machine
def test_two_process_ddp_matches_one_process(data, tmp_path):
    """Same global batch, deterministic quantization, fp32: same weights to float
    rounding (measured 1e-7; another seed gives 0.9)."""
    common = ("--round-quantization", "--fp32", "--checkpoint-every", "100")
    run_python(*tiny_cli_args(data, tmp_path / "one", "2,2,0", *common))
    env = {"OMP_NUM_THREADS": "1"}
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run_python(*torchrun, *tiny_cli_args(data, tmp_path / "two", "2,2,0", *common), env=env)
    one, two = final_student(tmp_path / "one"), final_student(tmp_path / "two")
    assert max_difference(one, two) < 1e-5
    # a run on other crops (another seed) differs far more: the check has teeth
    run_python(*tiny_cli_args(data, tmp_path / "other", "2,2,0", *common, "--seed", "1"))
    assert max_difference(one, final_student(tmp_path / "other")) > 1e-3


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point() and a[k].numel())


def test_resuming_with_a_changed_schedule_runs_its_next_step_at_the_new_rate(data, tmp_path):
    first = tiny_config(data, teacher=None, stages=[Stage("rd", 2, 1e-4, 0.0, 0.0)])
    DistillationTrainer(first, tmp_path, progress=False).train()
    longer = replace(first, stages=[Stage("rd", 2, 1e-4, 0.0, 0.0), Stage("lower", 2, 3e-5, 0.0, 0.0)])
    resumed = DistillationTrainer(longer, tmp_path, resume=True, progress=False)
    assert resumed.step == 2
    assert resumed.optimizers["net"].param_groups[0]["lr"] == pytest.approx(3e-5)


def test_a_restart_from_weights_alone_warms_its_learning_rate_up(data, tmp_path):
    stages = [Stage("rd", 2, 1e-4, 0.0, 0.0), Stage("lower", 4, 3e-5, 0.0, 0.0)]
    config = tiny_config(data, teacher=None, stages=stages, restart_warmup=3, val_every=100)
    trainer = DistillationTrainer(config, tmp_path, start_step=1, progress=False)
    assert trainer.optimizers["net"].param_groups[0]["lr"] == pytest.approx(1e-4 / 3)  # step 1's
    trainer.train()
    logged = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").open()) if "lr" in r}
    # logged with each step: the rate of the step after it; 3e-5 from step 2, ramped over steps 1..3
    assert logged[2] == pytest.approx(3e-5 * 2 / 3) and logged[3] == pytest.approx(3e-5)
    assert logged[5] == pytest.approx(3e-5)
    # without a restart (a fresh run, or a resume with the optimizers' state) there is no ramp
    fresh = DistillationTrainer(replace(config, restart_warmup=3), tmp_path / "fresh", progress=False)
    assert fresh.optimizers["net"].param_groups[0]["lr"] == pytest.approx(1e-4)


def test_a_fine_tune_warms_its_learning_rate_up_from_step_0(data, tmp_path):
    stages = [Stage("rd", 3, 1e-4, 0.0, 0.0), Stage("lower", 3, 3e-5, 0.0, 0.0)]
    trainer = DistillationTrainer(
        tiny_config(data, teacher=None, stages=stages, warmup=4, val_every=100), tmp_path, progress=False
    )
    assert trainer.optimizers["net"].param_groups[0]["lr"] == pytest.approx(1e-4 / 4)
    trainer.train()
    logged = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").open()) if "lr" in r}
    # logged with each step: the rate of the step after it (steps 0..3 ramped, 3 the ramp's last)
    assert logged[1] == pytest.approx(1e-4 * 2 / 4) and logged[2] == pytest.approx(1e-4 * 3 / 4)
    assert logged[3] == pytest.approx(3e-5) and logged[5] == pytest.approx(3e-5)
    with pytest.raises(ValueError, match="^warmup must be >= 0, got -1$"):
        tiny_config(data, warmup=-1)


def test_a_cosine_schedule_decays_each_stage_to_zero(data):
    stages = [Stage("rd", 4, 1e-4, 0.0, 0.0), Stage("lower", 2, 2e-5, 0.0, 0.0)]
    config = tiny_config(data, teacher=None, stages=stages, lr_schedule="cosine")
    rates = [config.lr_at(step) for step in range(7)]
    assert rates[:4] == pytest.approx([1e-4, 1e-4 * (1 + 2**-0.5) / 2, 5e-5, 1e-4 * (1 - 2**-0.5) / 2])
    assert rates[4:] == pytest.approx([2e-5, 1e-5, 0.0])  # past the end: the last stage's end
    step_rates = [replace(config, lr_schedule="step", lr_decay_at=0.5).lr_at(step) for step in range(4)]
    assert step_rates == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5])  # x0.1 from half the stage on
    with pytest.raises(ValueError, match=r"^lr_schedule must be one of \('step', 'cosine'\), got 'linear'$"):
        replace(config, lr_schedule="linear")


def test_a_resumed_run_continues_the_warm_up_of_its_restart(data, tmp_path):
    stages = [Stage("rd", 8, 1e-4, 0.0, 0.0)]
    config = tiny_config(
        data, teacher=None, stages=stages, restart_warmup=4, val_every=100, checkpoint_every=3
    )
    trainer = DistillationTrainer(
        replace(config, stages=[Stage("rd", 4, 1e-4, 0.0, 0.0)]), tmp_path, start_step=2
    )
    trainer.progress = False
    trainer.train()  # steps 2, 3 of the ramp; checkpoint at step 4
    resumed = DistillationTrainer(config, tmp_path, resume=True, progress=False)
    assert resumed.step == 4 and resumed.restarted_at == 2
    assert resumed.optimizers["net"].param_groups[0]["lr"] == pytest.approx(1e-4 * 3 / 4)


def test_one_non_finite_batch_is_skipped_and_logged(data, tmp_path):
    trainer = DistillationTrainer(tiny_config(data, teacher=None), tmp_path, progress=False)
    objective, calls = trainer.model, []

    def overflowing_third_batch(*args, **kwargs):
        losses = objective(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # a reconstruction that overflows, as once seen at step 32,524
            losses["loss"] = losses["loss"] * float("inf")
        return losses

    trainer.model = overflowing_third_batch
    assert trainer.train()["step"] == 6
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if "skipped" in r]
    assert [(r["step"], r["skipped"]) for r in skipped] == [(3, "loss inf")]
    assert all(torch.isfinite(v).all() for v in final_student(tmp_path).values() if v.is_floating_point())


def test_a_loss_spike_is_skipped_and_logged(data, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "SPIKE_WARMUP", 2)  # the stages here are 2 steps long
    stages = [Stage("rd", 6, 1e-4, 0.0, 0.0)]
    trainer = DistillationTrainer(tiny_config(data, teacher=None, stages=stages), tmp_path, progress=False)
    objective, calls = trainer.model, []

    def far_off_fourth_batch(*args, **kwargs):
        losses = objective(*args, **kwargs)
        calls.append(1)
        if len(calls) == 4:  # finite, a thousand times the others
            losses["loss"] = losses["loss"] * 1000
        return losses

    trainer.model = far_off_fourth_batch
    assert trainer.train()["step"] == 6
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [(r["step"], r["skipped"]) for r in records if "skipped" in r]
    assert len(skipped) == 1 and skipped[0][0] == 4 and "times the stage's running mean" in skipped[0][1]
    running = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)["running_loss"]
    assert running["stage"] == "rd" and running["steps"] == 5 and running["mean"] > 0  # 5 taken
    with pytest.raises(ValueError, match="spike_factor must be 0"):
        tiny_config(data, spike_factor=0.5)


def test_a_run_continues_from_its_moving_average_with_fresh_optimizers(data, tmp_path):
    config = tiny_config(data, teacher=None, ema_decay=0.5, restart_warmup=4)
    DistillationTrainer(config, tmp_path, progress=False).train()
    saved = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    longer = replace(config, stages=[*config.stages[:-1], replace(config.stages[-1], steps=4)])
    resumed = DistillationTrainer(longer, tmp_path, resume=True, from_average=True, progress=False)
    average = averaged_weights(saved["ema"])
    assert all(torch.equal(v, average[k]) for k, v in resumed.student.state_dict().items())
    assert not torch.equal(average["g_a.0.0.weight"], saved["state_dict"]["g_a.0.0.weight"])
    assert resumed.step == resumed.restarted_at == 6 and not resumed.optimizers["net"].state
    assert resumed.optimizers["net"].param_groups[0]["lr"] == pytest.approx(1e-5 / 4)  # warming up again
    assert resumed.train()["step"] == 8
    no_average = tmp_path / "no-average"
    DistillationTrainer(replace(config, ema_decay=0.0), no_average, progress=False).train()
    with pytest.raises(ValueError, match="moving average its checkpoint keeps"):
        DistillationTrainer(longer, no_average, resume=True, from_average=True)


def test_divergence_stops_the_run_before_it_checkpoints_garbage(data, tmp_path):
    config = tiny_config(data, teacher=None, checkpoint_every=1)
    trainer = DistillationTrainer(config, tmp_path, progress=False)
    trainer.train()  # six good steps, checkpointed
    good = final_student(tmp_path)
    trainer = DistillationTrainer(
        replace(config, stages=[Stage("rd", 20, 1e-4, 0.0, 0.0)]), tmp_path / "bad", progress=False
    )
    trainer.student.load_state_dict(good)
    with torch.no_grad():  # what a too-high learning rate ends in
        trainer.student.g_a[0][0].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="training diverged"):
        trainer.train()
    assert not (tmp_path / "bad" / "checkpoint.pth.tar").exists()


@pytest.mark.parametrize("channel_form", ["spatial_kl", "standardized_kl"])
def test_a_student_identical_to_its_teacher_has_zero_distillation_loss(data, channel_form):
    teacher = load_codec(data["teacher"]).eval()
    student = load_codec(data["teacher"])
    config = tiny_config(data, channel_form=channel_form)
    objective = trainer_module.DistillationObjective(student, config, teacher).eval()  # rounding both
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        teacher_out = teacher(x, return_features=True)
        bits = trainer_module.channel_entropy_bits(teacher_out["likelihoods"]["y"])
        losses = objective(x, teacher_out, bits, 1.0, 1.0, reconstruction_weight=1.0)
    for term in ("feature_loss", "channel_loss", "reconstruction_loss"):
        assert losses[term].item() == pytest.approx(0.0, abs=1e-5), term


def test_reconstruction_distillation_runs_the_teacher_and_joins_the_loss(data, tmp_path):
    stages = [Stage("reconstruction", 2, 1e-4, 0.0, 0.0, reconstruction_weight=0.5)]
    trainer = DistillationTrainer(tiny_config(data, stages=stages), tmp_path, progress=False)
    trainer.objective.eval()
    x = next(iter(trainer._loader()))
    teacher_out = trainer.teacher(x, return_features=True)
    bits = torch.ones(trainer.teacher.M)
    losses = trainer.objective(x, teacher_out, bits, reconstruction_weight=0.5)
    expected = trainer_module.reconstruction_distillation(
        trainer.student(x)["x_hat"], teacher_out["x_hat"], trainer.config.lmbda
    )
    assert losses["reconstruction_loss"].item() == pytest.approx(expected.item(), rel=1e-5) and expected > 0
    rate_distortion = trainer.objective(x)["loss"]
    channel_ahead = losses["channel_loss"]  # its adapter still learns, on the latent detached
    assert torch.allclose(
        losses["loss"] - 0.5 * losses["reconstruction_loss"] - channel_ahead, rate_distortion
    )
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("reconstruction_loss" in r for r in records if "val" not in r)


def test_reconstruction_distillation_follows_the_training_metric(data, tmp_path):
    stages = [Stage("reconstruction_distillation", 2, 1e-4, 0.0, 0.0, reconstruction_weight=0.5)]
    config = tiny_config(data, stages=stages, metric="ms-ssim", lmbda=None, crop_size=192)
    trainer = DistillationTrainer(config, tmp_path, progress=False)
    trainer.objective.eval()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 192, 192)
    teacher_out = trainer.teacher(x, return_features=True)
    losses = trainer.objective(x, teacher_out, torch.ones(trainer.teacher.M), reconstruction_weight=0.5)
    expected = trainer_module.reconstruction_distillation(
        trainer.student(x)["x_hat"], teacher_out["x_hat"], config.lmbda, "ms-ssim"
    )
    assert config.lmbda == 8.73 and 0 < expected.item() < 8.73
    assert losses["reconstruction_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_decaying_stage_weans_the_student_linearly():
    stage = Stage(
        "channel_distillation", 100, 1e-4, 0.3, 10.0, reconstruction_weight=2.0, distillation_decay=True
    )
    assert stage.distillation_weights(0.0) == (0.3, 10.0, 2.0)
    assert stage.distillation_weights(0.75) == pytest.approx((0.075, 2.5, 0.5))
    assert replace(stage, distillation_decay=False).distillation_weights(0.75) == (0.3, 10.0, 2.0)
    config = TrainingConfig(stages=[Stage("a", 4, 1e-4, 1.0, 0.0), stage])
    assert config.stage_at(54) == (stage, 0.5)
    with pytest.raises(ValueError, match="loss weights must be >= 0"):
        Stage("a", 4, 1e-4, 1.0, -1.0)


def test_distillation_settings_are_checked():
    with pytest.raises(ValueError, match="channel_form must be one of"):
        TrainingConfig(channel_form="l2")
    with pytest.raises(ValueError, match="channel_follows_lambda weighs the images of variable-rate"):
        TrainingConfig(channel_follows_lambda=True)
    with pytest.raises(ValueError, match="feature_follows_lambda weighs the images of variable-rate"):
        TrainingConfig(feature_follows_lambda=True)


def test_cli_takes_lambda_from_the_metric_s_table(tmp_path):
    from compressai_feds.quality import LAMBDAS
    from compressai_feds.train import build_parser, config_from_args

    def lmbda(*flags: str) -> float:
        return config_from_args(
            build_parser().parse_args(["--out", str(tmp_path), "--data", ".", *flags])
        ).lmbda

    assert lmbda() == LAMBDAS["mse"][3]
    assert lmbda("--metric", "ms-ssim") == LAMBDAS["ms-ssim"][3]
    assert lmbda("--metric", "ms-ssim", "-q", "5") == LAMBDAS["ms-ssim"][5]
    assert lmbda("--metric", "ms-ssim", "--lambda", "3.5") == 3.5


def test_cli_sets_the_channel_term_s_form_and_the_lambda_weightings(tmp_path, capsys):
    from compressai_feds.train import build_parser, config_from_args

    args = ["--out", str(tmp_path), "--data", str(tmp_path), "--qualities", "1,6"]
    args += ["--student-args", '{"variable_rate": true}', "--channel-form", "standardized_kl"]
    config = config_from_args(build_parser().parse_args([*args, "--channel-follows-lambda"]))
    assert config.channel_form == "standardized_kl" and config.channel_follows_lambda
    assert not config.feature_follows_lambda
    config = config_from_args(build_parser().parse_args([*args, "--feature-follows-lambda"]))
    assert config.feature_follows_lambda and not config.channel_follows_lambda
    assert not config_from_args(build_parser().parse_args(args)).channel_follows_lambda
    result = run_main(train_main, *args, "--channel-form", "l2", capsys=capsys)
    assert result.returncode == 2 and "invalid choice: 'l2'" in result.stderr
