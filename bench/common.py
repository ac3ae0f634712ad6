"""What every benchmark records beside its figures: device, date, versions, the exact command."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def environment() -> dict[str, Any]:
    """Device, date, library versions and command line of this run."""
    versions = {}
    for name in ("torch", "triton", "grpcio", "protobuf", "tokenizers", "transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = f"{platform.processor() or platform.machine()}, {_cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "python": platform.python_version(),
        "versions": versions,
        "command": " ".join(["python", *(_portable(arg) for arg in sys.argv)]),
    }


def _portable(arg: str) -> str:
    """An argument as it reads from the repository root on any machine: no absolute paths of this one."""
    root = str(RESULTS_DIR.parent.parent)
    out = os.environ.get("OUT")
    if out and arg.startswith(out):
        return "$OUT" + arg[len(out):]
    if arg.startswith(root + os.sep):
        return arg[len(root) + 1:]
    return arg


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def write_results(name: str, results: dict[str, Any], markdown: str, out_dir: Path = RESULTS_DIR) -> Path:
    """Writes <name>.json and <name>.md (the markdown headed by the run's environment); returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = results.setdefault("environment", environment())
    header = (f"# {name}\n\n- date: {env['date']}\n- device: {env['device']}\n- python: {env['python']}\n"
              f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items() if v)}\n"
              f"- command: `{env['command']}`\n\n")
    (out_dir / f"{name}.md").write_text(header + markdown.rstrip() + "\n")
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


@contextmanager
def replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`owner.name` is `value` inside the block (a benchmark swapping one path of the code for another), restored
    after."""
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)
