"""Lightning DDP on CPU with 2 gloo processes: the class center is the same on every rank."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from anomalib_salad import Salad

from .conftest import TINY

SCRIPT = Path(__file__).parent / "scripts" / "ddp_center.py"


@pytest.mark.slow
def test_center_is_synchronised_across_ranks(tiny_scans: Path, tmp_path: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_scans), str(tmp_path), "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"center_{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["center"].abs().sum() > 0
    assert ranks[0]["bf16"] == ranks[1]["bf16"]  # train_precision=auto: rank 0's measurement decides for all
    # Each rank saw different images, so equal centers need the all-reduce in CenterLoss.update_center.
    torch.testing.assert_close(ranks[0]["center"], ranks[1]["center"], rtol=0, atol=0)
    for name, weight in ranks[0]["encoder"].items():
        torch.testing.assert_close(weight, ranks[1]["encoder"][name], msg=name)  # DDP keeps weights in sync


@pytest.mark.parametrize(("find_unused", "refused"), [(False, True), (True, False)])
def test_plain_ddp_is_refused_with_the_strategy_to_use(
    find_unused: bool, refused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain DDP would fail inside its reducer at the first step; the error names the registered strategy."""
    monkeypatch.setattr(DDPStrategy, "world_size", property(lambda _: 2))
    monkeypatch.setattr(Salad, "_configure_speed", lambda *_: None)
    model = Salad(**TINY)
    strategy = DDPStrategy(parallel_devices=[torch.device("cpu")] * 2, find_unused_parameters=find_unused)
    model._trainer = type("Trainer", (), {"strategy": strategy})()
    if refused:
        with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
            model.setup("fit")
    else:
        model.setup("fit")
