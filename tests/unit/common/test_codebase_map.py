"""docs/CODEBASE.md names only files, classes, methods and protobuf names that exist, so the map cannot drift from
the code (its last section, on what left the wire, names what no longer exists)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MAP = ROOT / "docs" / "CODEBASE.md"
SOURCES = [p for top in ("gateway", "services", "kernels") for p in (ROOT / top).rglob("*.py")]
PROTOS = sorted((ROOT / "protos" / "flashstream" / "v1").glob("*.proto"))


def quoted() -> list[str]:
    current = MAP.read_text().split("## Wire contract changes")[0]
    return [item for item in re.findall(r"`([^`]+)`", current) if "*" not in item]


def test_every_path_the_map_names_exists() -> None:
    names = {p.name for p in SOURCES}
    missing = []
    for item in quoted():
        for word in item.split():
            if not re.fullmatch(r"[\w/.*]+\.(py|proto)|[\w]+/(\w+/)*", word) or "*" in word:
                continue
            exists = (ROOT / word).exists() or any(str(p).endswith("/" + word.rstrip("/")) or
                                                   f"/{word.rstrip('/')}/" in str(p) for p in SOURCES)
            exists = exists if "/" in word else word in names
            if not exists:
                missing.append(word)
    assert missing == []


def test_every_class_and_method_the_map_names_is_defined() -> None:
    code = "\n".join(p.read_text() for p in SOURCES)
    defined = set(re.findall(r"^\s*(?:class|def|async def)\s+(\w+)", code, re.M))
    defined |= set(re.findall(r"^(\w+)\s*=", code, re.M))  # aliases such as Sampled
    wire = "\n".join(p.read_text() for p in PROTOS)
    defined |= set(re.findall(r"^\s*(?:service|message|enum|rpc)\s+(\w+)", wire, re.M))
    missing = []
    for item in quoted():
        for dotted in re.findall(r"\b([A-Z]\w+(?:\.\w+)?)\b", item):
            if dotted.isupper() or dotted.startswith(("POST", "GET")):
                continue  # constants and HTTP verbs
            if any(part not in defined for part in dotted.split(".")):
                missing.append(dotted)
    assert missing == []


def test_the_readme_links_the_map() -> None:
    assert "(docs/CODEBASE.md)" in (ROOT / "README.md").read_text()
