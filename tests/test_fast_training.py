"""Runs the fast-training and GPU-script checks, each in a pytest process of its own.

Inside the whole suite's process, after the OpenVINO test files have run, these checks ended pytest with a
segmentation fault (each passes alone and each file passes on its own), so they get a clean interpreter.
"""

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("checks", ["fast_training_checks.py", "gpu_run_checks.py"])
def test_checks_pass_in_their_own_process(checks: str) -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / checks)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=HERE.parent)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
