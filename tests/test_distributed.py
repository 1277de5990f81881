"""Lightning DDP on CPU with 2 gloo processes: the class center is the same on every rank."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_center.py"


@pytest.mark.slow
def test_center_is_synchronised_across_ranks(tiny_scans: Path, tmp_path: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), str(tiny_scans), str(tmp_path), "2"], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"center_{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["center"].abs().sum() > 0
    # Each rank saw different images, so equal centers need the all-reduce in CenterLoss.update_center.
    torch.testing.assert_close(ranks[0]["center"], ranks[1]["center"], rtol=0, atol=0)
    for name, weight in ranks[0]["encoder"].items():
        torch.testing.assert_close(weight, ranks[1]["encoder"][name], msg=name)  # DDP keeps weights in sync
