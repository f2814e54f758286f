import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_decoder_survives_a_long_fuzz_run():
    """Thousands of corrupted files in a child process: a crash in C++ code
    would kill it, a hang would hit the timeout."""
    script = Path(__file__).with_name("fuzz_decoder.py")
    result = subprocess.run(
        [sys.executable, str(script), "5000", "2000"], capture_output=True, text=True, timeout=900
    )
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    assert "container: decoded" not in result.stdout  # every corrupted container refused
    assert "different image" not in result.stdout  # forged streams refused, never decoded to garbage
