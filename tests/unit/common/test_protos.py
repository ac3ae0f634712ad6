"""The committed generated modules are exactly what grpcio-tools 1.84 makes of the .proto files."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = ROOT / "protos" / "flashstream" / "v1"


def test_regenerated_modules_are_byte_identical_to_the_committed_ones(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.generate(tmp_path)
    names = sorted(p.name for p in fresh)
    committed = sorted(p.name for p in PROTO_DIR.glob("*_pb2*.py*"))
    assert names == committed
    assert len(names) == 15  # 5 protos x (_pb2.py, _pb2.pyi, _pb2_grpc.py)
    for path in fresh:
        assert path.read_bytes() == (PROTO_DIR / path.name).read_bytes(), f"{path.name} differs; run protos/generate.py"


def test_stubs_require_no_newer_runtime_than_the_gpu_machines_have() -> None:
    # The GPU machines run grpcio 1.84.0 and protobuf 7.36.2: the stubs must accept both.
    for path in PROTO_DIR.glob("*_pb2_grpc.py"):
        assert "GRPC_GENERATED_VERSION = '1.84.0'" in path.read_text()
    for path in PROTO_DIR.glob("*_pb2.py"):
        match = re.search(r"_runtime_version\.ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+)",
                          path.read_text())
        assert match is not None, path.name
        assert tuple(int(x) for x in match.groups()) <= (7, 36, 2), path.name


def test_every_field_and_message_of_every_proto_has_a_comment() -> None:
    for proto in PROTO_DIR.glob("*.proto"):
        lines = proto.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            is_field = re.match(r"^(optional |repeated )?[\w.]+ \w+ = \d+;", stripped)
            is_enum_value = re.match(r"^[A-Z_0-9]+ = \d+;", stripped)
            if is_field or is_enum_value:
                assert "//" in stripped, f"{proto.name}:{number} has no comment: {stripped}"
            if stripped.startswith(("message ", "enum ", "service ", "rpc ")):
                previous = lines[number - 2].strip() if number > 1 else ""
                assert previous.startswith("//") or stripped.endswith("{}"), f"{proto.name}:{number} undocumented"


@pytest.mark.timeout(60)
def test_generated_package_imports_in_a_fresh_interpreter() -> None:
    code = ("from flashstream.v1 import common_pb2, gateway_pb2_grpc, tokenizer_pb2_grpc, "
            "scheduler_pb2_grpc, worker_pb2_grpc; print(worker_pb2_grpc.WorkerStub.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT / "protos")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "WorkerStub"
