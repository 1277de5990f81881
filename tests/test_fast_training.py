"""Runs tests/fast_training_checks.py (the fast training path's tests) in a pytest process of its own.

Inside the whole suite's process, after the OpenVINO test files have run, these tests ended pytest with a
segmentation fault (each passes alone and the file passes on its own), so they get a clean interpreter.
"""

import subprocess
import sys
from pathlib import Path

CHECKS = Path(__file__).with_name("fast_training_checks.py")


def test_fast_training_checks_pass_in_their_own_process() -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                            cwd=CHECKS.parents[1])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
