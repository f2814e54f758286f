import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import SAMPLES, run_python, sample_crops, train_briefly
from PIL import Image
from pytorch_msssim import ms_ssim
from torchvision.transforms.functional import to_tensor

from compressai_feds import FEDSStudent, FEDSTeacher, feds_student, feds_teacher
from compressai_feds.checkpoint_io import shared_duplicates
from compressai_feds.zoo import CHECKPOINT_DIR_ENV, SHIPPED


@pytest.fixture(scope="module")
def exported_student(tmp_path_factory):
    """A briefly trained student, saved like a training script would, then
    exported to a zoo folder by CompressAI's own update_model."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    net = train_briefly(FEDSStudent())
    checkpoint = root / "trained.pth.tar"
    torch.save({"state_dict": net.state_dict(), "epoch": 1}, checkpoint)
    zoo = root / "zoo"
    run_python(
        "-m", "compressai.utils.update_model", "-a", "feds-student",
        "-n", "feds-student-mse-1", "-d", str(zoo), str(checkpoint),
    )  # fmt: skip
    (exported,) = zoo.glob("feds-student-mse-1-*.pth.tar")
    return exported


def test_quality_and_metric_are_validated():
    with pytest.raises(ValueError, match="invalid quality 7"):
        feds_student(quality=7)
    with pytest.raises(ValueError, match="invalid metric 'psnr'"):
        feds_teacher(quality=1, metric="psnr")


def test_untrained_models_take_constructor_arguments():
    assert isinstance(feds_teacher(quality=2), FEDSTeacher)
    assert feds_student(quality=2, N=32).N == 32


def test_missing_checkpoint_names_architecture_metric_and_quality(tmp_path, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        feds_student(quality=3, metric="ms-ssim", pretrained=True)
    message = str(error.value)
    assert "feds-student" in message and "ms-ssim" in message and "quality=3" in message
    assert str(tmp_path) in message


def test_the_ms_ssim_student_spends_fewer_bits_for_more_ms_ssim_than_the_mse_one(monkeypatch):
    """The shipped zoo serves both metrics with their own weights: at the same quality the
    student trained for MS-SSIM reaches a higher MS-SSIM with fewer bits than the MSE one (on
    Kodak at quality 3: 14.94 dB at 0.346 bpp against 14.20 dB at 0.453 bpp)."""
    monkeypatch.delenv(CHECKPOINT_DIR_ENV, raising=False)
    x = to_tensor(Image.open(sorted(SAMPLES.glob("*.png"))[0]).convert("RGB").crop((0, 0, 256, 256)))[None]
    scores = {}
    for metric in ("mse", "ms-ssim"):
        net = feds_student(quality=3, metric=metric, pretrained=True).eval()
        with torch.no_grad():
            out = net.compress(x)
            x_hat = net.decompress(out["strings"], out["shape"])["x_hat"].clamp(0, 1)
        bits = sum(len(s[0]) for s in out["strings"]) * 8
        scores[metric] = (bits, ms_ssim(x_hat, x, data_range=1.0).item())
    assert scores["ms-ssim"][0] < scores["mse"][0] and scores["ms-ssim"][1] > scores["mse"][1], scores


def test_pretrained_loads_the_exported_checkpoint(exported_student, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(exported_student.parent))
    net = feds_student(quality=1, pretrained=True)
    state = torch.load(exported_student, weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    x = torch.rand(1, 3, 64, 64)
    enc = net.compress(x)  # CDFs came with the checkpoint: no update() needed
    assert torch.equal(
        net.decompress(enc["strings"], enc["shape"])["x_hat"], net.synthesize(enc["y_hat"], (64, 64))
    )
    with pytest.raises(ValueError, match="takes no architecture arguments"):
        feds_student(quality=1, pretrained=True, N=32)


def test_corrupted_checkpoint_is_refused(exported_student, tmp_path, monkeypatch):
    corrupted = tmp_path / exported_student.name
    shutil.copy(exported_student, corrupted)
    with corrupted.open("r+b") as f:
        f.seek(-10, 2)
        f.write(b"\x00" * 10)
    assert (
        not hashlib.sha256(corrupted.read_bytes()).hexdigest().startswith(corrupted.name.split("-")[-1][:8])
    )
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="corrupted"):
        feds_student(quality=1, pretrained=True)


def eval_model_results(*args: str, env: dict[str, str] | None = None) -> dict[str, list[float]]:
    return json.loads(run_python("-m", "compressai.utils.eval_model", *args, env=env))["results"]


def test_compressai_eval_model_runs_checkpoint_and_pretrained(exported_student, tmp_path):
    images = sample_crops(tmp_path / "images", size=176)  # MS-SSIM needs > 160; padded to 192
    from_checkpoint = eval_model_results(
        "checkpoint", str(images), "-a", "feds-student", "-p", str(exported_student)
    )
    pretrained = eval_model_results(
        "pretrained", str(images), "-a", "feds-student", "-q", "1",
        env={CHECKPOINT_DIR_ENV: str(exported_student.parent)},
    )  # fmt: skip
    assert from_checkpoint["bpp"][0] > 0 and from_checkpoint["psnr-rgb"][0] > 0
    assert pretrained["bpp"] == from_checkpoint["bpp"]
    assert pretrained["psnr-rgb"] == from_checkpoint["psnr-rgb"]


def test_compressai_update_model_exports_the_teacher(tmp_path):
    checkpoint = tmp_path / "teacher.pth.tar"
    torch.save({"state_dict": FEDSTeacher().state_dict()}, checkpoint)
    run_python(
        "-m",
        "compressai.utils.update_model",
        "-a",
        "feds-teacher",
        str(checkpoint),
        "-d",
        str(tmp_path / "out"),
    )
    (exported,) = (tmp_path / "out").glob("teacher-*.pth.tar")
    net = FEDSTeacher.from_state_dict(torch.load(exported, weights_only=True)).eval()
    assert net.latent_codec.hyper.entropy_bottleneck._quantized_cdf.numel() > 0  # CDFs were updated
    enc = net.compress(torch.rand(1, 3, 64, 64))
    assert torch.equal(
        net.decompress(enc["strings"], enc["shape"])["x_hat"], net.synthesize(enc["y_hat"], (64, 64))
    )


def test_equal_tables_are_stored_once_and_load_back(tmp_path):
    """Every slice's CDF table is the same: a file stores it once, and the model
    loaded from it codes to the same bytes."""
    torch.manual_seed(0)
    net = FEDSTeacher(N=32, M=64, groups=(16, 16, 32), num_res_blocks=1).eval()
    net.update(force=True)
    state_dict = net.state_dict()
    torch.save(state_dict, tmp_path / "plain.pth.tar")
    torch.save(shared_duplicates(state_dict), tmp_path / "shared.pth.tar")
    table = state_dict["latent_codec.y.latent_codec.y0.gaussian_conditional._quantized_cdf"]
    saved = (tmp_path / "plain.pth.tar").stat().st_size - (tmp_path / "shared.pth.tar").stat().st_size
    assert saved >= 2 * table.numel() * table.element_size()  # three slices, one table
    loaded = FEDSTeacher.from_state_dict(torch.load(tmp_path / "shared.pth.tar", weights_only=True)).eval()
    x = torch.rand(1, 3, 64, 64)
    assert loaded.compress(x)["strings"] == net.compress(x)["strings"]


def test_the_wheel_ships_the_package_the_zoo_weights_and_model_card_and_installs(tmp_path):
    """``pip wheel`` of the repository holds the package, the shipped zoo's checkpoints
    (``zoo/v2``, installed as ``compressai_feds/checkpoints``) and the model card, nothing
    else of ``zoo/`` (no v1 files, ablation, recipe, logs, results or scripts); installed in
    a fresh environment it loads a pretrained student and encodes a sample image."""
    repo = Path(__file__).resolve().parent.parent
    run_python("-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(repo))
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    shipped = {name.removeprefix("compressai_feds/checkpoints/") for name in sizes if "/checkpoints/" in name}
    zoo = {path.name for path in (repo / "zoo" / SHIPPED).glob("*.pth.tar")}
    assert shipped == zoo | {"README.md"} and len(zoo) == 4  # v2: a teacher and a student per metric
    package = {path.relative_to(repo).as_posix() for path in (repo / "compressai_feds").rglob("*.py")}
    package.remove("compressai_feds/plugin_hook.py")  # installed as the top-level compressai_plugin_hook
    assert package <= set(sizes)
    outside = {n for n in sizes if not n.startswith(("compressai_feds/", "compressai_feds-"))}
    assert outside == {"compressai_plugin_hook.py", "compressai_plugin_hook.pth"}
    assert sum(size for name, size in sizes.items() if name.endswith(".pth.tar")) < 70e6

    venv = tmp_path / "venv"
    run_python("-m", "venv", str(venv))
    python = venv / "bin" / "python"
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "dependencies.pth").write_text(
        str(Path(torch.__file__).parent.parent) + "\n"
    )  # ours: no download
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, timeout=300)
    sample = sorted((repo / "compressai_feds" / "samples").glob("*.png"))[0]
    script = (
        "import compressai_feds, sys; from compressai_feds import feds_student;"
        "assert '/site-packages/' in compressai_feds.__file__, compressai_feds.__file__;"
        "net = feds_student(quality=3, pretrained=True); print(type(net).__name__)"
    )
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and "FEDSStudent" in out.stdout, out.stderr
    encoded = subprocess.run(
        [venv / "bin" / "compressai-feds", "encode", sample, "-o", tmp_path / "sample.feds"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert encoded.returncode == 0 and "bpp" in encoded.stdout, encoded.stderr


def test_v1_s_fixed_rate_files_load_from_the_repository_s_zoo_folder(monkeypatch):
    """v1 no longer ships; a checkout still loads its twelve files with COMPRESSAI_FEDS_ZOO=zoo."""
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(Path(__file__).resolve().parent.parent / "zoo"))
    assert not feds_student(quality=1, pretrained=True).variable_rate
    with pytest.raises(FileNotFoundError, match="quality=2.5"):
        feds_student(quality=2.5, pretrained=True)  # v1 serves whole qualities only
    monkeypatch.delenv(CHECKPOINT_DIR_ENV)
    assert feds_student(quality=2.5, pretrained=True).variable_rate  # the shipped zoo: v2
