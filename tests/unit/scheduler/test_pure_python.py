"""The scheduler package never needs torch: every module imports with torch made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import importlib, pkgutil, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not allowed in the scheduler")
        return None

sys.meta_path.insert(0, NoTorch())
import services.scheduler as package
names = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
for name in names:
    importlib.import_module(f"services.scheduler.{name}")
assert "torch" not in sys.modules
print(",".join(names))
"""


def test_every_scheduler_module_imports_without_torch():
    env_path = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "protos"), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    modules = proc.stdout.strip().split(",")
    assert {"block_manager", "engine", "scheduler", "sequence", "engine_pool", "servicer", "server",
            "worker_pool"} <= set(modules)
