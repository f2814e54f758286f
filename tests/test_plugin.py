"""The start-up hook, tested in fresh interpreters the way users run CompressAI."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import run_python


def test_startup_hook_imports_neither_torch_nor_compressai():
    out = run_python(
        "-c",
        "import sys; print(sorted(m for m in ('torch', 'compressai', 'compressai_feds',"
        " 'compressai_plugin_hook') if m in sys.modules))",
    )
    assert out.split() == ["['compressai_plugin_hook']"]


def test_compressai_zoo_sees_feds_models_without_importing_the_plugin():
    out = run_python(
        "-c",
        textwrap.dedent(
            """
            import compressai.zoo
            from compressai.zoo.image import model_architectures
            from compressai.registry import MODELS
            net = compressai.zoo.image_models["feds-student"](quality=3)
            print(type(net).__name__, model_architectures["feds-teacher"].__name__,
                  MODELS["feds-student"].__name__, "feds-teacher" in compressai.zoo.models)
            """
        ),
    )
    assert out.split() == ["FEDSStudent", "FEDSTeacher", "FEDSStudent", "True"]


@pytest.mark.parametrize(
    "first_import",
    [
        "from compressai_feds import feds_student",
        # a module that imports compressai.zoo while it is half made, and not the zoo module
        "import compressai_feds.entropy_coding",
    ],
)
def test_importing_the_plugin_first_registers_too(first_import):
    out = run_python(
        "-c",
        f"{first_import}; import sys, compressai.zoo as z; listed = 'feds-student' in z.image_models;"
        " hooks = [type(f).__name__ for f in sys.meta_path if type(f).__module__ == 'compressai_plugin_hook'];"
        " from compressai_feds.zoo import feds_student as f; print(listed, hooks, z.image_models['feds-student'] is f)",
    )
    assert out.split() == ["True", "[]", "True"]


def write_plugin(root, package: str, entry_points: str, source: str) -> None:
    (root / package).mkdir()
    (root / package / "__init__.py").write_text(textwrap.dedent(source))
    dist_info = root / f"{package}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_any_package_declaring_the_entry_point_is_registered(tmp_path):
    write_plugin(
        tmp_path,
        "toy_codec",
        """
        [compressai.models]
        toy-factorized = toy_codec:toy_factorized
        """,
        """
        from compressai.models import FactorizedPrior

        def toy_factorized(quality, metric="mse", pretrained=False, progress=True, **kwargs):
            return FactorizedPrior(8, 8)

        toy_factorized.architecture = FactorizedPrior
        """,
    )
    write_plugin(
        tmp_path,
        "broken_codec",
        """
        [compressai.models]
        broken = broken_codec.missing:factory
        """,
        "",
    )
    result = run_python(
        "-W",
        "always",
        "-c",
        "import compressai.zoo as z; from compressai.zoo.image import model_architectures as a;"
        " print(z.image_models['toy-factorized'](quality=1).__class__.__name__,"
        " a['toy-factorized'].__name__, 'broken' in z.image_models, 'feds-student' in z.image_models)",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result.split() == ["FactorizedPrior", "FactorizedPrior", "False", "True"]


def test_trainer_entry_point_and_console_script(tmp_path):
    out = run_python(
        "-c",
        "import entrypoints; from compressai_feds import DistillationTrainer;"
        " print(entrypoints.get_group_named('compressai.trainers')['feds-distill'].load() is DistillationTrainer)",
    )
    assert out.split() == ["True"]
    script = Path(sys.executable).parent / "compressai-feds"
    result = subprocess.run([str(script), "train", "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "--data is required" in result.stderr
