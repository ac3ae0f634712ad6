"""README.md's citations of benchmark results and benchmark files point at files that are in the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "bench" / "results"


def _expand(name: str) -> list[str]:
    """`serve_cpu.{json,md}` -> serve_cpu.json, serve_cpu.md."""
    match = re.search(r"\{([^}]*)\}", name)
    if match is None:
        return [name]
    return [full for alt in match.group(1).split(",")
            for full in _expand(name[:match.start()] + alt + name[match.end():])]


def _cited() -> tuple[list[str], list[str]]:
    """Repository paths under bench/ named in backticks, and bare result names (`serve_h200.md`)."""
    names = [n for token in re.findall(r"`([^`\s]+)`", (ROOT / "README.md").read_text()) for n in _expand(token)]
    paths = [n for n in names if n.startswith("bench/") and re.search(r"\.[a-z]+$", n)]
    bare = [n for n in names if re.fullmatch(r"[a-z0-9_]+\.(md|png)", n)]
    return paths, bare


def test_every_bench_path_and_result_the_readme_names_exists() -> None:
    paths, bare = _cited()
    assert "bench/EXPERIMENTS.md" in paths and "kernels_h100.md" in bare
    assert [p for p in paths if not (ROOT / p).is_file()] == []
    assert [n for n in bare if not (RESULTS / n).is_file()] == []


def test_each_row_of_the_measured_table_names_a_result_file_in_the_tree() -> None:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Measured", 1)[1].split("\n\n## ", 1)[0]
    files = re.findall(r"\| `([a-z0-9_]+\.md)` \|$", table, re.M)
    assert len(files) >= 10
    assert [f for f in files if not (RESULTS / f).is_file()] == []
