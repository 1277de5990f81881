"""Runs the check files that load OpenVINO or compile and time training, each in a pytest process of its own.

The whole suite in one process ended with a segmentation fault (exit 139, no pytest summary) after OpenVINO had
been used in it: the kernel killed the process while returning to the main thread (``si_code`` SI_KERNEL, in
``clock_nanosleep`` or ``pthread_sigmask`` while waiting on a subprocess), wherever the next subprocess or timer
signal happened to come: the GPU-script tests, the ``torch.compile`` test, late fuzz tests, ``salad-score``. Every
file passes on its own, so these files get a clean interpreter each and the main process never loads OpenVINO.
"""

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CHECKS = ["export_checks.py", "score_checks.py", "fast_training_checks.py", "gpu_run_checks.py"]


@pytest.mark.parametrize("checks", CHECKS)
def test_checks_pass_in_their_own_process(checks: str) -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / checks)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, check=False, cwd=HERE.parent)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_every_check_file_is_run() -> None:
    """A new ``*_checks.py`` file is not collected by pytest by itself; it must be listed here."""
    assert sorted(path.name for path in HERE.glob("*_checks.py")) == sorted(CHECKS)
