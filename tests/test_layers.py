"""The package's layers: modules import only from their own layer or below, with no cycles; deployment needs no torch.

Layers, bottom up:

* deployment: read files, check checkpoint files, run an exported model; NumPy, Pillow, OpenVINO only.
* model: networks, losses, proxy tasks, metrics, pre- and post-processing, the Lightning module, export, and the
  callbacks the model configures itself (image cache, image-file checks and the visualiser's reader).
* run tooling: data generation and the benchmark runner.
"""

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anomalib_salad"
LAYERS = {
    "deployment": {"reader", "checkpoint", "deploy", "score"},
    "model": {
        "hardware",
        "torch_model",
        "loss",
        "proxy_tasks",
        "metrics",
        "pre_processing",
        "post_processing",
        "cache",
        "image_io",
        "lightning_model",
        "export",
        "openvino_model",
    },
    "run tooling": {"data", "benchmark"},
}
ORDER = list(LAYERS)
TORCH_FREE = ("anomalib_salad.reader", "anomalib_salad.checkpoint", "anomalib_salad.deploy", "anomalib_salad.score")


def _imports(path: Path) -> set[str]:
    """Sibling modules that ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anomalib_salad."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("anomalib_salad.")}
    return found


def test_every_module_has_a_layer() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set().union(*LAYERS.values())


def test_imports_go_only_downward_and_form_no_cycle() -> None:
    layer_of = {module: ORDER.index(layer) for layer, modules in LAYERS.items() for module in modules}
    graph = {module: _imports(PACKAGE / f"{module}.py") for module in layer_of}
    upward = [
        f"{module} ({ORDER[layer_of[module]]}) imports {dep} ({ORDER[layer_of[dep]]})"
        for module, deps in graph.items()
        for dep in deps
        if layer_of[dep] > layer_of[module]
    ]
    assert not upward
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle: {error.args[1]}")


@pytest.mark.parametrize("module", TORCH_FREE)
def test_deployment_imports_without_torch_or_the_model(module: str) -> None:
    code = f"""
import sys
BLOCKED = {{"torch", "torchvision", "lightning", "anomalib", "kornia"}}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked")
sys.meta_path.insert(0, Block())
import {module}
loaded = [m for m in sys.modules if m.startswith("anomalib_salad.")]
assert set(loaded) <= {set(TORCH_FREE)!r}, loaded
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
