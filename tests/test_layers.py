"""The package's layers: modules import only from their own layer or below, with no cycles; deployment needs no torch.

Layers, bottom up:

* deployment: the image reader (``data.reader``) and ``deploy`` (the inferencer and ``salad-score``); NumPy,
  Pillow, OpenVINO only. The ``data`` package's own ``__init__`` belongs here too: it only names its modules.
* data: anomalib datasets and datamodules reading through the reader, file checks, the image cache, the
  visualizer's reader, synthetic scans.
* model: networks, losses, proxy tasks, pre- and post-processing, the Lightning module with its checkpoint,
  export, precision and non-finite hooks, export, the OpenVINO module, and the metrics its evaluator uses.
* run tooling: raw test scores and the benchmark runner (``evaluation`` but its metrics).
"""

import ast
import subprocess
import sys
from fnmatch import fnmatch
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anomalib_salad"
#: (module pattern, layer), relative to the package; the first pattern a module matches gives its layer.
RULES = (
    ("", "deployment"),  # the package's __init__: lazy names and the finder of the old module paths
    ("data", "deployment"),
    ("data.reader", "deployment"),
    ("data.reader.*", "deployment"),
    ("deploy", "deployment"),
    ("deploy.*", "deployment"),
    ("data.*", "data"),
    ("model", "model"),
    ("model.*", "model"),
    ("evaluation", "model"),
    ("evaluation.metrics", "model"),
    ("evaluation.*", "run tooling"),
)
ORDER = ["deployment", "data", "model", "run tooling"]
TORCH_FREE = (
    "anomalib_salad.data.reader",
    "anomalib_salad.deploy",
    "anomalib_salad.deploy.score",
    "anomalib_salad.reader",  # the module paths of the earlier flat layout
    "anomalib_salad.score",
)


def _modules() -> dict[str, Path]:
    """Every module of the package by its dotted name relative to the package (``""`` is its ``__init__``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _layer(module: str) -> str:
    return next(layer for pattern, layer in RULES if fnmatch(module, pattern))


def _imports(module: str, path: Path) -> set[str]:
    """Package modules that ``module`` imports, at module level or inside functions."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anomalib_salad"):
            target = node.module.removeprefix("anomalib_salad").removeprefix(".")
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            found |= {name.removeprefix("anomalib_salad.") for name in names if name.startswith("anomalib_salad.")}
            continue
        else:
            continue
        for alias in node.names:  # ``from . import reader`` names a module, ``from .reader import X`` a name in one
            child = f"{target}.{alias.name}" if target else alias.name
            found.add(child if child in MODULES else target)
    return found - {module}


def test_every_module_has_a_layer() -> None:
    assert all(_layer(module) in ORDER for module in MODULES)


def test_imports_go_only_downward_and_form_no_cycle() -> None:
    graph = {module: _imports(module, path) for module, path in MODULES.items()}
    unknown = sorted(f"{module} imports {dep}" for module, deps in graph.items() for dep in deps if dep not in MODULES)
    assert not unknown
    upward = [
        f"{module} ({_layer(module)}) imports {dep} ({_layer(dep)})"
        for module, deps in graph.items()
        for dep in deps
        if ORDER.index(_layer(dep)) > ORDER.index(_layer(module))
    ]
    assert not upward
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle: {error.args[1]}")


def test_no_module_is_longer_than_600_lines() -> None:
    long = {module: n for module, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 600}
    assert not long


def test_every_module_says_what_it_is() -> None:
    assert [module for module, path in MODULES.items() if not ast.get_docstring(ast.parse(path.read_text()))] == []


@pytest.mark.parametrize("module", TORCH_FREE)
def test_deployment_imports_without_torch_or_the_model(module: str) -> None:
    allowed = {f"anomalib_salad.{name}" for name in MODULES if name and _layer(name) == "deployment"}
    code = f"""
import sys
BLOCKED = {{"torch", "torchvision", "lightning", "anomalib", "kornia"}}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked")
sys.meta_path.insert(0, Block())
import {module}
loaded = {{module.__name__ for name, module in list(sys.modules.items()) if name.startswith("anomalib_salad.")}}
assert loaded <= set({sorted(allowed)!r}), sorted(loaded)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_old_module_paths_import_as_the_modules_that_replaced_them() -> None:
    from anomalib_salad import MOVED_MODULES  # noqa: PLC0415

    for old, new in MOVED_MODULES.items():
        old_module = __import__(f"anomalib_salad.{old}", fromlist=["_"])
        assert old_module is sys.modules[f"anomalib_salad.{new}"]
        assert old_module.__spec__.name == f"anomalib_salad.{new}"  # its own spec, not the alias's
    from anomalib_salad.lightning_model import Salad  # noqa: PLC0415
    from anomalib_salad.pre_processing import SaladPreProcessor  # noqa: PLC0415

    assert Salad.__module__ == "anomalib_salad.model.lightning_model"
    assert SaladPreProcessor.__module__ == "anomalib_salad.model.pre_processing"


@pytest.mark.parametrize("module", ["anomalib_salad.benchmark", "anomalib_salad.score"])
def test_old_module_paths_still_run_with_python_m(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--config" in result.stdout if module.endswith("benchmark") else "--model" in result.stdout


@pytest.mark.parametrize("package", ["anomalib_salad", "anomalib_salad.data", "anomalib_salad.deploy"])
def test_every_public_name_resolves(package: str) -> None:
    module = __import__(package, fromlist=["_"])
    assert all(getattr(module, name) is not None for name in module.__all__)
    assert set(module.__all__) <= set(dir(module))
