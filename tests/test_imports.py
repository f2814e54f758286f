"""The house's layout: coding and measuring import nothing from training, and the
command line answers --help and info without torch."""

from pathlib import Path

import pytest
import torch
from helpers import run_python
from PIL import Image

from compressai_feds import FEDSStudent

TRAINING = {"trainer", "campaign", "data", "losses", "config", "train"}


def test_the_coding_path_loads_no_training_module():
    loaded = run_python(
        "-c",
        "import sys\n"
        "import compressai_feds.codec, compressai_feds.cli, compressai_feds.container\n"
        "import compressai_feds.report, compressai_feds.benchmark\n"
        "from compressai_feds import feds_student\n"
        "import compressai.zoo\n"
        "assert 'feds-student' in compressai.zoo.image_models\n"
        "print(' '.join(m for m in sys.modules if m.startswith('compressai_feds.')))",
    ).split()
    assert "compressai_feds.codec" in loaded and "compressai_feds.zoo" in loaded
    assert not {name.removeprefix("compressai_feds.") for name in loaded} & TRAINING


def test_importing_the_package_loads_neither_torch_nor_the_trainer():
    out = run_python("-c", "import sys, compressai_feds; print('torch' in sys.modules, len(sys.modules))")
    assert out.split()[0] == "False"


def test_help_and_info_answer_without_torch(tmp_path):
    from compressai_feds.codec import Codec, compress_image

    checkpoint = tmp_path / "student.pth.tar"
    torch.save({"state_dict": FEDSStudent(N=16, M=32, groups=(8, 24)).state_dict()}, checkpoint)
    data, _ = compress_image(Codec.from_checkpoint(checkpoint), Image.new("RGB", (40, 30)))
    (tmp_path / "a.feds").write_bytes(data)
    script = (
        "import sys\n"
        "from compressai_feds.cli import main\n"
        f"assert main(['info', {str(tmp_path / 'a.feds')!r}]) == 0\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = run_python("-c", script)
    assert "40x30 RGB" in out and "usage: compressai-feds" in out
    assert out.strip().splitlines()[-1] == "False"


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", sorted(p.stem for p in (Path(__file__).parent.parent / "compressai_feds").glob("*.py"))
)
def test_every_module_imports_on_its_own_and_registers_the_models(module):
    if module == "plugin_hook":
        pytest.skip("installed as the top-level module compressai_plugin_hook")
    if module == "entropy_coding":
        pytest.skip("imports compressai before any codec exists; imported through the codecs, it registers")
    run_python(
        "-W",
        "error::UserWarning",
        "-c",
        f"import compressai_feds.{module}\nimport compressai.zoo\n"
        "assert {'feds-student', 'feds-teacher'} <= set(compressai.zoo.image_models)",
    )
