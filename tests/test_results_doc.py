"""docs/results.md is generated from docs/results/*.csv and must match them; every row says where it came from."""

import csv
import importlib.util
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SCRIPT = REPO / "benchmarks" / "results_tables.py"
MAX_LINES = 500


def _generator():
    spec = importlib.util.spec_from_file_location("results_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_results_doc_matches_the_csvs() -> None:
    expected = _generator().render()
    actual = (DOCS / "results.md").read_text()
    assert actual == expected, (
        "docs/results.md is out of date with docs/results/*.csv: run `python benchmarks/results_tables.py`"
    )


def test_results_doc_is_short() -> None:
    lines = (DOCS / "results.md").read_text().count("\n")
    assert lines <= MAX_LINES, f"docs/results.md has {lines} lines, at most {MAX_LINES}"


def test_every_result_row_names_its_command_hardware_and_date() -> None:
    for path in sorted((DOCS / "results").glob("*.csv")):
        if path.name.endswith("_curves.csv"):
            continue  # curve rows belong to the final row of the same model and seed
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        for number, row in enumerate(rows, 2):
            for column in ("command", "hardware", "date"):
                assert row.get(column), f"{path.name}:{number} has no {column}"
            assert row["date"] == "unknown" or re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["date"]), (path.name, number)


def test_training_speed_rows_agree_with_the_json_reports() -> None:
    with (DOCS / "results" / "training_speed.csv").open(newline="") as handle:
        rows = [
            row for row in csv.DictReader(handle) if re.fullmatch(r"train_throughput_.*\.json\[\d+\]", row["source"])
        ]
    assert rows
    for row in rows:
        name, index = re.fullmatch(r"(.*)\[(\d+)\]", row["source"]).groups()
        item = json.loads((DOCS / "results" / name).read_text())[int(index)]
        assert item["config"] == row["configuration"]
        assert abs(item["images_per_s"] - float(row["train_images_per_s"])) <= 0.05, row["source"]
        assert abs(item["epoch_s"] - float(row["epoch_s"])) <= 0.05, row["source"]
