"""One name per type: no two classes of the installed packages share a name, so a name found in one file means
the same thing in every other."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def class_definitions() -> dict[str, list[str]]:
    where: dict[str, list[str]] = defaultdict(list)
    for package in ("services", "gateway", "kernels"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef):
                    where[node.name].append(str(path.relative_to(ROOT)))
    return where


def test_the_scan_finds_classes_in_every_package() -> None:
    where = class_definitions()
    assert where["StepPlan"] == ["services/common/step.py"]
    assert where["GatewayCore"] == ["gateway/core.py"]


def test_no_two_classes_share_a_name() -> None:
    assert {name: files for name, files in class_definitions().items() if len(files) > 1} == {}
