"""The zoo's training campaign: the jobs of a recipe, run in dependency order,
resumed whenever they were stopped, exported into the zoo as they go.

    compressai-feds campaign [zoo/recipe.json] [--data DIR] [--runs DIR] [--zoo DIR]

A recipe (JSON, kept beside the zoo) lists jobs: the model and quality to train,
its stages, and which job it needs (``teacher``: the job it distils from;
``init``: the job whose weights it starts from). Jobs whose needs are finished
run side by side, each in its own ``compressai-feds train`` process with its
own CPU threads, as long as the recipe's ``threads`` allow. With ``widen_minutes``
set, no thread idles while a job runs: a job left running alone, with threads no
waiting job can use, takes them, at its start, or by a restart (an exact resume
from its checkpoint) while it has at least that many minutes left at its logged speed.

Nothing is lost when the campaign is stopped:

* a job resumes from its run folder (``RUNS/<job>/checkpoint.pth.tar``: weights,
  optimizers, data position) when that folder still exists;
* else from the weights last exported into the zoo (a fresh clone on another
  machine): the same schedule continues at the exported step, with fresh
  optimizers;
* a job that diverged (its trainer's last checkpoint is from before) continues
  once from that checkpoint's moving average of its weights, with fresh optimizers;
* SIGTERM/SIGINT stops every job at its next step (each checkpoints), exports
  them, records their progress and exits with status 0 (1 if a job failed).

Each job is exported with CompressAI's ``update_model`` to ``ZOO/<export>-<sha256
prefix>.pth.tar`` (weights in float16 with ``"storage": "fp16"``, equal tensors
such as the slices' CDF tables stored once) whenever it
finishes or stops, and every ``export_minutes`` while it runs;
``ZOO/training/<job>/`` keeps its config, ``metrics.jsonl``, learning-curve plot
and ``state.json`` (status, step, wall time, threads, latest and best
validation figures); ``ZOO/training/validation.png`` draws every job's
validation curve, a panel per quality (once a recipe has variable-rate jobs, its
fixed-rate jobs are drawn as the level each ended at).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint_io import averaged_weights, export, exports_of
from .config import Stage, TrainingConfig
from .images import find_images
from .plots import kept_validation, plot_metrics, plot_validation
from .quality import LAMBDAS, QUALITIES
from .train import EXIT_DIVERGED

__all__ = ["Campaign", "Job", "Recipe", "split_validation"]

#: The zoo's recipe, in a checkout of the repository (an installed package has none).
DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "zoo" / "recipe.json"
# A job stopped from outside: the trainer's own exit on SIGTERM/SIGINT after its
# checkpoint (128 + signal), or the signal itself when it came before the trainer
# had installed its handler (while importing or loading; nothing to lose then).
STOPPED_CODES = {128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT}


def split_validation(images: list[Path], every: int, offset: int) -> tuple[list[Path], list[Path]]:
    """The fixed validation rule: of the images sorted by path, those at
    positions ``offset, offset + every, ...`` validate and are never trained on."""
    ordered = sorted(images, key=str)
    val = [p for i, p in enumerate(ordered) if i % every == offset]
    train = [p for i, p in enumerate(ordered) if i % every != offset]
    return train, val


@dataclass
class Job:
    """One training run of the campaign.

    Args:
        name: Unique name; also the name of its run and log folders.
        model: Architecture trained (``feds-teacher`` or ``feds-student``).
        quality: Quality level; sets λ (``None`` for a variable-rate job: its
            ``settings`` name the ``qualities``).
        stages: The FEDS stages (see :class:`~.config.Stage`).
        export: Zoo name of the exported weights, e.g. ``feds-student-mse-3``
            (a ``folder/`` prefix keeps ablations out of the zoo's lookup).
        teacher: Job distilled from (``None``: rate-distortion alone).
        init: Job whose final weights this one starts from (fine-tuning).
        seed: Seed of the weights' initialisation, crops and noise.
        threads: CPU threads of its process.
        settings: Further :class:`~.config.TrainingConfig` fields.
    """

    name: str
    model: str
    quality: int | None
    stages: list[Stage]
    export: str
    teacher: str | None = None
    init: str | None = None
    seed: int = 0
    threads: int = 1
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def needs(self) -> list[str]:
        return [name for name in (self.teacher, self.init) if name]

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)


@dataclass
class Recipe:
    """A campaign: its data, validation rule, CPU budget and jobs."""

    data: str
    jobs: list[Job]
    validation_every: int = 33
    validation_offset: int = 16
    threads: int = 2
    export_minutes: float = 30.0
    storage: str = "fp32"
    widen_minutes: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        values = json.loads(path.read_text())
        jobs = []
        for job in values.pop("jobs"):
            stages = [Stage(**stage) for stage in job.pop("stages")]
            jobs.append(Job(stages=stages, **job))
        values.pop("comment", None)
        recipe = cls(jobs=jobs, **values)
        data = Path(recipe.data)
        recipe.data = str(data if data.is_absolute() else (path.parent / data).resolve())
        recipe.check()
        return recipe

    @staticmethod
    def _check_export_name(job: Job) -> None:
        """The export's name says the architecture and the quality the job trains (none:
        variable rate), as the zoo reads them back: ``feds-student-mse-3``,
        ``ablation/feds-student-noteacher-mse-3-seed1``, ``feds-student-mse``."""
        name = Path(job.export).name
        match = re.fullmatch(r"(feds-\w+)(?:-\w+)?-(?:mse|ms-ssim)(?:-(\d+))?(?:-seed\d+)?", name)
        named = int(match[2]) if match and match[2] else None
        if not match or not name.startswith(job.model) or named != job.quality:
            trains = f"quality {job.quality}" if job.quality else "variable rate"
            raise ValueError(f"job {job.name} trains {job.model} at {trains}, but exports as {job.export!r}")

    def check(self) -> None:
        if self.storage not in ("fp32", "fp16"):
            raise ValueError(f'storage must be "fp32" or "fp16", got {self.storage!r}')
        if self.widen_minutes is not None and self.widen_minutes < 0:
            raise ValueError(f"widen_minutes must be >= 0 (or absent: never), got {self.widen_minutes}")
        names = [job.name for job in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"job names must be unique: {names}")
        for job in self.jobs:
            unknown = set(job.needs) - set(names)
            if unknown:
                raise ValueError(f"job {job.name} needs unknown jobs {sorted(unknown)}")
            self._check_export_name(job)
            if job.threads > self.threads:
                raise ValueError(
                    f"job {job.name} wants {job.threads} threads, the campaign has {self.threads}"
                )
        done: set[str] = set()
        pending = list(self.jobs)
        while pending:
            ready = [job for job in pending if set(job.needs) <= done]
            if not ready:
                raise ValueError(f"jobs with circular needs: {[job.name for job in pending]}")
            done.update(job.name for job in ready)
            pending = [job for job in pending if job.name not in done]


@dataclass
class _Running:
    job: Job
    threads: int
    process: subprocess.Popen
    started: float
    last_export: float
    log: Any
    widen_to: int | None = None  # stopped to restart with this many threads


class Campaign:
    """Runs a :class:`Recipe` to the end, or until SIGTERM/SIGINT.

    Args:
        recipe: The jobs.
        runs: Folder of the run folders (outside git; may vanish between runs).
        zoo: Where exports go, with ``training/<job>/`` logs (in git).
        progress: Print one line per job event.
    """

    def __init__(self, recipe: Recipe, runs: str | Path, zoo: str | Path, progress: bool = True) -> None:
        self.recipe = recipe
        self.runs = Path(runs)
        self.zoo = Path(zoo)
        self.progress = progress
        self.jobs = {job.name: job for job in recipe.jobs}
        self._stop = False
        self._failed: set[str] = set()
        self._stopped: set[str] = set()
        self._diverged: set[str] = set()  # continued from their moving average (once a campaign)
        self._running: dict[str, _Running] = {}

    # -- bookkeeping ---------------------------------------------------------

    def log_dir(self, job: Job) -> Path:
        return self.zoo / "training" / job.name

    def run_dir(self, job: Job) -> Path:
        return self.runs / job.name

    def state(self, job: Job) -> dict[str, Any]:
        path = self.log_dir(job) / "state.json"
        return json.loads(path.read_text()) if path.is_file() else {"status": "pending", "step": 0}

    def _write_state(self, job: Job, **values: Any) -> None:
        folder = self.log_dir(job)
        folder.mkdir(parents=True, exist_ok=True)
        state = {**self.state(job), **values, "job": job.name, "total_steps": job.total_steps}
        (folder / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    def exported(self, job: Job) -> Path | None:
        found = exports_of(*self._export_location(job))
        return found[-1] if found else None

    def _export_location(self, job: Job) -> tuple[Path, str]:
        target = self.zoo / job.export
        return target.parent, target.name

    def finished(self, job: Job) -> bool:
        state = self.state(job)
        return state["status"] == "finished" and state["step"] >= job.total_steps

    def _say(self, message: str) -> None:
        if self.progress:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    # -- data ----------------------------------------------------------------

    def prepare_data(self) -> tuple[Path, Path]:
        """Links the training and validation images into ``RUNS/data/`` by the
        recipe's validation rule."""
        source = Path(self.recipe.data)
        train, val = split_validation(
            find_images(source), self.recipe.validation_every, self.recipe.validation_offset
        )
        root = self.runs / "data"
        for name, paths in (("train", train), ("val", val)):
            folder = root / name
            if folder.exists():
                shutil.rmtree(folder)
            for path in paths:
                link = folder / path.relative_to(source)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path.resolve())
        return (root / "train").resolve(), (root / "val").resolve()

    # -- one job -------------------------------------------------------------

    def training_config(self, job: Job, data: Path, val: Path) -> TrainingConfig:
        settings = {**self.recipe.settings, **job.settings}
        student = job.model
        if job.init:
            student = str(self._require_export(self.jobs[job.init]))
        teacher = str(self._require_export(self.jobs[job.teacher])) if job.teacher else None
        return replace(
            TrainingConfig(**settings),
            data=str(data),
            val=str(val),
            student=student,
            teacher=teacher,
            quality=job.quality or TrainingConfig.quality,
            lmbda=None,
            stages=job.stages,
            seed=job.seed,
        )

    def _require_export(self, job: Job) -> Path:
        path = self.exported(job)
        if path is None:
            raise FileNotFoundError(f"job {job.name} has no exported weights in {self.zoo}")
        return path.resolve()

    def _start(self, job: Job, data: Path, val: Path, threads: int, from_average: bool = False) -> _Running:
        run_dir = self.run_dir(job)
        run_dir.mkdir(parents=True, exist_ok=True)
        config = self.training_config(job, data, val)
        state = self.state(job)
        args = ["--out", str(run_dir), "--no-progress"]
        if from_average:
            how = "continues from its weights' moving average at its last checkpoint, with fresh optimizers"
            args += ["--resume", "--from-average"]
        elif (run_dir / "checkpoint.pth.tar").is_file():
            how = "resumes from its run folder"
            args += ["--resume"]
        elif state["step"] > 0 and self.exported(job) is not None:
            how = f"continues from its exported weights at step {state['step']}"
            config = replace(config, student=str(self.exported(job).resolve()))
            args += ["--start-step", str(state["step"])]
            history = self.log_dir(job) / "metrics.jsonl"
            if history.is_file():
                shutil.copyfile(history, run_dir / "metrics.jsonl")
        else:
            how = "starts"
        config_path = run_dir / "campaign-config.json"
        config.save(config_path)
        args += ["--config", str(config_path)]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
        log = (run_dir / "train.log").open("a")
        process = subprocess.Popen(
            [sys.executable, "-m", "compressai_feds.train", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C reaches the campaign only; it stops the jobs itself
        )
        self._write_state(job, status="running", threads=threads)
        self._say(f"{job.name} {how} ({threads} thread{'s' * (threads > 1)}, pid {process.pid})")
        now = time.monotonic()
        return _Running(job, threads, process, now, now, log)

    def export(self, job: Job, status: str, elapsed: float) -> None:
        """Exports the job's latest weights (their moving average, where the job keeps one
        and it validated better) into the zoo (:func:`~.checkpoints.export`, with the job and its
        training summary as metadata) and records its progress, training curves
        and the wall time added."""
        run_dir = self.run_dir(job)
        checkpoint = run_dir / "checkpoint.pth.tar"
        state = self.state(job)
        wall = state.get("wall_seconds", 0.0) + elapsed
        if not checkpoint.is_file():
            self._write_state(job, status=status, wall_seconds=wall)
            return
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        step = saved["step"]
        records = []
        if (run_dir / "metrics.jsonl").is_file():
            records = [
                json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line
            ]
        # the weights' moving average ships where its last validation was the better
        last = next((r for r in reversed(records) if "val_ema" in r), None)
        averaged = "ema" in saved and last is not None and kept_validation(last) is last["val_ema"]
        weights = saved["state_dict"]
        if averaged:
            weights = averaged_weights(saved["ema"])
        validations = [{"step": r["step"], "val": kept_validation(r)} for r in records if "val" in r]
        best = min(validations, key=lambda r: r["val"]["rd_loss"], default=None)
        folder, name = self._export_location(job)
        config = saved["config"]
        metadata = {
            "architecture": job.model,
            "metric": config["metric"],
            "lambdas": dict(LAMBDAS[config["metric"]]),
            "qualities": config.get("qualities") or [job.quality],
            "training": {
                "job": job.name,
                "step": step,
                "wall_seconds": round(wall, 1),
                "moving_average": averaged,
                "last_val": validations[-1] if validations else None,
            },
        }
        exported = export(weights, job.model, folder, name, self.recipe.storage == "fp16", metadata)
        logs = self.log_dir(job)
        logs.mkdir(parents=True, exist_ok=True)
        for file in ("config.json", "metrics.jsonl"):
            if (run_dir / file).is_file():
                shutil.copyfile(run_dir / file, logs / file)
        if (logs / "metrics.jsonl").is_file():
            plot_metrics(logs / "metrics.jsonl", logs / "training.png")
        self._write_state(
            job,
            status=status,
            step=step,
            wall_seconds=round(wall, 1),
            export=str(exported.relative_to(self.zoo)),
            last_val=validations[-1] if validations else None,
            best_val=best,
            updated=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        # once a recipe trains variable-rate jobs, its fixed-rate ones (an earlier zoo) are levels to beat
        variable_rate = [j for j in self.recipe.jobs if not j.quality]
        levels = [j for j in self.recipe.jobs if j.quality] if variable_rate else []
        curves = variable_rate or self.recipe.jobs
        plot_validation(curves, self.zoo / "training", self.zoo / "training" / "validation.png", levels)
        self._say(f"{job.name}: exported step {step} of {job.total_steps} ({status})")

    # -- the loop ------------------------------------------------------------

    def _may_continue_from_average(self, job: Job, data: Path, val: Path) -> bool:
        """A diverged job continues once from its weights' moving average (the trainer's
        ``from_average``), where it keeps one and a checkpoint to take it from."""
        return (
            job.name not in self._diverged
            and self.training_config(job, data, val).ema_decay > 0
            and (self.run_dir(job) / "checkpoint.pth.tar").is_file()
        )

    def _stop_handler(self, signum: int, frame: Any) -> None:
        self._stop = True
        for run in self._running.values():  # each checkpoints at its next step
            run.process.send_signal(signal.SIGTERM)

    def _ready(self, running: dict[str, _Running]) -> list[Job]:
        return [
            job
            for job in self.recipe.jobs
            if job.name not in running
            and job.name not in self._failed | self._stopped
            and not self.finished(job)
            and all(self.finished(self.jobs[need]) for need in job.needs)
        ]

    def run(self, poll_seconds: float = 2.0) -> int:
        """Runs until every job is finished, or until SIGTERM/SIGINT; returns
        the exit status (1 if a job failed)."""
        previous = {s: signal.signal(s, self._stop_handler) for s in (signal.SIGTERM, signal.SIGINT)}
        running = self._running
        try:
            data, val = self.prepare_data()
            while not self._stop:
                free = self.recipe.threads - sum(r.threads for r in running.values())
                starting, waiting = [], []
                for job in self._ready(running):
                    if job.threads <= free:
                        starting.append(job)
                        free -= job.threads
                    else:
                        waiting.append(job)
                spare = free if self.recipe.widen_minutes is not None and not waiting else 0
                for k, job in enumerate(starting):  # threads no waiting job can use go to the first
                    threads = job.threads + (spare if k == 0 else 0)
                    running[job.name] = self._start(job, data, val, threads)
                if spare and running and not starting:
                    self._widen(running, spare)
                if not running:
                    break
                time.sleep(poll_seconds)
                for name, run in list(running.items()):
                    code = run.process.poll()
                    now = time.monotonic()
                    if code is None:
                        if now - run.last_export >= 60 * self.recipe.export_minutes:
                            self.export(run.job, "running", now - run.started)
                            run.started = run.last_export = now
                        continue
                    run.log.close()
                    del running[name]
                    if code == 0:
                        self.export(run.job, "finished", now - run.started)
                    elif code in STOPPED_CODES and run.widen_to and not self._stop:
                        self.export(run.job, "running", now - run.started)
                        running[name] = self._start(run.job, data, val, run.widen_to)
                    elif code in STOPPED_CODES:  # stopped from outside
                        self._stopped.add(name)
                        self.export(run.job, "stopped", now - run.started)
                    elif code == EXIT_DIVERGED and self._may_continue_from_average(run.job, data, val):
                        self._diverged.add(name)
                        self._say(f"{name} diverged; see {self.run_dir(run.job) / 'train.log'}")
                        self.export(run.job, "running", now - run.started)
                        running[name] = self._start(run.job, data, val, run.threads, from_average=True)
                    else:
                        self._failed.add(name)
                        self.export(run.job, "failed", now - run.started)
                        self._say(
                            f"{name} failed (exit status {code}); see {self.run_dir(run.job) / 'train.log'}"
                        )
            self._stop_all(running)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        remaining = [job.name for job in self.recipe.jobs if not self.finished(job)]
        self._say("all jobs finished" if not remaining else f"unfinished: {', '.join(remaining)}")
        return 1 if self._failed else 0

    def _widen(self, running: dict[str, _Running], spare: int) -> None:
        """Stops the running job with the most minutes left, if it has at least the
        recipe's ``widen_minutes`` left, to restart it with ``spare`` more threads."""
        if any(run.widen_to for run in running.values()):
            return  # one restart at a time
        left = {name: self.minutes_left(run.job) for name, run in running.items()}
        name = max(left, key=left.get)
        if left[name] >= self.recipe.widen_minutes:
            run = running[name]
            run.widen_to = run.threads + spare
            self._say(
                f"{name} restarts with {run.widen_to} threads: no other job can use them before it ends"
            )
            run.process.send_signal(signal.SIGTERM)

    def minutes_left(self, job: Job) -> float:
        """Minutes the job still needs at the median speed of its run's last log lines
        (those in the last 8 KiB of ``metrics.jsonl``; 0 before it has one)."""
        metrics = self.run_dir(job) / "metrics.jsonl"
        if not metrics.is_file():
            return 0.0
        with metrics.open("rb") as file:
            offset = max(0, metrics.stat().st_size - 8192)
            file.seek(offset)
            lines = file.read().decode(errors="replace").splitlines()[1 if offset else 0 :]
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        logged = [r for r in records if r.get("it_per_s")]
        if not logged:
            return 0.0
        speed = statistics.median(r["it_per_s"] for r in logged)
        return max(0, job.total_steps - logged[-1]["step"]) / speed / 60

    def _stop_all(self, running: dict[str, _Running]) -> None:
        """Stops the jobs still running (each checkpoints at its next step) and exports them."""
        for run in running.values():
            run.process.send_signal(signal.SIGTERM)
        for run in running.values():
            run.process.wait()
            run.log.close()
            self.export(run.job, "stopped", time.monotonic() - run.started)
        running.clear()


def status_line(job: Job, state: dict[str, Any], minutes_left: float = 0) -> str:
    """One line of ``--status``: progress, wall time, the time left at the run's
    recent logged speed (:meth:`Campaign.minutes_left`) and the latest validation (of a
    variable-rate job, at each quality)."""
    hours = state.get("wall_seconds", 0) / 3600
    line = f"{job.name:24} {state['status']:9} {state['step']:>7}/{job.total_steps} steps  {hours:5.2f} h"
    if minutes_left and state["status"] != "finished":
        threads = state.get("threads", job.threads)
        line += f" (~{minutes_left / 60:.1f} h left on {threads} thread{'s' * (threads > 1)})"
    if state.get("last_val"):
        last = state["last_val"]
        at_each = [f"{last['val'][f'q{q}']['rd_loss']:.4f}" for q in QUALITIES if f"q{q}" in last["val"]]
        figures = (
            f"q{QUALITIES[0]}-q{QUALITIES[-1]} " + " / ".join(at_each)
            if at_each
            else f"{last['val']['rd_loss']:.4f}"
        )
        line += f"  val RD loss {figures} at step {last['step']}"
    return line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compressai-feds campaign",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "recipe", nargs="?", type=Path, help="recipe JSON (default: the repository's zoo/recipe.json)"
    )
    parser.add_argument("--data", help="training photographs (default: the recipe's)")
    parser.add_argument("--runs", type=Path, default=Path("runs/campaign"), help="run folders (outside git)")
    parser.add_argument("--zoo", type=Path, help="export folder (default: the recipe's folder)")
    parser.add_argument(
        "--threads", type=int, help="CPU threads for all jobs together (default: the recipe's)"
    )
    parser.add_argument("--status", action="store_true", help="print each job's progress and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = args.recipe or DEFAULT_RECIPE
        if not path.is_file():
            raise FileNotFoundError(f"recipe {path} does not exist (give the recipe JSON to run)")
        recipe = Recipe.load(path)
        if args.data:
            recipe.data = str(Path(args.data).resolve())
        if args.threads:
            recipe.threads = args.threads
        campaign = Campaign(recipe, args.runs, args.zoo or path.resolve().parent)
        if args.threads:  # (finished jobs may have used more)
            too_wide = [j.name for j in recipe.jobs if j.threads > args.threads and not campaign.finished(j)]
            if too_wide:
                raise ValueError(f"jobs {too_wide} want more than the {args.threads} threads given")
        if args.status:
            for job in recipe.jobs:
                print(status_line(job, campaign.state(job), campaign.minutes_left(job)))
            return 0
        return campaign.run()
    except (ValueError, FileNotFoundError, json.JSONDecodeError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
